"""Database mode against pytest-postgresql, on the same embedded server and the same template.

    .venv/bin/python benchmarks/bench_postgres_database.py [--tests 1000] [--baseline 60]

Measures, and writes to benchmarks/results/postgres_database.json:
- lease / release latency of ``isolated_postgres(mode="database", template=...)`` over N tests with
  the warm pool (a test body of a few queries and 10 ms of other work, as an integration test has);
- back-to-back tests with an empty body (throughput bounded by how fast clones are made) and the
  sustained clones/s of the warm pool;
- template build (first run) and second-run startup, each in a fresh process;
- pytest-postgresql's per-test cost (its DatabaseJanitor clone + psycopg connect + drop, exactly what
  its ``postgresql`` fixture does) on the same template content.
Targets (issue 3): lease p50 <= 1 ms, p95 <= 5 ms, >= 20x faster per test than pytest-postgresql.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from isolated_env import isolated_postgres
from isolated_env._contract import current_settings
from isolated_env._servers.postgres import PostgresServer, ensure_server
from isolated_env.resources.postgres import (
    PostgresTemplate,
    build_template,
    settle,
    warm_pool_statistics,
)

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "postgres_database.json"

# A modest application schema: a dozen tables, indexes, a function, some seed rows.
SCHEMA = "\n".join(
    [
        f"""
        CREATE TABLE t{i} (
            id bigserial PRIMARY KEY,
            owner_id bigint,
            name text NOT NULL,
            payload jsonb DEFAULT '{{}}',
            created_at timestamptz DEFAULT now()
        );
        CREATE INDEX t{i}_owner ON t{i} (owner_id);
        CREATE INDEX t{i}_name ON t{i} (lower(name));
        INSERT INTO t{i} (owner_id, name) SELECT g % 10, 'row ' || g FROM generate_series(1, 200) g;
        """
        for i in range(12)
    ]
    + ["CREATE FUNCTION touch(x bigint) RETURNS bigint LANGUAGE sql AS $$ SELECT x + 1 $$;"]
)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": round(pct(samples, 0.50), 3),
        "p95_ms": round(pct(samples, 0.95), 3),
        "p99_ms": round(pct(samples, 0.99), 3),
        "max_ms": round(max(samples), 3) if samples else 0.0,
        "mean_ms": round(statistics.fmean(samples), 3) if samples else 0.0,
    }


async def run_tests(template: PostgresTemplate, n: int, body_sleep: float) -> dict[str, Any]:
    lease: list[float] = []
    release: list[float] = []
    started = time.perf_counter()
    capacity = current_settings().capacity  # the profile's, as a test would get it
    for _ in range(n):
        cm = isolated_postgres(mode="database", template=template)
        t0 = time.perf_counter()
        async with cm as db:
            t1 = time.perf_counter()
            await db.execute("INSERT INTO t0 (owner_id, name) VALUES (1, 'bench')")
            await db.fetchval("SELECT count(*) FROM t0 WHERE owner_id = 1")
            if body_sleep:
                await anyio.sleep(body_sleep)
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        lease.append((t1 - t0) * 1000)
        release.append((t3 - t2) * 1000)
    elapsed = time.perf_counter() - started
    await settle()
    stats = [s for s in await warm_pool_statistics() if s.template == template.database_name]
    return {
        "tests": n,
        "capacity": capacity,
        "body_sleep_ms": body_sleep * 1000,
        "lease": summary(lease),
        "release": summary(release),
        "foreground_per_test_ms": round(statistics.fmean(lease) + statistics.fmean(release), 3),
        "tests_per_s": round(n / elapsed, 1),
        "starved_leases": sum(s.starved for s in stats),
        "warm_pool_errors": sum(s.errors for s in stats),
    }


async def sustained_clones(template: PostgresTemplate, seconds: float) -> dict[str, Any]:
    """Back-to-back leases with no body: every lease needs a new clone, so this is the clone rate."""
    before = {s.template: s.clones for s in await warm_pool_statistics()}
    count = 0
    lease: list[float] = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        async with isolated_postgres(mode="database", template=template):
            lease.append((time.perf_counter() - t0) * 1000)
        count += 1
    elapsed = time.perf_counter() - started
    await settle()
    after = [s for s in await warm_pool_statistics() if s.template == template.database_name]
    clones = sum(s.clones for s in after) - before.get(template.database_name, 0)
    return {
        "seconds": round(elapsed, 2),
        "tests_per_s": round(count / elapsed, 1),
        "clones_per_s": round(clones / elapsed, 1),
        "clone_p50_ms": round(after[0].clone_p50_ms, 2) if after else 0.0,
        "lease_when_starved": summary(lease),
    }


_STARTUP = """
import anyio, json, sys, time
t0 = time.perf_counter()
from isolated_env import isolated_postgres
from isolated_env.resources.postgres import PostgresTemplate

async def main():
    sql = open(sys.argv[2]).read()
    template = PostgresTemplate(name=sys.argv[1], sql=sql)
    t1 = time.perf_counter()
    async with isolated_postgres(mode="database", template=template) as db:
        t2 = time.perf_counter()
        await db.fetchval("SELECT count(*) FROM t0")
    print(json.dumps({"import_ms": (t1 - t0) * 1000, "first_handle_ms": (t2 - t1) * 1000}))

anyio.run(main)
"""


def fresh_process_startup(name: str, sql_file: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _STARTUP, name, str(sql_file)], capture_output=True, text=True, check=True
    )
    return {k: round(v, 1) for k, v in json.loads(out.stdout).items()}


def pytest_postgresql_per_test(server: PostgresServer, sql_file: Path, n: int) -> dict[str, Any]:
    """What pytest-postgresql's ``postgresql`` fixture does per test, through its own janitor API."""
    import psycopg
    from pytest_postgresql.janitor import DatabaseJanitor

    common = {"user": server.user, "host": server.host, "port": server.port, "password": server.password}
    template_name = f"pgpy_tpl_{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    template = DatabaseJanitor(dbname=template_name, as_template=True, **common)  # type: ignore[arg-type]
    template.init()
    template.load(sql_file)
    build_ms = (time.perf_counter() - t0) * 1000
    per_test: list[float] = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            janitor = DatabaseJanitor(
                dbname=f"pgpy_test_{i}", template_dbname=template_name, **common  # type: ignore[arg-type]
            )
            with janitor:  # init(): CREATE DATABASE … TEMPLATE …; exit: drop()
                conn = psycopg.connect(
                    dbname=f"pgpy_test_{i}", user=server.user, password=server.password, host=server.host,
                    port=server.port,
                )
                try:
                    with conn.cursor() as cur:
                        cur.execute("INSERT INTO t0 (owner_id, name) VALUES (1, 'bench')")
                        cur.execute("SELECT count(*) FROM t0 WHERE owner_id = 1")
                        cur.fetchone()
                    conn.commit()
                finally:
                    conn.close()
            per_test.append((time.perf_counter() - t0) * 1000)
    finally:
        template.drop()
    return {"template_build_ms": round(build_ms, 1), "per_test": summary(per_test)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = current_settings()
    server = await ensure_server(settings)
    run = uuid.uuid4().hex[:8]
    template = PostgresTemplate(name=f"bench-{run}", sql=SCHEMA)
    with tempfile.TemporaryDirectory() as tmp:
        sql_file = Path(tmp) / "schema.sql"
        sql_file.write_text(SCHEMA)
        os.chmod(tmp, 0o755)

        # Startup in fresh processes: the first builds the template, the second finds it built.
        # (This process keeps the embedded server up between them, as `isolated-env up` would.)
        startup_name = f"bench-start-{run}"
        first_run = await anyio.to_thread.run_sync(fresh_process_startup, startup_name, sql_file)
        second_run = await anyio.to_thread.run_sync(fresh_process_startup, startup_name, sql_file)

        build = await build_template(server, template)
        reuse_probe = PostgresTemplate(name=f"bench-{run}", sql=SCHEMA)
        from isolated_env.resources.postgres import templates as mod

        mod._templates.clear()  # as a new process would: look the template up on the server
        t0 = time.perf_counter()
        reused = await build_template(server, reuse_probe)
        reuse_ms = (time.perf_counter() - t0) * 1000
        assert build.built and not reused.built

        # Warm up: first lease waits for the pool's first clones.
        async with isolated_postgres(mode="database", template=template):
            pass
        await anyio.sleep(0.5)

        typical = await run_tests(template, args.tests, body_sleep=0.010)
        back_to_back = await sustained_clones(template, seconds=args.sustain)
        baseline = await anyio.to_thread.run_sync(pytest_postgresql_per_test, server, sql_file, args.baseline)

    ours_fg = typical["foreground_per_test_ms"]
    theirs = baseline["per_test"]["mean_ms"]
    ours_b2b = 1000 / back_to_back["tests_per_s"]
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "postgres": server.version,
            "server": server.source,
            "state_dir": str(settings.state_dir),
            "profile": settings.profile,
        },
        "template": {
            "tables": 12,
            "build_ms": round(build.ms, 1),
            "reuse_lookup_ms": round(reuse_ms, 2),
            "first_run_startup": first_run,
            "second_run_startup": second_run,
        },
        "warm_pool_typical_tests": typical,
        "back_to_back_empty_tests": back_to_back,
        "pytest_postgresql": baseline,
        "speedup": {
            "per_test_foreground": round(theirs / ours_fg, 1),
            "per_test_back_to_back": round(theirs / ours_b2b, 1),
        },
        "targets": {
            "lease_p50_le_1ms": typical["lease"]["p50_ms"] <= 1.0,
            "lease_p95_le_5ms": typical["lease"]["p95_ms"] <= 5.0,
            "speedup_ge_20x": theirs / ours_fg >= 20,
        },
    }
    await settle()
    startup_template = PostgresTemplate(name=startup_name, sql=SCHEMA)
    await _drop_templates(server, [template.database_name, startup_template.database_name])
    return result


async def _drop_templates(server: PostgresServer, names: list[str]) -> None:
    import asyncpg

    admin = await asyncpg.connect(server.dsn())
    try:
        for name in names:
            await admin.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false')
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def print_table(r: dict[str, Any]) -> None:
    t, b, tpl = r["warm_pool_typical_tests"], r["back_to_back_empty_tests"], r["template"]
    lease, release, starved = t["lease"], t["release"], b["lease_when_starved"]
    theirs = r["pytest_postgresql"]["per_test"]
    rows = [
        ("lease (warm pool)", f"p50 {lease['p50_ms']} ms · p95 {lease['p95_ms']} ms · "
         f"max {lease['max_ms']} ms over {t['tests']} tests (capacity {t['capacity']})"),
        ("release (drop in background)", f"p50 {release['p50_ms']} ms · p95 {release['p95_ms']} ms"),
        ("starved leases", f"{t['starved_leases']} of {t['tests']}"),
        ("sustained clones/s", f"{b['clones_per_s']} (clone p50 {b['clone_p50_ms']} ms, up to 4 in flight)"),
        ("back-to-back empty tests", f"{b['tests_per_s']} tests/s; lease p50 {starved['p50_ms']} ms"),
        ("pytest-postgresql per test", f"p50 {theirs['p50_ms']} ms · mean {theirs['mean_ms']} ms "
         f"over {theirs['n']} tests"),
        ("speedup per test", f"{r['speedup']['per_test_foreground']}x (test's own time), "
         f"{r['speedup']['per_test_back_to_back']}x (back-to-back wall time)"),
        ("template build / reuse", f"{tpl['build_ms']} ms / {tpl['reuse_lookup_ms']} ms"),
        ("fresh process to 1st handle", f"1st run {tpl['first_run_startup']['first_handle_ms']} ms (builds), "
         f"2nd run {tpl['second_run_startup']['first_handle_ms']} ms (reuses)"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nPostgreSQL {r['machine']['postgres']} ({r['machine']['server']}), {r['machine']['cpus']} CPUs")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("  targets: " + ", ".join(f"{k}={'PASS' if ok else 'MISS'}" for k, ok in r["targets"].items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=1000, help="tests run against the warm pool (>= 500)")
    parser.add_argument("--baseline", type=int, default=60, help="tests run with pytest-postgresql")
    parser.add_argument("--sustain", type=float, default=5.0, help="seconds of back-to-back leases")
    result = anyio.run(main, parser.parse_args())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nwritten to {RESULTS.relative_to(ROOT.parent)}")
