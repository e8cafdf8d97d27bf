"""Load runs: N environments at once under a concurrency profile, each running one scenario, with
the figures a load test reports (setup p50/p95, pool waits and hit ratio, RSS at the end)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._environment import Environment
    from ._pool import PoolStatistics

__all__ = ["LoadReport", "run_load"]

Scenario = Callable[["Environment"], Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What one load run measured; times in milliseconds, ``rss_mb`` the process's at the end."""

    n: int
    profile: str
    capacity: int
    wall_ms: float
    setup_p50_ms: float
    setup_p95_ms: float
    waits: int
    wait_p95_ms: float
    hit_ratio: float
    rss_mb: float
    errors: tuple[BaseException, ...]
    pools: tuple[PoolStatistics, ...]
    """The pools the run leased from (of the profile's capacity), counted since they were made."""

    def __str__(self) -> str:
        return (
            f"{self.n} environments under {self.profile} (capacity {self.capacity}) in {self.wall_ms:.0f} ms: setup "
            f"p50 {self.setup_p50_ms:.2f} ms p95 {self.setup_p95_ms:.2f} ms; {self.waits} waits (p95 "
            f"{self.wait_p95_ms:.2f} ms); pool hit ratio {self.hit_ratio:.0%}; RSS {self.rss_mb:.0f} MB; "
            f"{len(self.errors)} failed"
        )


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.95 + 0.5) - 1)] if ordered else 0.0


async def run_load(
    scenario: Scenario, *, n: int = 50, profile: str = "production", setup: Scenario | None = None,
    resources: Mapping[str, Any] | None = None,
) -> LoadReport:
    """Open ``n`` Environments at once under ``profile``, each holding ``resources`` (name → an
    ``isolated_*()`` resource, its factory or a registered kind; default a database and Redis),
    run ``await setup(env)`` then ``await scenario(env)`` in each, and report. A scenario that
    raises is counted in ``errors``; the others run on."""
    from . import _metrics
    from ._config import resolve
    from ._environment import Environment
    from ._nesting import fresh

    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"run_load(n={n!r}): n is how many environments run at once, at least 1")
    capacity = resolve(profile=profile).capacity  # a bad profile is a ConfigError naming the known ones
    wanted = dict(resources or {"database": "postgres", "redis": "redis"})
    setups: list[float] = []
    errors: list[BaseException] = []
    pools: dict[str, PoolStatistics] = {}

    async def one() -> None:
        try:
            async with Environment(profile=profile, leak_check=False) as env:
                started = time.perf_counter()
                for key, value in wanted.items():
                    await env.enter(fresh(value), name=key)
                setups.append((time.perf_counter() - started) * 1000)
                if setup is not None:
                    await setup(env)
                await scenario(env)
                for stats in env.statistics().pools.values():
                    if stats.name not in pools or stats.leases > pools[stats.name].leases:
                        pools[stats.name] = stats
        except Exception as exc:
            errors.append(exc)

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(n):
            group.start_soon(one)
    wall = (time.perf_counter() - started) * 1000
    leases = sum(p.leases for p in pools.values())
    return LoadReport(
        n=n, profile=profile, capacity=capacity, wall_ms=wall,
        setup_p50_ms=statistics.median(setups) if setups else 0.0, setup_p95_ms=_p95(setups),
        waits=sum(p.waits for p in pools.values()),
        wait_p95_ms=max((p.wait_p95_ms for p in pools.values()), default=0.0),
        hit_ratio=sum(p.reused for p in pools.values()) / leases if leases else 0.0,
        rss_mb=_metrics.snapshot().rss_bytes / 2**20, errors=tuple(errors), pools=tuple(pools.values()),
    )
