"""Scale: per-test cost and memory at 1, 10, 50 and 200 concurrent environments, per profile.

    python benchmarks/bench_scale.py [--concurrency 1,10,50,200] [--profiles dev,ci-fast,ci-thorough,production]
                                     [--tests-per-slot 4] [--body-ms 5]

Each test is an ``Environment`` with ``isolated_postgres`` (transaction mode) and ``isolated_redis``:
an INSERT and a SELECT, a SET and a GET, and ``--body-ms`` of waiting (the I/O a real test does),
so that the tests overlap. Every cell (a profile at a concurrency) runs in a fresh Python process,
so pools and memory start from nothing, on the same embedded servers; the ``2 procs`` cells run two
such processes at once with half the concurrency each, as two xdist workers would. Measured per
cell: throughput as ms of wall per test, setup p50/p95 (both handles in hand), errors, the peak RSS
of the Python process(es), and the peak PSS of the PostgreSQL server's processes while it ran.

Prints a table and writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import psutil

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
TARGETS = {"python_rss_mb": 100.0, "postgres_pss_mb": 300.0}
"""At 200 concurrent environments: the issue's bounds."""


def _peak(sample: Any, stop: threading.Event, into: list[float]) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            try:
                into.append(sample())
            except (psutil.Error, OSError):
                pass
            stop.wait(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


async def cell(concurrency: int, tests: int, body_ms: float) -> dict[str, Any]:
    """One process's share of a cell (run with --cell): the tests, ``concurrency`` at a time."""
    import isolated_env as ie
    from isolated_env._metrics import percentile

    me = psutil.Process()
    rss: list[float] = []
    stop = threading.Event()
    sampler = _peak(lambda: me.memory_info().rss / 2**20, stop, rss)
    setups: list[float] = []
    errors: list[str] = []
    limiter = anyio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            started = time.perf_counter()
            try:
                async with ie.Environment(leak_check=False) as env:
                    db = await env.enter(ie.isolated_postgres())
                    r = await env.enter(ie.isolated_redis())
                    setups.append((time.perf_counter() - started) * 1000)
                    await db.execute("CREATE TEMP TABLE IF NOT EXISTS t (n int)")
                    await db.execute("INSERT INTO t VALUES ($1)", i)
                    assert await db.fetchval("SELECT count(*) FROM t") == 1
                    await r.set("k", i)
                    assert int(await r.get("k")) == i
                    await anyio.sleep(body_ms / 1000)
            except Exception as exc:  # counted and reported: the figure is how many
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

    async with ie.Environment(leak_check=False) as warm:  # servers found, first connections made
        await warm.enter(ie.isolated_postgres())
        await warm.enter(ie.isolated_redis())
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(tests):
            tg.start_soon(one, i)
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    s = sorted(setups)
    return {
        "tests": tests, "wall_s": wall, "errors": len(errors), "first_errors": errors[:3],
        "setup_p50_ms": percentile(s, 0.5) if s else None, "setup_p95_ms": percentile(s, 0.95) if s else None,
        "rss_peak_mb": max(rss, default=me.memory_info().rss / 2**20),
    }


def _postgres_pss() -> float:
    total = 0.0
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" or (proc.info["cmdline"] or [""])[0].endswith("/postgres"):
            try:
                total += proc.memory_full_info().pss / 2**20
            except (psutil.Error, AttributeError):
                pass
    return total


def run_cell(profile: str, concurrency: int, processes: int, tests_per_slot: int, body_ms: float) -> dict[str, Any]:
    share = max(1, concurrency // processes)
    tests = max(50, tests_per_slot * share)
    env = {**os.environ, "ISOLATED_ENV_PROFILE": profile}
    command = [sys.executable, __file__, "--cell", str(share), str(tests), str(body_ms)]
    pss: list[float] = []
    stop = threading.Event()
    sampler = _peak(_postgres_pss, stop, pss)
    started = time.perf_counter()
    children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    parts = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    done = sum(p["tests"] for p in parts)
    slowest = max(p["wall_s"] for p in parts)
    return {
        "profile": profile, "concurrency": share * processes, "processes": processes, "tests": done,
        "per_test_ms": slowest * 1000 / done, "process_wall_s": round(wall, 2),
        "setup_p50_ms": max(p["setup_p50_ms"] or 0 for p in parts),
        "setup_p95_ms": max(p["setup_p95_ms"] or 0 for p in parts),
        "errors": sum(p["errors"] for p in parts), "first_errors": [e for p in parts for e in p["first_errors"]][:3],
        "python_rss_peak_mb": max(p["rss_peak_mb"] for p in parts),
        "postgres_pss_peak_mb": max(pss, default=0.0),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    async def servers() -> None:  # start the embedded servers once, before any cell's process
        import isolated_env as ie

        async with ie.Environment() as env:
            await env.enter(ie.isolated_postgres())
            await env.enter(ie.isolated_redis())

    anyio.run(servers)
    rows = []
    for profile in args.profiles.split(","):
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            for processes in (1, 2) if concurrency >= 10 else (1,):
                row = run_cell(profile, concurrency, processes, args.tests_per_slot, args.body_ms)
                rows.append(row)
                print_row(row)
    at_200 = [r for r in rows if r["concurrency"] == 200]
    return {
        "benchmark": "scale",
        "command": "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "body_ms": args.body_ms,
        "rows": rows,
        "targets_at_200": TARGETS,
        "meets_targets_at_200": bool(at_200) and all(
            r["errors"] == 0 and r["python_rss_peak_mb"] <= TARGETS["python_rss_mb"]
            and r["postgres_pss_peak_mb"] <= TARGETS["postgres_pss_mb"] for r in at_200
        ),
    }


HEADER = f"{'profile':<12} {'conc':>5} {'procs':>5} {'tests':>6} {'ms/test':>8} {'setup p50':>10} " \
         f"{'p95':>8} {'errors':>6} {'py RSS MB':>9} {'pg PSS MB':>9}"


def print_row(r: dict[str, Any]) -> None:
    print(f"{r['profile']:<12} {r['concurrency']:>5} {r['processes']:>5} {r['tests']:>6} {r['per_test_ms']:>8.2f} "
          f"{r['setup_p50_ms']:>10.2f} {r['setup_p95_ms']:>8.2f} {r['errors']:>6} "
          f"{r['python_rss_peak_mb']:>9.1f} {r['postgres_pss_peak_mb']:>9.1f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--cell":
        print(json.dumps(anyio.run(cell, int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))))
        sys.exit(0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="1,10,50,200")
    parser.add_argument("--profiles", default="dev,ci-fast,ci-thorough,production")
    parser.add_argument("--tests-per-slot", type=int, default=4)
    parser.add_argument("--body-ms", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="two profiles, three concurrencies")
    args = parser.parse_args()
    if args.quick:
        args.profiles, args.concurrency = "dev,production", "1,10,50"
    print(HEADER)
    report = main(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"load average {report['load_average']}; meets the 200-environment bounds: {report['meets_targets_at_200']}")
    print(f"wrote {RESULTS}")
