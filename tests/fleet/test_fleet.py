"""A fleet on one host (issue 9, item 6): four "machines", each in PID and mount namespaces of its own
(``unshare --pid --fork --mount --mount-proc``: their pids overlap, as in containers) with its own
machine identity and run id but the same hostname, each running pytest with two xdist workers
against ONE PostgreSQL, ONE Redis and ONE ClickHouse engine (the chdb adaptor) given as external
servers (TEST_*_URL), started by the test side by side. One machine's run is SIGKILLed at a random
moment.

Asserted: no test of a surviving run fails (a cross-run read, or a database dropped or flushed
under it, fails the test that sees it); no Redis database is leased to two runs at once (the logged
lease intervals); the killed run's leases (PostgreSQL and ClickHouse databases, Redis databases) are
live right after the kill (nobody may reap them yet) and everything it left is gone after one
``isolated-env prune`` once its TTL has passed.

The survivors run a few rounds each; the victim more (it is killed anyway), so it is still running
whenever the kill comes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from isolated_env._ownership import parse

ROOT = Path(__file__).resolve().parents[2]
MACHINES = 4
TTL = 3.0
ROUNDS = 4  # per kind of resource and surviving machine
pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="the fleet simulation needs unshare as root"
)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("TEST_POSTGRES", "TEST_REDIS", "TEST_CLICKHOUSE", "ISOLATED_ENV_", "PYTEST_"))}


_URLS = """
import json, anyio
from isolated_env._config import resolve
from isolated_env._servers import clickhouse, postgres, redis
async def main():
    settings = resolve()
    pg, r, ch = [await s.ensure_server(settings) for s in (postgres, redis, clickhouse)]
    print(json.dumps({"TEST_POSTGRES_URL": pg.dsn("postgres"), "TEST_REDIS_URL": r.url(0),
                      "TEST_CLICKHOUSE_URL": ch.dsn()}))
anyio.run(main)
"""


@pytest.fixture
def fleet_servers(work: Path) -> Iterator[dict[str, str]]:
    """One PostgreSQL, one Redis and one ClickHouse engine, started side by side and kept up by
    `isolated-env up` in a state directory of their own: to the machines, external servers."""
    state = work / "servers"
    state.mkdir(mode=0o711)
    env = {**_clean_env(), "PYTHONPATH": str(ROOT), "ISOLATED_ENV_STATE_DIR": str(state),
           "ISOLATED_ENV_POSTGRES_TCP": "1", "ISOLATED_ENV_REDIS_TCP": "1"}

    def cli(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    try:
        ups = [cli("-m", "isolated_env.cli", "up", kind) for kind in ("postgres", "redis", "clickhouse")]
        for up in ups:
            out = up.communicate(timeout=180)[0]
            assert up.returncode == 0, out
        found = cli("-c", _URLS)
        out = found.communicate(timeout=120)[0]
        assert found.returncode == 0, out
        yield json.loads(out.strip().splitlines()[-1])
    finally:
        down = cli("-m", "isolated_env.cli", "down", "postgres", "redis", "clickhouse")
        out = down.communicate(timeout=120)[0]
        assert down.returncode == 0 and "unpinned" not in out, out


def _machine(i: int, run: str, servers: dict[str, str], log: Path, state: Path, rounds: int) -> subprocess.Popen[bytes]:
    state.mkdir(mode=0o711)
    env = {**_clean_env(), **servers, "PYTHONPATH": str(ROOT), "FLEET_LOG": str(log),
           "ISOLATED_ENV_MACHINE_ID": f"fleetm{i}", "ISOLATED_ENV_RUN_ID": run, "ISOLATED_ENV_LEASE_TTL": str(TTL),
           "ISOLATED_ENV_STATE_DIR": str(state), "FLEET_ROUNDS": str(rounds), "ISOLATED_ENV_CAPACITY": "2"}
    # Only the plugins the workload needs: twelve interpreters start on a 2-core machine, and the
    # others installed here (Django, Hypothesis, LangSmith, ...) would double what each one imports.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    plugins = ["-p", "xdist.plugin", "-p", "anyio.pytest_plugin", "-p", "isolated_env.pytest_plugin"]
    cmd = ["unshare", "--pid", "--fork", "--mount", "--mount-proc", sys.executable, "-m", "pytest", *plugins,
           "-p", "no:cacheprovider", "-q", "-n", "2", "--no-header", f"--basetemp={state / 'tmp'}",
           "tests/fleet/workload.py"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


async def _pg_databases(dsn: str, run: str) -> dict[str, dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT datname, shobj_description(oid, 'pg_database') AS label, "
            "extract(epoch FROM clock_timestamp())::float8 AS now FROM pg_database WHERE datname LIKE $1",
            f"ie\\_%\\_{run}\\_%",
        )
    finally:
        await conn.close()
    return {r["datname"]: {**json.loads(r["label"] or "{}"), "now": r["now"]} for r in rows}


def _ch_databases(dsn: str, run: str) -> dict[str, dict[str, Any]]:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=dsn)
    try:
        rows = client.query(
            "SELECT name, comment, toFloat64(toUnixTimestamp64Milli(now64(3))) / 1000 FROM system.databases "
            "WHERE startsWith(name, {p:String})", parameters={"p": f"ie_{run}_"},
        ).result_rows
    finally:
        client.close()
    return {name: {**json.loads(comment or "{}"), "now": now} for name, comment, now in rows}


async def _redis_leases(url: str, run: str) -> dict[int, str]:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(url)
    try:
        found = {}
        async for key in client.scan_iter("ie:slot:*"):
            value = await client.get(key)
            parsed = parse(value) if value is not None else None
            if parsed is not None and parsed[0].run == run:
                found[int(key.rsplit(b":", 1)[1])] = value.decode()
        return found
    finally:
        await client.aclose()


async def _dbsize(url: str, db: int) -> int:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(url)
    client.connection_pool.connection_kwargs["db"] = db  # the URL may be a unix socket's: no /<db> to swap
    try:
        return int(await client.dbsize())
    finally:
        await client.aclose()


async def _leased(servers: dict[str, str], db: int) -> bool:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(servers["TEST_REDIS_URL"])
    try:
        return bool(await client.exists(f"ie:slot:{db}"))
    finally:
        await client.aclose()


@pytest.fixture
def work() -> Iterator[Path]:
    """The machines' state directories and the shared event log; removed however the test ends."""
    path = Path(tempfile.mkdtemp(prefix="ie-fleet-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_fleet_on_shared_servers(fleet_servers: dict[str, str], work: Path) -> None:
    shared_servers = fleet_servers
    log = work / "events.jsonl"
    salt = os.urandom(2).hex()
    runs = [f"f{i}{salt}" for i in range(MACHINES)]  # a run id is at most 8 characters
    victim = random.randrange(MACHINES)
    procs = [_machine(i, runs[i], shared_servers, log, work / f"m{i}", ROUNDS * (10 if i == victim else 1))
             for i in range(MACHINES)]
    try:
        # Kill the victim at a random moment once it holds something (its first lease is logged).
        deadline = time.monotonic() + 240  # pytest and xdist start slowly on a loaded machine
        while not any(e["run"] == runs[victim] for e in _events(log)):
            assert procs[victim].poll() is None, procs[victim].communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the victim never leased anything"
            time.sleep(0.05)
        time.sleep(random.uniform(0.2, 2.5))
        init = psutil.Process(procs[victim].pid).children()  # the namespace's pid 1: killing it kills them all
        assert init, "the victim's run ended before it could be killed; give it more rounds"
        os.kill(init[0].pid, signal.SIGKILL)
        killed_at = time.time()
        procs[victim].communicate(timeout=10)

        # Right after the kill its leases are live: nobody may reap what it left yet.
        left_pg = anyio.run(_pg_databases, shared_servers["TEST_POSTGRES_URL"], runs[victim])
        left_redis = anyio.run(_redis_leases, shared_servers["TEST_REDIS_URL"], runs[victim])
        left_ch = _ch_databases(shared_servers["TEST_CLICKHOUSE_URL"], runs[victim])
        assert left_pg or left_redis or left_ch, "the victim left nothing to reap: the check below would prove nothing"
        ended = {n: label for n, label in {**left_pg, **left_ch}.items()
                 if "ie" in label and label.get("exp", 0) <= label["now"]}
        assert not ended, f"leases of the victim ended before its TTL: {ended}"

        outputs = {}
        for i, proc in enumerate(procs):
            if i != victim:
                outputs[i] = proc.communicate(timeout=120)[0].decode()
                assert proc.returncode == 0, f"machine {i} (run {runs[i]}) failed:\n{outputs[i][-4000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                for child in psutil.Process(proc.pid).children():
                    child.kill()
                proc.kill()
            proc.communicate()

    events = _events(log)
    # No Redis database leased to two runs at once.
    spans: dict[int, list[tuple[float, float, str]]] = {}
    opened: dict[tuple[str, int], float] = {}
    for e in events:
        if e["kind"] == "redis":
            if "start" in e:
                opened[(e["mark"], e["name"])] = e["start"]
            elif (e["mark"], e["name"]) in opened:
                spans.setdefault(e["name"], []).append((opened.pop((e["mark"], e["name"])), e["end"], e["run"]))
    for db, items in spans.items():
        items.sort()
        held_until, holder = 0.0, ""
        for start, end, run in items:
            assert start >= held_until, f"Redis database {db} was leased by {holder} and {run} at once"
            if end > held_until:
                held_until, holder = end, run
    assert sum(len(v) for v in spans.values()) >= (MACHINES - 1) * ROUNDS
    done = {(e["kind"], e["run"]) for e in events if "end" in e}
    assert {(kind, run) for kind in ("pg_db", "pg_tx", "redis", "ch") for run in runs if run != runs[victim]} <= done

    # Once its TTL has passed, one prune (from a machine of its own) removes all the victim left.
    wait = killed_at + TTL + 0.5 - time.time()
    if wait > 0:
        time.sleep(wait)
    env = {**_clean_env(), **shared_servers, "PYTHONPATH": str(ROOT), "ISOLATED_ENV_MACHINE_ID": "janitor",
           "ISOLATED_ENV_STATE_DIR": str(work / "janitor")}
    (work / "janitor").mkdir(mode=0o711)
    pruned = subprocess.run([sys.executable, "-m", "isolated_env.cli", "prune"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert anyio.run(_pg_databases, shared_servers["TEST_POSTGRES_URL"], runs[victim]) == {}, pruned.stdout
    assert anyio.run(_redis_leases, shared_servers["TEST_REDIS_URL"], runs[victim]) == {}
    assert _ch_databases(shared_servers["TEST_CLICKHOUSE_URL"], runs[victim]) == {}, pruned.stdout
    for db in left_redis:  # a database whose lease ended is free, and prune flushed it (or it was leased again)
        assert anyio.run(_dbsize, shared_servers["TEST_REDIS_URL"], db) == 0 or anyio.run(_leased, shared_servers, db)
    # The survivors cleaned up after themselves.
    for i, run in enumerate(runs):
        if i != victim:
            assert anyio.run(_pg_databases, shared_servers["TEST_POSTGRES_URL"], run) == {}, f"run {run} left databases"
            assert _ch_databases(shared_servers["TEST_CLICKHOUSE_URL"], run) == {}, f"run {run} left databases"
