"""Per-test cost of isolated_redis in prefix mode (a key prefix and an ACL user per test, for
servers with one database) against database mode, in one process and one run.

    python benchmarks/bench_redis_prefix.py [--iterations 1000] [--loops 40]

A test here is: lease, one SET and one GET, cleanup (FLUSHDB in database mode; SCAN + UNLINK of
the prefix on every primary in prefix mode). Cases, interleaved in rounds so that the noise of
these shared machines falls on all alike:

- database mode and prefix mode on the embedded server (unix socket);
- prefix mode on a server started with ``databases 1`` (TCP), as a managed single-db Redis;
- prefix mode on a 3-primary Redis Cluster on loopback (TCP; the cleanup runs on 3 nodes).

"warm" is the steady state of a test session (the lease is pooled by the event loop); "new loop"
is a test in an event loop of its own (pytest-asyncio's default), which leases, makes its
clients (and in prefix mode its ACL user) and gives everything back. Prints a table of medians
and writes benchmarks/results/redis_prefix.json; compare the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

import isolated_env as ie
from isolated_env._metrics import percentile
from isolated_env._servers._redis_cluster import start_cluster
from isolated_env._servers.redis import find_binary

RESULTS = Path(__file__).resolve().parent / "results" / "redis_prefix.json"


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"n": len(s), "p50_ms": percentile(s, 0.5), "p95_ms": percentile(s, 0.95), "max_ms": s[-1]}


async def one_test(mode: str | None) -> None:
    async with ie.isolated_redis(mode=mode) as r:
        await r.set(r.key("user:1"), "alice")
        assert await r.get(r.key("user:1")) == b"alice"


def start_single_db(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = directory / "redis.conf"
    conf.write_text("requirepass bench-single-db\n")
    proc = subprocess.Popen(
        [str(find_binary()[0]), str(conf), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--databases", "1", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(1000):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.01)
    return proc, f"redis://:bench-single-db@127.0.0.1:{port}/0"


class Case:
    def __init__(self, name: str, url: str | None, mode: str | None) -> None:
        self.name, self.url, self.mode = name, url, mode
        self.warm: list[float] = []
        self.new_loop: list[float] = []

    def select(self) -> None:
        if self.url is None:
            os.environ.pop("TEST_REDIS_URL", None)
        else:
            os.environ["TEST_REDIS_URL"] = self.url


async def warm_batch(case: Case, n: int) -> None:
    case.select()
    for _ in range(5):  # the pool of this case's server is warm, its caches hot
        await one_test(case.mode)
    for _ in range(n):
        started = time.perf_counter()
        await one_test(case.mode)
        case.warm.append((time.perf_counter() - started) * 1000)


def new_loop_batch(case: Case, n: int) -> None:
    case.select()
    anyio.run(one_test, case.mode)  # the server is known to the process before timing
    for _ in range(n):
        started = time.perf_counter()
        anyio.run(one_test, case.mode)
        case.new_loop.append((time.perf_counter() - started) * 1000)


def run(iterations: int, loops: int, rounds: int = 5) -> dict[str, Any]:
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    scratch = Path(tempfile.mkdtemp(prefix="ie-bench-", dir=base))
    cluster = start_cluster(scratch / "cluster", primaries=3)
    single, single_url = start_single_db(scratch)
    outside = os.environ.get("TEST_REDIS_URL")
    try:
        cases = [
            Case("embedded, db mode", None, None),
            Case("embedded, prefix mode", None, "prefix"),
            Case("databases 1, prefix mode", single_url, None),
            Case("cluster (3 primaries), prefix", cluster.url, None),
        ]
        for _ in range(rounds):
            for case in cases:
                anyio.run(warm_batch, case, iterations // rounds)
                new_loop_batch(case, max(1, loops // rounds))
    finally:
        if outside is None:
            os.environ.pop("TEST_REDIS_URL", None)
        else:
            os.environ["TEST_REDIS_URL"] = outside
        cluster.stop()
        single.terminate()
        single.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    results = {c.name: {"warm": summary(c.warm), "new loop": summary(c.new_loop)} for c in cases}
    db = results["embedded, db mode"]
    ratios = {
        f"{name} / embedded db mode ({kind})": results[name][kind]["p50_ms"] / db[kind]["p50_ms"]
        for name in results if name != "embedded, db mode" for kind in ("warm", "new loop")
    }
    return {
        "benchmark": "redis_prefix",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "iterations": iterations,
        "loops": loops,
        "results": results,
        "ratios": ratios,
    }


def print_table(report: dict[str, Any]) -> None:
    print("\nper-test cost, ms (lease + SET + GET + cleanup)")
    print(f"{'case':<32} {'kind':<9} {'n':>6} {'p50':>9} {'p95':>9} {'max':>9}")
    for name, kinds in report["results"].items():
        for kind, r in kinds.items():
            print(f"{name:<32} {kind:<9} {r['n']:>6} {r['p50_ms']:>9.3f} {r['p95_ms']:>9.3f} {r['max_ms']:>9.3f}")
    print()
    for name, ratio in report["ratios"].items():
        print(f"{name}: {ratio:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=1000, help="warm tests per case")
    parser.add_argument("--loops", type=int, default=40, help="tests in an event loop of their own, per case")
    args = parser.parse_args()
    report = run(args.iterations, args.loops)
    print_table(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")
