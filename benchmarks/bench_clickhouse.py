"""What isolated_clickhouse() costs: adaptor startup and memory, per-test lease + release.

    .venv/bin/python benchmarks/bench_clickhouse.py [--leases 500] [--starts 5]

Starts its own embedded server (chdb behind the adaptor) in a private state directory, so the
figures do not depend on a server another run left warm. Prints a table and writes
``benchmarks/results/clickhouse.json``.

A ``SELECT 1`` round trip is set against its floors, measured in this process in the same rounds
(one of each in turn, so the machine's load weighs on all alike): chdb's own query on a connection
of this process, and an HTTP round trip with clickhouse-connect's transport (aiohttp) to a bare
uvicorn + httptools server in a process of its own that answers ``1``. Their sum is the floor; a
thread hop (``anyio.to_thread``, which the adaptor takes to run the engine and clickhouse-connect
takes to parse a reply) is measured too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
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


# A bare HTTP server: uvicorn + httptools (as the adaptor), answering every request with "1\n".
# The socket is made with IPPROTO_TCP so that asyncio sets TCP_NODELAY on what it accepts (as on
# the adaptor's inherited socket): without it, Nagle's algorithm and delayed ACKs add 40 ms.
_ECHO = """
import socket, sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"1\\n"})
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, http="httptools", lifespan="off", log_level="warning", access_log=False,
                              server_header=False, date_header=False, ws="none")).run(sockets=[sock])
"""


async def interleaved(cases: dict[str, Callable[[], Awaitable[Any]]], rounds: int) -> dict[str, list[float]]:
    """Each case once per round, in turn: the load of the machine weighs on every case alike."""
    for fn in cases.values():
        for _ in range(20):
            await fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            await fn()
            samples[name].append((time.perf_counter() - t0) * 1000)
    return samples


@contextmanager
def floor_servers(state_dir: Path) -> Iterator[tuple[str, Any]]:
    """The bare HTTP server's URL and a chdb connection of this process (its own engine)."""
    import chdb

    echo = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True)
    conn = chdb.connect(tempfile.mkdtemp(prefix="chdb-floor-", dir=state_dir))
    try:
        assert echo.stdout is not None
        yield f"http://127.0.0.1:{int(echo.stdout.readline())}/", conn
    finally:
        conn.close()
        echo.kill()
        echo.wait()


async def measure_select_1(ch: Any, admin: Any, floors: tuple[str, Any], rounds: int) -> dict[str, Any]:
    """``SELECT 1`` through the test's client and the admin client, against the floors (module doc)."""
    import aiohttp
    import anyio.to_thread

    echo_url, conn = floors
    async with aiohttp.ClientSession() as http:

        async def handle() -> None:
            await ch.command("SELECT 1")

        async def admin_client() -> None:
            await admin.command("SELECT 1")

        async def bare_http() -> None:
            async with http.post(echo_url, data=b"SELECT 1") as reply:
                await reply.read()

        async def engine() -> None:
            conn.query("SELECT 1", "TabSeparated").bytes()

        async def hop() -> None:
            await anyio.to_thread.run_sync(int)

        got = await interleaved({"handle": handle, "admin": admin_client, "http": bare_http,
                                 "engine": engine, "hop": hop}, rounds)
    med = statistics.median
    floor = med(got["http"]) + med(got["engine"])
    return {
        "select_1_round_trip_ms": _summary(got["handle"]),
        "select_1_floors_ms": {
            "admin_client_no_session": _summary(got["admin"]),
            "bare_http_round_trip": _summary(got["http"]),
            "chdb_query_in_process": _summary(got["engine"]),
            "thread_hop": _summary(got["hop"]),
            "floor_p50": round(floor, 3),
            "ratio_to_floor_p50": round(med(got["handle"]) / floor, 2),
            "floor_plus_two_hops_p50": round(floor + 2 * med(got["hop"]), 3),
        },
    }


async def concurrent_rounds(concurrency: int, rounds: int, *, leak_check: bool = True) -> list[float]:
    """``rounds`` rounds of ``concurrency`` environments at once, lease + release each."""
    from isolated_env import Environment
    from isolated_env.resources.clickhouse import isolated_clickhouse

    samples: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter()
        async with Environment(capacity=concurrency, leak_check=leak_check) as env:
            await env.enter(isolated_clickhouse())
        samples.append((time.perf_counter() - t0) * 1000)

    for _ in range(rounds):
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(one)
    return samples


async def sequential_rounds(concurrency: int, rounds: int) -> list[float]:
    """A round's floor: the same ``concurrency`` environments one after another, timed as one (the
    event loop runs the tasks of a concurrent round on one thread: its last task waits for all)."""
    from isolated_env import Environment
    from isolated_env.resources.clickhouse import isolated_clickhouse

    samples: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(concurrency):
            async with Environment(capacity=concurrency) as env:
                await env.enter(isolated_clickhouse())
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def _unspared() -> int:
    """Releases so far that found no spare database (each waited for a look or for DDL)."""
    from isolated_env._runtime import current_runtime
    from isolated_env.resources._clickhouse_slots import _Slots

    return sum(o.unspared for o in (await current_runtime()).objects.values() if isinstance(o, _Slots))


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
    from isolated_env.resources._clickhouse_slots import connect
    from isolated_env.resources.clickhouse import isolated_clickhouse, settle

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

    # A release after a test that made a table: the slot moves to a spare, the old one is dropped
    # in the background (settled outside the timing).
    dirty: list[float] = []
    for _ in range(min(leases, 200)):
        cm = isolated_clickhouse()
        ch = await cm.__aenter__()
        await ch.command("CREATE TABLE t (a UInt8) ENGINE = Memory")
        t0 = time.perf_counter()
        await cm.__aexit__(None, None, None)
        dirty.append((time.perf_counter() - t0) * 1000)
        await settle()

    breakdown = await measure_breakdown(server, min(leases, 200))

    # Concurrent tests: `concurrency` environments at once, lease + release each. The first round
    # makes the slots (a cold pool); the rounds right after it run while the background work makes
    # each slot's spare databases; once that is done (settle), the pool is warm.
    rounds = max(1, leases // concurrency // 2)
    cold_concurrent = await concurrent_rounds(concurrency, 1)
    before = await _unspared()
    warming = await concurrent_rounds(concurrency, rounds)
    warming_unspared = await _unspared() - before
    await settle()
    before = await _unspared()
    concurrent = await concurrent_rounds(concurrency, rounds)
    warm_unspared = await _unspared() - before
    await settle()
    in_a_row = await sequential_rounds(concurrency, rounds)
    await settle()
    # As the pytest plugin's per-test environments run: without the process snapshots of a leak check.
    unchecked = await concurrent_rounds(concurrency, rounds, leak_check=False)

    # Last: the floors start chdb's engine in this process, and with it running (its background
    # work) the rounds above measured 4-10x slower.
    admin = await connect(server, server.database)
    try:
        async with isolated_clickhouse() as ch:
            with floor_servers(Path(os.environ["ISOLATED_ENV_STATE_DIR"])) as floors:
                select = await measure_select_1(ch, admin, floors, min(leases, 500))
    finally:
        await admin.close()

    return {
        "first_lease_in_process_ms": round(first_ms, 3),
        "lease_ms": _summary(enter),
        "release_ms": _summary(exit_),
        "lease_plus_release_ms": _summary(total),
        "concurrent_lease_plus_release_ms": {
            **_summary(concurrent), "concurrency": concurrency, "releases_without_a_spare": warm_unspared,
            "floor_one_after_another_p50_ms": round(statistics.median(in_a_row), 3),
            "p95_to_floor": round(_pct(concurrent, 0.95) / statistics.median(in_a_row), 2),
        },
        "concurrent_without_leak_check_ms": {**_summary(unchecked), "concurrency": concurrency},
        "concurrent_right_after_first_round_ms": {
            **_summary(warming), "concurrency": concurrency, "releases_without_a_spare": warming_unspared,
        },
        "concurrent_first_round_ms": {**_summary(cold_concurrent), "concurrency": concurrency},
        "release_after_a_table_ms": _summary(dirty),
        "breakdown_ms": breakdown,
        "test_with_table_insert_select_ms": _summary(work),
        **select,
        "adaptor_rss_after_load_mb": _rss_mb(server.pid),
        "server": {"engine": server.engine, "version": server.version},
    }


async def measure_breakdown(server: Any, n: int) -> dict[str, Any]:
    """Where a swap's time goes: the HTTP hop (a SELECT 1 round trip on the admin client), and the
    engine DDL of the swap (CREATE DATABASE, DROP DATABASE SYNC) as round trips; engine = DDL - hop."""
    from isolated_env.resources._clickhouse_slots import connect

    admin = await connect(server, server.database)
    hop: list[float] = []
    create: list[float] = []
    drop: list[float] = []
    check: list[float] = []
    try:
        for i in range(n):
            name = f"ie_bench_{os.getpid()}_{i}"
            t0 = time.perf_counter()
            await admin.command("SELECT 1")
            t1 = time.perf_counter()
            await admin.command(f"CREATE DATABASE {name}", use_database=False)
            t2 = time.perf_counter()
            await admin.query(
                "SELECT comment, (SELECT count() FROM system.tables WHERE database = {db:String}) "
                "FROM system.databases WHERE name = {db:String}",
                parameters={"db": name},
            )
            t3 = time.perf_counter()
            await admin.command(f"DROP DATABASE {name} SYNC", use_database=False)
            t4 = time.perf_counter()
            hop.append((t1 - t0) * 1000)
            create.append((t2 - t1) * 1000)
            check.append((t3 - t2) * 1000)
            drop.append((t4 - t3) * 1000)
    finally:
        await admin.close()
    med = statistics.median
    return {
        "http_hop_select_1": _summary(hop),
        "create_database": _summary(create),
        "drop_database_sync": _summary(drop),
        "untouched_check_select": _summary(check),
        "engine_share_of_create_p50": round(med(create) - med(hop), 3),
        "engine_share_of_drop_p50": round(med(drop) - med(hop), 3),
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
    load_before = os.getloadavg()
    try:
        startup, idle_rss = measure_startup(state_dir, args.starts)
        leases = anyio.run(measure_leases, args.leases, args.concurrency)
    finally:
        from isolated_env._servers import clickhouse as servers
        from isolated_env._servers import registry

        registry.release("clickhouse", state_dir)
        servers.forget()
        shutil.rmtree(state_dir, ignore_errors=True)

    load_after = os.getloadavg()
    result = {
        "command": " ".join(["python benchmarks/bench_clickhouse.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        },
        # 1/5/15-minute load averages before and after the run: the figures mean little without them.
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "adaptor_startup_ms": _summary(startup),
        "adaptor_rss_idle_mb": idle_rss,
        **leases,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    floors = result["select_1_floors_ms"]
    rows = [
        ("adaptor startup (cold: python + chdb + first query)", result["adaptor_startup_ms"]),
        ("lease (warm pool)", result["lease_ms"]),
        ("release, the test made nothing", result["release_ms"]),
        ("release after a test made a table", result["release_after_a_table_ms"]),
        ("lease + release, one at a time", result["lease_plus_release_ms"]),
        (f"lease + release, {args.concurrency} at once (warm: spares made)",
         result["concurrent_lease_plus_release_ms"]),
        ("  the same, without leak check (as the pytest plugin)", result["concurrent_without_leak_check_ms"]),
        (f"lease + release, {args.concurrency} at once (rounds after the first)",
         result["concurrent_right_after_first_round_ms"]),
        (f"lease + release, {args.concurrency} at once (first round)", result["concurrent_first_round_ms"]),
        ("test: table + insert 100 rows + select", result["test_with_table_insert_select_ms"]),
        ("SELECT 1 round trip (the test's client)", result["select_1_round_trip_ms"]),
        ("  floor: chdb's own query, in this process", floors["chdb_query_in_process"]),
        ("  floor: bare HTTP round trip (aiohttp, uvicorn)", floors["bare_http_round_trip"]),
        ("  a thread hop (anyio.to_thread)", floors["thread_hop"]),
        ("  SELECT 1, admin client (no session)", floors["admin_client_no_session"]),
        ("  breakdown: HTTP hop (admin SELECT 1)", result["breakdown_ms"]["http_hop_select_1"]),
        ("  breakdown: CREATE DATABASE round trip", result["breakdown_ms"]["create_database"]),
        ("  breakdown: DROP DATABASE SYNC round trip", result["breakdown_ms"]["drop_database_sync"]),
        ("  breakdown: untouched check (one SELECT)", result["breakdown_ms"]["untouched_check_select"]),
        ("  breakdown: adaptor start, process to ready", result["adaptor_startup_ms"]),
    ]
    load = result["load_average"]
    print(f"load average (1, 5, 15 min): {load['before']} before, {load['after']} after, {os.cpu_count()} CPUs")
    print(f"{'isolated_clickhouse (chdb adaptor)':<52} {'n':>5} {'p50 ms':>9} {'p95 ms':>9}")
    for label, s in rows:
        print(f"{label:<52} {s['n']:>5} {s['p50_ms']:>9.2f} {s['p95_ms']:>9.2f}")
    print(f"SELECT 1: p50 {result['select_1_round_trip_ms']['p50_ms']:.2f} ms = {floors['ratio_to_floor_p50']}x "
          f"its floor ({floors['floor_p50']:.2f} ms: chdb's query + a bare HTTP round trip); floor + the two "
          f"thread hops (adaptor, clickhouse-connect): {floors['floor_plus_two_hops_p50']:.2f} ms")
    warm = result["concurrent_lease_plus_release_ms"]
    print(f"{args.concurrency} at once, warm: p95 {warm['p95_ms']:.2f} ms = {warm['p95_to_floor']}x the floor of a "
          f"round ({warm['floor_one_after_another_p50_ms']:.2f} ms: the same {args.concurrency} one after another)")
    for key in ("concurrent_lease_plus_release_ms", "concurrent_right_after_first_round_ms"):
        print(f"{key}: {result[key]['releases_without_a_spare']} of {result[key]['n']} releases found no spare")
    first = result["first_lease_in_process_ms"]
    print(f"{'first lease of the process (imports, clients)':<52} {'':>5} {first:>9.2f}")
    print(f"adaptor RSS: {idle_rss} MB idle, {result['adaptor_rss_after_load_mb']} MB after the run")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
