"""Start-up: a fresh Python process to its first PostgreSQL + Redis handles, cold, warm and hot.

    python benchmarks/bench_start.py [--runs 3]

- cold: a new state dir and a new cache dir, as on a fresh machine: the PostgreSQL cluster is
  made (initdb), both servers start;
- warm: a new state dir but the cache of the cold run: the cluster is copied from the cache;
- hot: the servers are up, kept warm by ``isolated-env up`` (a clean exit stops unpinned servers
  with their last user).

Each figure is measured from just before the process is spawned, so interpreter start-up and
imports count. Every state and cache dir is under /dev/shm and removed at the end, with its servers.
Targets: cold <= 1.5 s, warm <= 150 ms. Prints a table and writes benchmarks/results/start.json,
with the child's CPU time beside the wall time (on a shared machine the CPU moves less with the load).

Where a hot start goes (spans around each step, python -X importtime for the imports; measured at a
load of 7 on the 2 cores, where everything takes 3-4x what it does on an idle machine):
- imports, about three quarters of the CPU: asyncio and anyio's asyncio backend (anyio.run), asyncpg,
  redis.asyncio (the largest; in this venv it also pulls importlib.metadata and opentelemetry), and
  the package's own resource modules (their dataclasses, mostly). ``import isolated_env`` is lazy.
- PostgreSQL's first lease: the server found through the registry (state file, pidfd, users lock;
  ~5 %), the work database made (one admin connection and CREATE DATABASE ... FILE_COPY, most of it),
  one pooled connection as the test role, BEGIN. The guard-rail check (a connection and two queries)
  is skipped when the server's directory holds the marker its setup leaves (``isolated-env up`` sets
  them up); the reaper's scan of
  dead owners' databases and the admin connection's close run in the background.
- Redis's first lease: the control connection, the reaper's MGET of the 1023 lease keys, the SET NX
  lease script, the admin client's connect, AUTH and FLUSHDB.
A warm start adds both servers' starts: PostgreSQL's (copy of the cached cluster, spawn, readiness
probes every <= 10 ms, the password set over the bootstrap socket, a reload, then the guard rails'
role and base database) and Redis's (spawn, readiness, its 1023 guard-rail users in one batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "start.json"
TARGETS_MS = {"cold": 1500.0, "warm": 150.0, "hot": 150.0}

CHILD = """
import json, os, sys, time
start = float(os.environ["BENCH_SPAWNED_AT"])
import anyio
import isolated_env as ie
imported = time.time()

async def main():
    async with ie.Environment() as env:
        await env.enter(ie.isolated_postgres())
        postgres = time.time()
        await env.enter(ie.isolated_redis())
        redis = time.time()
    return postgres, redis

postgres, redis = anyio.run(main)
print(json.dumps({"import_ms": (imported - start) * 1000, "postgres_ms": (postgres - start) * 1000,
                  "first_handles_ms": (redis - start) * 1000}))
"""


def child(state: Path, cache: Path) -> dict[str, float]:
    env = {**os.environ, "ISOLATED_ENV_STATE_DIR": str(state), "ISOLATED_ENV_CACHE_DIR": str(cache),
           "ISOLATED_ENV_REAP_AFTER": "30", "BENCH_SPAWNED_AT": repr(time.time())}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"start-up run failed:\n{done.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    # The child's own CPU (and that of the short processes it waited for: cp, postgres --version),
    # not the servers': on a shared machine it moves far less with the load than the wall time.
    figures["cpu_ms"] = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return figures


def stop(state: Path) -> None:
    """Stop the servers of a state dir and wait for them to go, then remove it."""
    env = {**os.environ, "ISOLATED_ENV_STATE_DIR": str(state)}
    subprocess.run([sys.executable, "-m", "isolated_env.cli", "down"], env=env, capture_output=True, check=False)
    import psutil

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter(["cmdline"]) if str(state) in " ".join(p.info["cmdline"] or ())]
        if not left:
            break
        for proc in left:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        time.sleep(0.2)
    shutil.rmtree(state, ignore_errors=True)


def main(runs: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "hot": []}
    made: list[Path] = []
    try:
        for _ in range(runs):
            cache = Path(tempfile.mkdtemp(prefix="ie-start-cache-", dir="/dev/shm"))
            cold_state = Path(tempfile.mkdtemp(prefix="ie-start-", dir="/dev/shm"))
            made += [cache, cold_state]
            samples["cold"].append(child(cold_state, cache))
            stop(cold_state)
            warm_state = Path(tempfile.mkdtemp(prefix="ie-start-", dir="/dev/shm"))
            made.append(warm_state)
            samples["warm"].append(child(warm_state, cache))
            up = {**os.environ, "ISOLATED_ENV_STATE_DIR": str(warm_state), "ISOLATED_ENV_CACHE_DIR": str(cache)}
            subprocess.run([sys.executable, "-m", "isolated_env.cli", "up", "postgres", "redis"], env=up,
                           capture_output=True, check=True)
            samples["hot"].append(child(warm_state, cache))
            stop(warm_state)
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        for path in made:
            stop(path) if path.exists() and "cache" not in path.name else shutil.rmtree(path, ignore_errors=True)
    rows = {}
    for name, runs_of in samples.items():
        rows[name] = {key: round(statistics.median(s[key] for s in runs_of), 1) for key in runs_of[0]}
        rows[name]["n"] = len(runs_of)
    return {
        "benchmark": "start",
        "command": "python benchmarks/bench_start.py " + " ".join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "rows": [{"name": name, **row} for name, row in rows.items()],
        "targets_ms": TARGETS_MS,
        "meets_targets": {k: rows[k]["first_handles_ms"] <= v for k, v in TARGETS_MS.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run of each")
    args = parser.parse_args()
    report = main(1 if args.quick else args.runs)
    print(f"{'start':<6} {'n':>3} {'import ms':>10} {'+ postgres ms':>14} {'+ redis ms (first handles)':>27} "
          f"{'child CPU ms':>13}")
    for row in report["rows"]:
        print(f"{row['name']:<6} {row['n']:>3} {row['import_ms']:>10.1f} {row['postgres_ms']:>14.1f} "
              f"{row['first_handles_ms']:>27.1f} {row['cpu_ms']:>13.1f}")
    print(f"targets {report['targets_ms']}: {report['meets_targets']}; load average {report['load_average']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")
