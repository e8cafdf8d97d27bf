"""Per-test cost of isolated_postgres (transaction mode) and isolated_redis, against the same test
written with pytest-postgresql and pytest-redis, on the same embedded servers, in one process.

    python benchmarks/bench_postgres_redis.py [--iterations 1000] [--peer-iterations 100]

Prints a table and writes benchmarks/results/postgres_redis.json. Figures are medians: these
machines are noisy, so compare the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import psycopg
import redis
from pytest_postgresql.janitor import DatabaseJanitor

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._metrics import percentile
from isolated_env._servers import postgres as pg_servers
from isolated_env._servers import redis as redis_servers

RESULTS = Path(__file__).resolve().parent / "results" / "postgres_redis.json"
SCHEMA = "CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL)"


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"n": len(s), "p50_ms": percentile(s, 0.5), "p95_ms": percentile(s, 0.95), "max_ms": s[-1]}


async def timed(fn: Callable[[], Awaitable[None]], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def main(iterations: int, peer_iterations: int) -> dict[str, Any]:
    settings = resolve()
    pg = await pg_servers.ensure_server(settings)
    rs = await redis_servers.ensure_server(settings)

    # --- ours -----------------------------------------------------------------------------
    async with ie.isolated_postgres() as probe:
        work_dsn = probe.dsn
    admin = await asyncpg.connect(work_dsn)
    await admin.execute(SCHEMA)

    async def ours_overhead_pg() -> None:
        async with ie.isolated_postgres():
            pass

    async def ours_test_pg() -> None:
        async with ie.isolated_postgres() as db:
            uid = await db.fetchval("INSERT INTO users (email) VALUES ('a@example.com') RETURNING id")
            assert await db.fetchval("SELECT email FROM users WHERE id = $1", uid) == "a@example.com"

    async def ours_overhead_redis() -> None:
        async with ie.isolated_redis():
            pass

    async def ours_test_redis() -> None:
        async with ie.isolated_redis() as r:
            await r.set("user:1", "alice")
            assert await r.get("user:1") == b"alice"

    results: dict[str, dict[str, float]] = {}
    results["isolated_postgres overhead"] = summary(await timed(ours_overhead_pg, iterations))
    results["isolated_postgres test"] = summary(await timed(ours_test_pg, iterations))
    results["isolated_redis overhead"] = summary(await timed(ours_overhead_redis, iterations))
    results["isolated_redis test"] = summary(await timed(ours_test_redis, iterations))

    # --- floors: the least any per-test isolation costs on a held connection -----------------
    async def floor_pg() -> None:  # what transaction mode does at its core
        await admin.execute("BEGIN")
        await admin.execute("ROLLBACK")

    floor_client = redis.asyncio.Redis(unix_socket_path=rs.unix_socket, password=rs.password, db=1)

    async def floor_redis() -> None:  # what a per-test database does at its core
        await floor_client.select(1)
        await floor_client.flushdb()

    results["floor: BEGIN/ROLLBACK, held connection"] = summary(await timed(floor_pg, iterations))
    results["floor: SELECT+FLUSHDB, held connection"] = summary(await timed(floor_redis, iterations))
    await floor_client.aclose()
    await admin.execute("DROP TABLE users")
    await admin.close()

    # --- peers: pytest-postgresql's per-test janitor, pytest-redis's client fixture ---------
    template = f"bench_tpl_{uuid.uuid4().hex[:8]}"
    tpl = DatabaseJanitor(user=pg.user, password=pg.password, host=pg.host, port=pg.port, dbname=template,
                         as_template=True)
    tpl.init()
    with psycopg.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=template,
                         autocommit=True) as c:
        c.execute(SCHEMA)

    def peer_pg() -> None:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        janitor = DatabaseJanitor(user=pg.user, password=pg.password, host=pg.host, port=pg.port, dbname=name,
                                  template_dbname=template)
        with janitor:
            with psycopg.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=name) as conn:
                uid = conn.execute("INSERT INTO users (email) VALUES ('a@example.com') RETURNING id").fetchone()[0]  # type: ignore[index]
                assert conn.execute("SELECT email FROM users WHERE id = %s", (uid,)).fetchone() == ("a@example.com",)

    def peer_redis() -> None:
        client = redis.Redis(unix_socket_path=rs.unix_socket, password=rs.password, db=0)
        client.set("user:1", "alice")
        assert client.get("user:1") == b"alice"
        client.flushall()
        client.close()

    async def run_sync(fn: Callable[[], None]) -> None:
        fn()

    results["pytest-postgresql test"] = summary(await timed(lambda: run_sync(peer_pg), peer_iterations, warmup=3))
    results["pytest-redis test"] = summary(await timed(lambda: run_sync(peer_redis), iterations))
    tpl.drop()

    floors = {kind: results[name]["p50_ms"] for kind, name in (
        ("postgres", "floor: BEGIN/ROLLBACK, held connection"), ("redis", "floor: SELECT+FLUSHDB, held connection"))}
    ratios = {
        "postgres: pytest-postgresql / isolated_postgres (per test)":
            results["pytest-postgresql test"]["p50_ms"] / results["isolated_postgres test"]["p50_ms"],
        "redis: pytest-redis / isolated_redis (per test)":
            results["pytest-redis test"]["p50_ms"] / results["isolated_redis test"]["p50_ms"],
        "postgres: isolated_postgres overhead / its floor":
            results["isolated_postgres overhead"]["p50_ms"] / floors["postgres"],
        "redis: isolated_redis overhead / its floor":
            results["isolated_redis overhead"]["p50_ms"] / floors["redis"],
    }
    return {
        "benchmark": "postgres_redis",
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "servers": {"postgres": pg.version, "redis": rs.version},
        "iterations": iterations,
        "peer_iterations": peer_iterations,
        "results": results,
        "ratios": ratios,
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"\nper-test cost, ms (PostgreSQL {report['servers']['postgres']}, Redis {report['servers']['redis']})")
    print(f"{'case':<40} {'n':>6} {'p50':>9} {'p95':>9} {'max':>9}")
    for name, r in report["results"].items():
        print(f"{name:<40} {r['n']:>6} {r['p50_ms']:>9.3f} {r['p95_ms']:>9.3f} {r['max_ms']:>9.3f}")
    print()
    for name, ratio in report["ratios"].items():
        print(f"{name}: {ratio:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--peer-iterations", type=int, default=100)
    args = parser.parse_args()
    report = anyio.run(main, args.iterations, args.peer_iterations)
    print_table(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")
