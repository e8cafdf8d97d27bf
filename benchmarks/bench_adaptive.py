"""The warm pool sized to observed demand against fixed sizes, under a bursty load.

    .venv/bin/python benchmarks/bench_adaptive.py [--batches 3] [--quick]

One database-mode warm pool per variant, on the embedded server and one small template:
- ``fixed 2``: two clones kept ready (the adaptive pool's low bound at capacity 10 on 2 CPUs);
- ``fixed 10``: ten kept ready (what a pool at capacity 10 kept before it sized itself);
- ``adaptive``: :class:`isolated_env._demand.Demand` between :func:`~isolated_env._demand.warm_bounds`
  of capacity 10.
The load: a busy phase (bursts of 8 concurrent leases, 0.4 s apart) then a quiet phase longer than
the demand window (bursts of 2, 1 s apart); each lease takes over its clone's session, runs a query,
holds it 20 ms and releases it, as a short database-mode test does. Per variant: lease wait (the
take of a clone) p50/p95, starved leases, clones made and wasted (made, never leased), peak and mean
ready clones. Batches interleave the variants; every figure is the median over the batches.
Writes benchmarks/results/adaptive.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _interleave import interleaved

from isolated_env._config import resolve
from isolated_env._demand import Demand, warm_bounds
from isolated_env._drivers import asyncpg as driver
from isolated_env._metrics import percentile
from isolated_env._runtime import current_runtime
from isolated_env._servers.postgres import ensure_server
from isolated_env.resources.postgres import PostgresTemplate, template_database
from isolated_env.resources.postgres import warm as warm_module
from isolated_env.resources.postgres.labels import disown, drop_database

RESULTS = Path(__file__).resolve().parent / "results" / "adaptive.json"
CAPACITY = 10
TEMPLATE = PostgresTemplate(name="bench_adaptive", sql="\n".join(
    f"CREATE TABLE t{i} (id bigserial PRIMARY KEY, name text NOT NULL, payload jsonb);"
    f"CREATE INDEX t{i}_name ON t{i} (name);" for i in range(8)))


def load_shape(quick: bool) -> list[tuple[int, float]]:
    """(burst size, idle gap after it in seconds): busy, then quiet for longer than the window."""
    busy = [(8, 0.4)] * (3 if quick else 6)
    quiet = [(2, 1.0)] * (14 if quick else 20)
    return busy + quiet


def demand_of(variant: str) -> Demand:
    if variant == "adaptive":
        return Demand(*warm_bounds(CAPACITY))
    n = int(variant.split()[1])
    return Demand(n, n)


async def one_run(variant: str, server: Any, template_name: str, shape: list[tuple[int, float]]) -> dict[str, float]:
    pool = warm_module.WarmPool(server, TEMPLATE, template_name, CAPACITY)
    pool.demand = demand_of(variant)
    await pool.start(await current_runtime())
    with anyio.fail_after(60):  # start warm, at the variant's initial size
        while len(pool.ready) < pool.demand.target() or pool.creating:  # noqa: ASYNC110 (the pool sets no event)
            await anyio.sleep(0.01)
    waits: list[float] = []
    ready_samples: list[int] = []
    leases = 0

    async def lease() -> None:
        nonlocal leases
        started = time.perf_counter()
        clone = await pool.take()
        waits.append((time.perf_counter() - started) * 1000)
        leases += 1
        clone.conn = await driver.connect(pool.login(clone.name), clone.name, reuse=True)
        await clone.conn.fetchval("SELECT count(*) FROM t0")
        await anyio.sleep(0.02)
        pool.release(clone)

    async def sample(stop: anyio.Event) -> None:
        while not stop.is_set():
            ready_samples.append(len(pool.ready))
            await anyio.sleep(0.01)

    before = pool.statistics()
    stop = anyio.Event()
    async with anyio.create_task_group() as sampler:
        sampler.start_soon(sample, stop)
        for size, gap in shape:
            async with anyio.create_task_group() as burst:
                for _ in range(size):
                    burst.start_soon(lease)
            await anyio.sleep(gap)
        stop.set()
    after = pool.statistics()
    await pool.settle()
    made = after.clones + after.reused_spares - (before.clones + before.reused_spares) + before.ready
    await pool.aclose()
    await drop_spares(server, pool.spare_key)  # not handed to the next variant's pool
    ordered = sorted(waits)
    return {
        "lease_wait_p50_ms": percentile(ordered, 0.5),
        "lease_wait_p95_ms": percentile(ordered, 0.95),
        "starved": float(after.starved - before.starved),
        "clones_made": float(made),
        "clones_wasted": float(made - leases),
        "peak_ready": float(after.peak_ready),
        "mean_ready": sum(ready_samples) / max(1, len(ready_samples)),
        "leases": float(leases),
    }


async def drop_spares(server: Any, key: tuple[str, str]) -> None:
    with warm_module._spare_lock:
        names, warm_module._spare[key] = list(warm_module._spare.get(key, [])), []
    if not names:
        return
    admin = await driver.connect(server)
    try:
        for name in names:
            await drop_database(admin, name)
            disown(name)
    finally:
        await driver.close(admin)


async def main(batches: int, quick: bool) -> dict[str, Any]:
    server = await ensure_server(resolve())
    template_name = await template_database(server, TEMPLATE)
    shape = load_shape(quick)
    variants = ["fixed 2", "fixed 10", "adaptive"]
    load_before = os.getloadavg()[0]
    figures = await interleaved(variants, batches, lambda v: one_run(v, server, template_name, shape))
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": round(load_before, 2)},
        "load": {"bursts": [list(step) for step in shape], "hold_ms": 20, "capacity": CAPACITY,
                 "adaptive_bounds": list(warm_bounds(CAPACITY)), "window_s": Demand(1, 1).window},
        "batches": batches,
        "results": {v: {k: round(x, 3) for k, x in f.items()} for v, f in figures.items()},
        "ratios": {
            "adaptive/fixed 10 mean_ready": round(figures["adaptive"]["mean_ready"]
                                                 / max(1e-9, figures["fixed 10"]["mean_ready"]), 3),
            "adaptive/fixed 2 starved": round(figures["adaptive"]["starved"]
                                              / max(1.0, figures["fixed 2"]["starved"]), 3),
        },
    }


def table(result: dict[str, Any]) -> str:
    rows = [f"{'variant':<10} {'wait p50':>9} {'wait p95':>9} {'starved':>8} {'made':>6} {'wasted':>7} "
            f"{'peak ready':>10} {'mean ready':>10}"]
    for variant, f in result["results"].items():
        rows.append(f"{variant:<10} {f['lease_wait_p50_ms']:>6.2f} ms {f['lease_wait_p95_ms']:>6.2f} ms "
                    f"{f['starved']:>8.0f} {f['clones_made']:>6.0f} {f['clones_wasted']:>7.0f} "
                    f"{f['peak_ready']:>10.0f} {f['mean_ready']:>10.1f}")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one batch of a shorter load")
    args = parser.parse_args()
    result = anyio.run(main, 1 if args.quick else args.batches, args.quick)
    print(table(result))
    print(json.dumps(result["ratios"]))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
