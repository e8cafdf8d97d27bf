"""Fleet mode costs: per-test overhead of isolated_postgres (both modes), isolated_redis and
isolated_clickhouse on an external server (leased, heartbeat running) against the same embedded
server used locally (no leases), in one process; and the heartbeat's cost per held resource.

    python benchmarks/bench_fleet.py [--iterations 300] [--rounds 2]

The external server is the embedded one named by TEST_*_URL, so the two differ by the leases
alone. Prints a table and writes benchmarks/results/fleet.json. Figures are medians; these
machines are noisy, so compare the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._drivers import asyncpg as driver
from isolated_env._drivers import redis as redis_driver
from isolated_env._metrics import percentile
from isolated_env._ownership import me
from isolated_env._servers import postgres as pg_servers
from isolated_env._servers import redis as redis_servers
from isolated_env.resources import redis as redis_resource
from isolated_env.resources.postgres import leases as pg_leases
from isolated_env.resources.postgres.sql import quote_ident, quote_literal

RESULTS = Path(__file__).resolve().parent / "results" / "fleet.json"
HAS_CH = importlib.util.find_spec("chdb") is not None


async def _ms(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return (time.perf_counter() - started) * 1000


async def _timed(fn: Callable[[], Awaitable[Any]], n: int, warmup: int = 10) -> list[float]:
    """``n`` timings of ``fn`` in ms, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        await fn()
    return [await _ms(fn) for _ in range(n)]


async def _beat_medians(renew: Callable[[int], Awaitable[Any]], counts: list[int], repeats: int) -> dict[int, float]:
    """The median ms of ``renew(n)`` (one beat holding ``n`` resources) for each ``n``; it must find
    nothing lost."""

    async def checked(n: int) -> None:
        lost = await renew(n)
        assert not lost, lost

    out = {}
    for n in counts:
        out[n] = percentile(sorted(await _timed(lambda n=n: checked(n), repeats, warmup=1)), 0.5)
    return out


def _factories() -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {
        "postgres (transaction)": lambda: ie.isolated_postgres(),
        "postgres (database)": lambda: ie.isolated_postgres(mode="database"),
        "redis": lambda: ie.isolated_redis(),
    }
    if HAS_CH:
        out["clickhouse"] = lambda: ie.isolated_clickhouse()
    return out


@asynccontextmanager
async def _external(urls: dict[str, str]) -> AsyncIterator[None]:
    saved = {k: os.environ.get(k) for k in urls}
    os.environ.update(urls)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def overhead(iterations: int, rounds: int, urls: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    """Enter and leave each factory ``iterations`` times, locally then on the external server,
    ``rounds`` times over (interleaved, so drift hits both alike)."""
    samples: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for where in ("local", "external"):
            for name, factory in _factories().items():
                async def once(factory: Callable[[], Any] = factory) -> None:
                    async with factory():
                        pass

                n = iterations if "clickhouse" not in name else max(20, iterations // 5)
                if where == "external":
                    async with _external(urls):
                        got = await _timed(once, n)
                else:
                    got = await _timed(once, n)
                samples.setdefault(name, {}).setdefault(where, []).extend(got)
    return samples


async def heartbeat_postgres(server: Any, counts: list[int], repeats: int) -> dict[int, float]:
    """Median ms of one renewal of ``n`` leased databases (what the heartbeat sends each beat)."""
    admin = await driver.connect(server)
    names = [f"ie_db_bench{os.getpid()}_{i}" for i in range(max(counts))]
    exp = time.time() + 3600
    try:
        for name in names:
            await admin.execute(f"CREATE DATABASE {quote_ident(name)}")
            await admin.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(me().label(exp=exp))}")
        return await _beat_medians(lambda n: _first(pg_leases.renew(admin, names[:n])), counts, repeats)
    finally:
        for name in names:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
        await driver.close(admin)


async def heartbeat_redis(server: Any, counts: list[int], repeats: int) -> dict[int, float]:
    client = redis_driver.asyncio_client(**server.client_kwargs(0))
    keys = [f"ie:bench:{os.getpid()}:{i}" for i in range(max(counts))]  # not slot keys: no test's lease
    owner = redis_resource._owner()
    try:
        for key in keys:
            await client.set(key, owner, px=60_000)
        return await _beat_medians(
            lambda n: client.eval(redis_resource._REFRESH, n, *keys[:n], owner, 60_000), counts, repeats
        )
    finally:
        await client.delete(*keys)
        await client.aclose()


async def heartbeat_clickhouse(server: Any, counts: list[int], repeats: int) -> dict[int, float]:
    from isolated_env.resources import _clickhouse_leases as ch_leases
    from isolated_env.resources import _clickhouse_slots as slots

    admin = await slots.connect(server, server.database)
    names = [f"ie_bench{os.getpid()}_{i}" for i in range(max(counts))]
    now = await ch_leases.server_now(admin)
    try:
        for name in names:
            label = me().label(exp=now + 3600).replace("'", "\\'")
            await admin.command(f"CREATE DATABASE `{name}` COMMENT '{label}'", use_database=False)
        return await _beat_medians(lambda n: _first(ch_leases.renew(admin, names[:n])), counts, repeats)
    finally:
        for name in names:
            await admin.command(f"DROP DATABASE IF EXISTS `{name}` SYNC", use_database=False)
        await admin.close()


async def _first(pair: Awaitable[tuple[dict[str, str], float]]) -> dict[str, str]:
    return (await pair)[0]


def _per_resource(medians: dict[int, float]) -> float:
    """The slope: ms each extra held resource adds to one beat."""
    lo, hi = min(medians), max(medians)
    return (medians[hi] - medians[lo]) / (hi - lo)


async def main(iterations: int, rounds: int) -> dict[str, Any]:
    settings = resolve()
    pg = await pg_servers.ensure_server(settings)
    rs = await redis_servers.ensure_server(settings)
    urls = {"TEST_POSTGRES_URL": pg.dsn("postgres"), "TEST_REDIS_URL": rs.url(0)}
    ch = None
    if HAS_CH:
        from isolated_env._servers import clickhouse as ch_servers

        ch = await ch_servers.ensure_server(settings)
        urls["TEST_CLICKHOUSE_URL"] = ch.dsn()
    samples = await overhead(iterations, rounds, urls)
    counts = [1, 10, 50]
    beats = {
        "postgres": await heartbeat_postgres(pg, counts, 30),
        "redis": await heartbeat_redis(rs, counts, 100),
    }
    if ch is not None:
        beats["clickhouse"] = await heartbeat_clickhouse(ch, [1, 5, 20], 10)
    per_test = {}
    for name, by_where in samples.items():
        local, external = (percentile(sorted(by_where[w]), 0.5) for w in ("local", "external"))
        per_test[name] = {"local_p50_ms": local, "external_p50_ms": external, "ratio": external / local,
                          "n": len(by_where["local"])}
    return {
        "machine": platform.platform(), "python": platform.python_version(), "lease_ttl_s": 30,
        "per_test": per_test,
        "heartbeat": {kind: {"beat_p50_ms_by_held": {str(k): v for k, v in m.items()},
                             "ms_per_held_resource": _per_resource(m),
                             "ms_per_held_resource_per_s_at_ttl_30": _per_resource(m) / 10}
                      for kind, m in beats.items()},
    }


def _print(result: dict[str, Any]) -> None:
    print(f"{'per test (enter+exit)':<26}{'local p50 ms':>14}{'external p50 ms':>17}{'ratio':>8}")
    for name, row in result["per_test"].items():
        print(f"{name:<26}{row['local_p50_ms']:>14.3f}{row['external_p50_ms']:>17.3f}{row['ratio']:>8.2f}")
    print()
    print(f"{'heartbeat (one beat)':<26}{'held':>6}{'p50 ms':>10}   per held resource")
    for kind, row in result["heartbeat"].items():
        for held, ms in row["beat_p50_ms_by_held"].items():
            print(f"{kind:<26}{held:>6}{ms:>10.3f}")
        print(f"{'':<26}{'':>6}{'':>10}   {row['ms_per_held_resource'] * 1000:.0f} µs a beat "
              f"({row['ms_per_held_resource_per_s_at_ttl_30'] * 1000:.1f} µs/s at the default TTL)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = anyio.run(main, args.iterations, args.rounds)
    _print(result)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")
