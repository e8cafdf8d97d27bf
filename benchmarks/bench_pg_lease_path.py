"""Where a database-mode lease's time goes, each step against its peer in the same process, in
batches interleaved so that machine load reaches every row alike.

    python benchmarks/bench_pg_lease_path.py [--batches 6] [--leases 60]

Every lease pops a clone the warm pool made and whose session it opened (as the clone's own
login role) and parked, in the background loop, ahead of demand. Rows:

- ``lease (pop here)``: ``isolated_postgres(mode="database")`` as a test gets it now: the clone is
  popped and its pool found from the test's own loop; ``lease (loop per test)`` is the same with a
  new event loop per test, as under pytest-asyncio's default loop scope.
- ``handover (pop here)`` / ``handover (two hops)``: only the steps that differ, without the rest
  of the lease: find the pool and pop a clone from this loop, then take over its parked session;
  or do the first two as calls into the background loop (``_background.call``), as every lease did
  before (while that loop is busy refilling, each call waits for the GIL).
- ``takeover of the parked session``: the takeover alone (no backend started, no authentication).
- ``new session as the clone's role`` / ``new session as ie_test``: what a lease would pay if it
  opened its own session instead (a backend start and a SCRAM exchange).

Each test holds its database for 10 ms with one query, as in benchmarks/bench_postgres_database.py,
so that the background loop refills while tests run. Prints a table and writes
benchmarks/results/pg_lease_path.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from _interleave import interleaved

from isolated_env import isolated_postgres
from isolated_env._background import call as in_background
from isolated_env._background import submit
from isolated_env._contract import current_settings
from isolated_env._drivers import asyncpg as driver
from isolated_env._runtime import close_current_runtime, current_runtime
from isolated_env._servers.postgres import ensure_server
from isolated_env.resources.postgres import PostgresTemplate, settle, template_database
from isolated_env.resources.postgres import database as database_mode
from isolated_env.resources.postgres.labels import server_key
from isolated_env.resources.postgres.roles import rails
from isolated_env.resources.postgres.warm import WarmPool, warm_pool

RESULTS = Path(__file__).resolve().parent / "results" / "pg_lease_path.json"
TEMPLATE = PostgresTemplate(name=f"lease-path-{uuid.uuid4().hex[:6]}", sql="CREATE TABLE t0 (id bigserial PRIMARY KEY)")
BODY_S = 0.010
ROWS = ("lease (pop here)", "lease (loop per test)", "handover (pop here)", "handover (two hops)",
        "takeover of the parked session", "new session as the clone's role", "new session as ie_test")


async def _lease() -> tuple[float, float]:
    cm = isolated_postgres(mode="database", template=TEMPLATE)
    t0 = time.perf_counter()
    async with cm as db:
        t1 = time.perf_counter()
        await db.fetchval("SELECT 1")
        await asyncio.sleep(BODY_S)
        t2 = time.perf_counter()
    return (t1 - t0) * 1000, (time.perf_counter() - t2) * 1000


def _leases_in_loops_of_their_own(n: int) -> list[float]:
    async def one() -> float:
        try:
            return (await _lease())[0]
        finally:
            await close_current_runtime()

    return [asyncio.run(one()) for _ in range(n)]


async def _handover(key: tuple[int, str, str, int], hops: bool, find: Callable[[], Awaitable[WarmPool]],
                    timings: dict[str, float]) -> float:
    t0 = time.perf_counter()
    if hops:
        warm = await in_background(find)
        clone = await in_background(warm.take)
    else:
        warm = database_mode._open[key]
        clone = warm.take_ready() or await in_background(warm.take)
    t1 = time.perf_counter()
    assert clone.login is not None
    clone.conn = await driver.connect(clone.login, clone.name, reuse=True)
    t2 = time.perf_counter()
    asyncio.get_running_loop().call_soon(warm.refill)
    await clone.conn.fetchval("SELECT 1")
    await asyncio.sleep(BODY_S)
    clone.conn.terminate()
    clone.conn = None

    async def drop() -> None:
        warm.release(clone)

    submit(drop)
    timings["takeover"] = (t2 - t1) * 1000
    return (t2 - t0) * 1000


async def main(batches: int, leases: int) -> dict[str, Any]:
    settings = current_settings()
    server = await ensure_server(settings)
    guard = await rails(server)
    async with isolated_postgres(mode="database", template=TEMPLATE):
        pass  # makes the warm pool, which fills up in the background
    await anyio.sleep(1.0)
    name = await template_database(server, TEMPLATE)
    key = (os.getpid(), server_key(guard.tests), name, settings.capacity)

    async def find() -> WarmPool:
        return await warm_pool(await current_runtime(), server, TEMPLATE, name, settings.capacity, guard.tests,
                               guard.role)

    async def new_session(as_clone_role: bool) -> list[float]:
        out = []
        mode = "database" if as_clone_role else "transaction"  # ie_test may not connect to a clone
        async with isolated_postgres(mode=mode, template=TEMPLATE) as db:
            for _ in range(max(5, leases // 6)):
                t0 = time.perf_counter()
                conn = await asyncpg.connect(**db.server.connect_kwargs(db.database))
                out.append((time.perf_counter() - t0) * 1000)
                await conn.close()
        return out

    async def batch(row: str) -> dict[str, float]:
        takeovers: list[float] = []
        if row == "lease (pop here)":
            runs = [await _lease() for _ in range(leases)]
            return {"p50_ms": statistics.median(r[0] for r in runs),
                    "release_p50_ms": statistics.median(r[1] for r in runs)}
        if row == "lease (loop per test)":
            samples = await anyio.to_thread.run_sync(_leases_in_loops_of_their_own, leases)
        elif row.startswith("handover"):
            samples = []
            for _ in range(leases):
                timings: dict[str, float] = {}
                samples.append(await _handover(key, row.endswith("hops)"), find, timings))
                takeovers.append(timings["takeover"])
            return {"p50_ms": statistics.median(samples), "takeover_p50_ms": statistics.median(takeovers)}
        elif row == "takeover of the parked session":
            return {}  # measured inside the handover rows
        else:
            samples = await new_session(row.endswith("role"))
        return {"p50_ms": statistics.median(samples)}

    found = await interleaved(ROWS, batches, batch)
    takeover = statistics.median([found[r]["takeover_p50_ms"] for r in ROWS if r.startswith("handover")])
    found["takeover of the parked session"] = {"p50_ms": takeover}
    await settle()
    rows = [{"name": r, **{k: round(v, 3) for k, v in found[r].items()}} for r in ROWS]
    by = {r["name"]: r["p50_ms"] for r in rows}
    return {
        "benchmark": "pg_lease_path",
        "command": f"python benchmarks/bench_pg_lease_path.py --batches {batches} --leases {leases}",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "postgres": server.version,
                    "load_average": [round(x, 1) for x in os.getloadavg()]},
        "batches": batches,
        "leases_per_batch": leases,
        "rows": rows,
        "ratios": {
            "handover: two hops / pop here": round(by["handover (two hops)"] / by["handover (pop here)"], 2),
            "new session as the clone's role / takeover": round(
                by["new session as the clone's role"] / by["takeover of the parked session"], 1),
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--leases", type=int, default=60)
    args = parser.parse_args()
    report = anyio.run(main, args.batches, args.leases)
    machine = report["machine"]
    print(f"database-mode lease, ms (PostgreSQL {machine['postgres']}, load {machine['load_average']}; "
          f"median of {args.batches} interleaved batches of {args.leases})")
    for row in report["rows"]:
        extra = "".join(f"  {k} {v:.3f}" for k, v in row.items() if k not in ("name", "p50_ms"))
        print(f"  {row['name']:<34} p50 {row['p50_ms']:>8.3f}{extra}")
    for k, v in report["ratios"].items():
        print(f"  {k}: {v}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
