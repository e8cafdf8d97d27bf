"""What isolated_clickhouse() costs: adaptor startup and memory, per-test lease + release.

    .venv/bin/python benchmarks/bench_clickhouse.py [--leases 500] [--starts 5]

Starts its own embedded server (chdb behind the adaptor) in a private state directory, so the
figures do not depend on a server another run left warm. Prints a table and writes
``benchmarks/results/clickhouse.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import psutil

RESULTS = Path(__file__).resolve().parent / "results" / "clickhouse.json"


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": round(_pct(samples, 0.5), 3),
        "p95_ms": round(_pct(samples, 0.95), 3),
        "max_ms": round(max(samples), 3),
    }


def _rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def measure_startup(state_dir: Path, starts: int) -> tuple[list[float], float]:
    """Cold starts of the adaptor (python + chdb import + engine + first real query), and idle RSS."""
    from isolated_env._servers import registry
    from isolated_env._servers.clickhouse import _start

    times: list[float] = []
    rss = 0.0
    for _ in range(starts):
        state = registry.acquire("clickhouse", state_dir, _start)
        times.append(state.startup_ms)
        rss = _rss_mb(state.pid)
        registry.release("clickhouse", state_dir)
    return times, rss


async def measure_leases(leases: int, concurrency: int) -> dict[str, Any]:
    from isolated_env import Environment
    from isolated_env._contract import current_settings
    from isolated_env._servers import clickhouse as servers
    from isolated_env.resources.clickhouse import isolated_clickhouse

    server = await servers.ensure_server(current_settings())
    assert server.pid is not None
    started = time.perf_counter()
    async with isolated_clickhouse():
        pass
    first_ms = (time.perf_counter() - started) * 1000

    enter: list[float] = []
    exit_: list[float] = []
    total: list[float] = []
    for _ in range(leases):
        t0 = time.perf_counter()
        cm = isolated_clickhouse()
        await cm.__aenter__()
        t1 = time.perf_counter()
        await cm.__aexit__(None, None, None)
        t2 = time.perf_counter()
        enter.append((t1 - t0) * 1000)
        exit_.append((t2 - t1) * 1000)
        total.append((t2 - t0) * 1000)

    # A test that does something: create a MergeTree table, insert, read back (inside one environment).
    work: list[float] = []
    for _ in range(min(leases, 200)):
        t0 = time.perf_counter()
        async with Environment() as env:
            ch = await env.enter(isolated_clickhouse())
            await ch.command("CREATE TABLE t (a UInt32, b String) ENGINE = MergeTree ORDER BY a")
            await ch.insert("t", [[i, str(i)] for i in range(100)], column_names=["a", "b"])
            await ch.query("SELECT sum(a) FROM t")
        work.append((time.perf_counter() - t0) * 1000)

    select: list[float] = []
    async with isolated_clickhouse() as ch:
        for _ in range(min(leases, 500)):
            t0 = time.perf_counter()
            await ch.command("SELECT 1")
            select.append((time.perf_counter() - t0) * 1000)

    # Concurrent tests: `concurrency` environments at once, lease + release each.
    concurrent: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter()
        async with Environment(capacity=concurrency) as env:
            await env.enter(isolated_clickhouse())
        concurrent.append((time.perf_counter() - t0) * 1000)

    for _round in range(max(1, leases // concurrency // 2)):
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(one)

    return {
        "first_lease_in_process_ms": round(first_ms, 3),
        "lease_ms": _summary(enter),
        "release_ms": _summary(exit_),
        "lease_plus_release_ms": _summary(total),
        "concurrent_lease_plus_release_ms": {**_summary(concurrent), "concurrency": concurrency},
        "test_with_table_insert_select_ms": _summary(work),
        "select_1_round_trip_ms": _summary(select),
        "adaptor_rss_after_load_mb": _rss_mb(server.pid),
        "server": {"engine": server.engine, "version": server.version},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=500)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()

    for name in list(os.environ):
        if name.startswith("TEST_CLICKHOUSE"):
            del os.environ[name]
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    state_dir = Path(tempfile.mkdtemp(prefix="ie-bench-ch-", dir=base))
    os.environ["ISOLATED_ENV_STATE_DIR"] = str(state_dir)
    try:
        startup, idle_rss = measure_startup(state_dir, args.starts)
        leases = anyio.run(measure_leases, args.leases, args.concurrency)
    finally:
        from isolated_env._servers import clickhouse as servers
        from isolated_env._servers import registry

        registry.release("clickhouse", state_dir)
        servers.forget()
        shutil.rmtree(state_dir, ignore_errors=True)

    result = {
        "command": " ".join(["python benchmarks/bench_clickhouse.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        },
        "adaptor_startup_ms": _summary(startup),
        "adaptor_rss_idle_mb": idle_rss,
        **leases,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    rows = [
        ("adaptor startup (cold: python + chdb + first query)", result["adaptor_startup_ms"]),
        ("lease (warm pool)", result["lease_ms"]),
        ("release (drop database, create the next)", result["release_ms"]),
        ("lease + release, one at a time", result["lease_plus_release_ms"]),
        (f"lease + release, {args.concurrency} at once", result["concurrent_lease_plus_release_ms"]),
        ("test: table + insert 100 rows + select", result["test_with_table_insert_select_ms"]),
        ("SELECT 1 round trip", result["select_1_round_trip_ms"]),
    ]
    print(f"{'isolated_clickhouse (chdb adaptor)':<52} {'n':>5} {'p50 ms':>9} {'p95 ms':>9}")
    for label, s in rows:
        print(f"{label:<52} {s['n']:>5} {s['p50_ms']:>9.2f} {s['p95_ms']:>9.2f}")
    first = result["first_lease_in_process_ms"]
    print(f"{'first lease of the process (imports, clients)':<52} {'':>5} {first:>9.2f}")
    print(f"adaptor RSS: {idle_rss} MB idle, {result['adaptor_rss_after_load_mb']} MB after the run")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
