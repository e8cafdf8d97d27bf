"""A class of 40 tests over 2,000 seed rows: what the class's data costs per test, by how it is had.

    python benchmarks/bench_scopes.py [--tests 40] [--rows 2000]

- ``class scope, savepoint``: the rows loaded once into the class's outer transaction
  (``environment_fixture(scope="class")``, transaction mode); each test is a savepoint rolled back.
- ``class scope, clone``: the same in database mode; each test gets a clone of the class's database.
- ``reload per test (executemany)`` / ``(COPY)``: a function-scoped fixture loading the rows into
  every test's own transaction, by INSERTs as most fixtures do, and by the fastest bulk path.
- ``template per test (pytest-postgresql)``: pytest-postgresql's ``DatabaseJanitor`` making each
  test's database from a template holding the rows (CREATE DATABASE … TEMPLATE, then DROP), when
  pytest-postgresql is importable; our own clone-per-test from a seeded template (database mode's
  warm pool) is measured next to it either way.

Every test runs the same body: two reads of the seed and one write. One run, in one process, on
the embedded server; prints a table and writes benchmarks/results/scopes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._servers import postgres as pg_servers

RESULTS = Path(__file__).resolve().parent / "results" / "scopes.json"
SCHEMA_SQL = "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, plan text NOT NULL)"
SCHEMA = ie.PostgresTemplate(sql=SCHEMA_SQL)


def _rows(n: int) -> list[tuple[int, str, str]]:
    return [(i, f"user{i}@example.com", "pro" if i % 3 else "free") for i in range(n)]


async def _body(db: Any, n: int, rows: int) -> None:
    assert await db.fetchval("SELECT count(*) FROM users") == rows
    assert await db.fetchval("SELECT email FROM users WHERE id = $1", n % rows) == f"user{n % rows}@example.com"
    await db.execute("UPDATE users SET plan = 'team' WHERE id = $1", n % rows)


async def _timed(tests: int, one: Callable[[int], Awaitable[None]]) -> list[float]:
    out = []
    for n in range(tests):
        started = time.perf_counter()
        await one(n)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def class_scope(mode: str, tests: int, rows: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    async with ie.Environment() as env:
        db = await env.enter(ie.isolated_postgres(mode=mode, template=SCHEMA))
        await db.executemany("INSERT INTO users VALUES ($1, $2, $3)", _rows(rows))
        class_setup = (time.perf_counter() - started) * 1000

        async def one(n: int) -> None:
            async with env.nest() as inner:
                await _body(inner["database"], n, rows)

        return class_setup, await _timed(tests, one)


async def reload_per_test(how: str, tests: int, rows: int) -> list[float]:
    data = _rows(rows)

    async def one(n: int) -> None:
        async with ie.isolated_postgres(template=SCHEMA) as db:
            if how == "copy":
                await db.copy_records_to_table("users", records=data)
            else:
                await db.executemany("INSERT INTO users VALUES ($1, $2, $3)", data)
            await _body(db, n, rows)

    return await _timed(tests, one)


async def our_template_per_test(tests: int, rows: int) -> list[float]:
    async def seed(conn: Any) -> None:
        await conn.executemany("INSERT INTO users VALUES ($1, $2, $3)", _rows(rows))

    seeded = ie.PostgresTemplate(sql=SCHEMA_SQL, setup=seed)
    async with ie.isolated_postgres(mode="database", template=seeded):  # the template is built once, untimed
        pass

    async def one(n: int) -> None:
        async with ie.isolated_postgres(mode="database", template=seeded) as db:
            await _body(db, n, rows)

    return await _timed(tests, one)


async def pytest_postgresql_template(tests: int, rows: int) -> list[float] | None:
    try:
        from pytest_postgresql.janitor import DatabaseJanitor
    except ImportError:
        return None
    import asyncpg

    server = await pg_servers.ensure_server(resolve())
    common = {"user": server.user, "host": server.host, "port": server.port, "password": server.password}
    template = f"bench_scopes_tpl_{os.getpid()}"
    janitor = DatabaseJanitor(dbname=template, as_template=False, **common)
    await anyio.to_thread.run_sync(janitor.init)
    try:
        conn = await asyncpg.connect(**server.connect_kwargs(template))
        try:
            await conn.execute(SCHEMA_SQL)
            await conn.executemany("INSERT INTO users VALUES ($1, $2, $3)", _rows(rows))
        finally:
            await conn.close()

        async def one(n: int) -> None:
            name = f"bench_scopes_{os.getpid()}_{n}"
            test = DatabaseJanitor(dbname=name, template_dbname=template, **common)
            await anyio.to_thread.run_sync(test.init)
            try:
                db = await asyncpg.connect(**server.connect_kwargs(name))
                try:
                    await _body(db, n, rows)
                finally:
                    await db.close()
            finally:
                await anyio.to_thread.run_sync(test.drop)

        return await _timed(tests, one)
    finally:
        await anyio.to_thread.run_sync(janitor.drop)


def _row(name: str, per_test: list[float], setup_ms: float = 0.0) -> dict[str, Any]:
    total = setup_ms + sum(per_test)
    return {"variant": name, "class_setup_ms": round(setup_ms, 2),
            "per_test_p50_ms": round(statistics.median(per_test), 3),
            "per_test_p95_ms": round(sorted(per_test)[int(len(per_test) * 0.95) - 1], 3),
            "class_total_ms": round(total, 1)}


async def main(tests: int, rows: int) -> dict[str, Any]:
    # Warm up what every variant shares (server start, template builds, pooled connections), untimed.
    await class_scope("transaction", 2, rows)
    await reload_per_test("copy", 2, rows)
    table = []
    setup, per_test = await class_scope("transaction", tests, rows)
    table.append(_row("class scope, savepoint (transaction mode)", per_test, setup))
    setup, per_test = await class_scope("database", tests, rows)
    table.append(_row("class scope, clone of the class's database", per_test, setup))
    table.append(_row("reload per test (executemany)", await reload_per_test("executemany", tests, rows)))
    table.append(_row("reload per test (COPY)", await reload_per_test("copy", tests, rows)))
    janitor = await pytest_postgresql_template(tests, rows)
    if janitor is not None:
        table.append(_row("template per test (pytest-postgresql DatabaseJanitor)", janitor))
    ours = await our_template_per_test(tests, rows)
    table.append(_row("template per test (isolated_env database mode, warm pool)", ours))
    base = next(r["class_total_ms"] for r in table if r["variant"] == "reload per test (executemany)")
    for r in table:
        r["speedup_vs_reload_executemany"] = round(base / r["class_total_ms"], 1)
    return {
        "machine": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "tests": tests, "rows": rows, "pytest_postgresql": janitor is not None, "results": table,
    }


def _print(result: dict[str, Any]) -> None:
    print(f"{result['tests']} tests over {result['rows']} seed rows, load {result['load_average'][0]:.2f}")
    print(f"{'variant':60} {'setup ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'class ms':>9} {'speedup':>8}")
    for r in result["results"]:
        print(f"{r['variant']:60} {r['class_setup_ms']:9.1f} {r['per_test_p50_ms']:8.2f} {r['per_test_p95_ms']:8.2f} "
              f"{r['class_total_ms']:9.1f} {r['speedup_vs_reload_executemany']:7.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=40)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    outcome = anyio.run(main, args.tests, args.rows)
    _print(outcome)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(outcome, indent=2) + "\n")
