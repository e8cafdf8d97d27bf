"""Server-side leases on an external server (issue 9, item 2), against the embedded PostgreSQL and
Redis named by TEST_*_URL: a lease is renewed by the heartbeat, only an ended lease (or a provably
dead local owner) is reaped, and a lost lease fails the test that holds it."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._drivers import asyncpg as driver
from isolated_env._drivers import redis as redis_driver
from isolated_env._ownership import Owner, Scope, me, parse
from isolated_env._servers import postgres as pg_servers
from isolated_env._servers import redis as redis_servers
from isolated_env.resources import redis as redis_resource
from isolated_env.resources.postgres import leases
from isolated_env.resources.postgres.janitor import prune
from isolated_env.resources.postgres.labels import disown_server
from isolated_env.resources.postgres.sql import quote_ident, quote_literal

TTL = 3.0
LABEL = "from isolated_env._ownership import me; print(me().label())"


@pytest.fixture
async def external(
    clean_environ: pytest.MonkeyPatch, shared_servers: dict[str, str]
) -> AsyncIterator[tuple[Any, Any]]:
    """A PostgreSQL of this module's own named by TEST_POSTGRES_URL (so: external, leased) with a
    short TTL, and an admin connection to it."""
    clean_environ.setenv("TEST_POSTGRES_URL", shared_servers["TEST_POSTGRES_URL"])
    clean_environ.setenv("ISOLATED_ENV_LEASE_TTL", str(TTL))
    server = await pg_servers.ensure_server(resolve())
    assert server.source == "external"
    admin = await driver.connect(server)
    _used.append(server)
    try:
        yield server, admin
    finally:
        await driver.close(admin)


_used: list[Any] = []


@pytest.fixture(scope="module", autouse=True)
def _forget_the_server(shared_servers: dict[str, str]) -> Iterator[None]:
    """The module's server stops with it: what this process still owns there (its work database,
    warm clones) is forgotten first, so no heartbeat goes on knocking on a server that is gone."""
    yield
    for server in _used:
        disown_server(server)


async def _label(admin: Any, name: str) -> dict[str, Any]:
    raw = await admin.fetchval(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", name
    )
    return dict(json.loads(raw))


async def test_the_heartbeat_renews_the_lease(external: tuple[Any, Any]) -> None:
    _server, admin = external
    async with ie.isolated_postgres(mode="database") as db:
        first = await _label(admin, db.database)
        parsed = parse(first)
        assert parsed is not None and parsed[0] == me()
        now = await admin.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
        assert now < first["exp"] <= now + TTL + 0.5
        await anyio.sleep(TTL)
        second = await _label(admin, db.database)
        assert second["exp"] > first["exp"] and second["mode"] == "database"
    # Transaction mode's work database is leased the same way.
    async with ie.isolated_postgres() as tx:
        work = await tx.fetchval("SELECT current_database()")
        assert "exp" in await _label(admin, work)


async def test_a_bad_setting_for_a_while_does_not_stop_the_renewals(
    external: tuple[Any, Any], clean_environ: pytest.MonkeyPatch
) -> None:
    """The heartbeat thread reads the TTL on every beat: a bad ISOLATED_ENV_LEASE_TTL set meanwhile
    keeps the last good TTL there (taking a new lease would report it), and the thread goes on."""
    _server, admin = external
    async with ie.isolated_postgres(mode="database") as db:
        first = await _label(admin, db.database)
        clean_environ.setenv("ISOLATED_ENV_LEASE_TTL", "soon")
        await anyio.sleep(TTL + 1)  # longer than the TTL: only renewals keep the lease
        clean_environ.setenv("ISOLATED_ENV_LEASE_TTL", str(TTL))
        now = await admin.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
        renewed = await _label(admin, db.database)
        assert renewed["exp"] > first["exp"] and renewed["exp"] > now, (first, renewed, now)
        assert leases.lost(db.database) is None
        assert await db.fetchval("SELECT 1") == 1


def _foreign(run: str, pid: int = 999_999, start: int = 0) -> Owner:
    return Owner("0therm4chine", me().pidns, pid, start, run)


async def _create(admin: Any, name: str, label: str | None) -> None:
    await admin.execute(f"CREATE DATABASE {quote_ident(name)}")
    if label is not None:
        await admin.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(label)}")


async def test_only_ended_leases_are_reaped(external: tuple[Any, Any]) -> None:
    server, admin = external
    run = "zq" + os.urandom(3).hex()
    now = await admin.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
    mine = me()
    names = {
        "ended": (f"ie_db_{run}_1_1", _foreign(run).label(mode="database", exp=now - 1)),
        # Another machine's live lease, with a pid that is alive *here* and one that is not: the
        # pids mean nothing on this machine, the lease decides.
        "live": (f"ie_db_{run}_1_2", _foreign(run, os.getpid(), mine.start).label(exp=now + 60)),
        "live_dead_pid": (f"ie_db_{run}_1_3", _foreign(run).label(exp=now + 60)),
        "no_lease": (f"ie_db_{run}_1_4", _foreign(run).label()),  # an embedded-era label: never guessed
        "kept": (f"ie_db_{run}_1_5", _foreign(run).label(keep=True, exp=now - 1)),
        "unlabelled": (f"ie_db_{run}_1_6", None),
        "other_run": (f"ie_db_{run}x_1_7", _foreign(run + "x").label(exp=now - 1)),
    }
    for name, label in names.values():
        await _create(admin, name, label)
    try:
        # Any process using this server may reap the ended ones meanwhile (that is the point): only
        # the unlabelled one is prune's alone to drop.
        scope = Scope(run=run)
        dry = await prune(server, kept=False, orphans=True, scope=scope, dry_run=True)
        assert names["unlabelled"][0] in dry and set(dry) <= {names["ended"][0], names["unlabelled"][0]}
        left = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
        assert names["unlabelled"][0] in left  # a dry run drops nothing
        dropped = await prune(server, kept=False, orphans=True, scope=scope)
        assert names["unlabelled"][0] in dropped and set(dropped) <= set(dry)
        assert await prune(server, kept=True, orphans=False, scope=scope) == [names["kept"][0]]
        left = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
        assert {names[k][0] for k in ("live", "live_dead_pid", "no_lease")} <= left
        assert not {names[k][0] for k in ("ended", "unlabelled", "kept")} & left
    finally:
        for name, _label in names.values():
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


async def test_a_lost_lease_fails_the_test_holding_it(external: tuple[Any, Any]) -> None:
    _server, admin = external
    with pytest.raises(ie.IsolationBroken, match=r"lease of PostgreSQL database .* was lost: its label now names"):
        async with ie.isolated_postgres(mode="database") as db:
            other = _foreign("thief").label(exp=9e12)
            await admin.execute(f"COMMENT ON DATABASE {quote_ident(db.database)} IS {quote_literal(other)}")
            await anyio.sleep(TTL)
    async with ie.isolated_postgres(mode="database") as db:  # the next test is not affected
        assert await db.fetchval("SELECT 1") == 1


_URLS = """
import json, anyio
from isolated_env._config import resolve
from isolated_env._servers import postgres
async def main():
    pg = await postgres.ensure_server(resolve())
    print(json.dumps([pg.dsn("postgres"), f"postgresql://{pg.user}:{pg.password}@127.0.0.1:{pg.tcp_port}/postgres"]))
anyio.run(main)
"""


async def test_the_heartbeat_drops_a_server_that_stopped(
    clean_environ: pytest.MonkeyPatch, private_state_dir: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that stopped (its socket gone, or nothing listening on a local port) is dropped at
    the first beat that fails, its leases lost with why, instead of being knocked on until the TTL
    has passed with a warning each beat."""
    env = {**os.environ, "ISOLATED_ENV_STATE_DIR": str(private_state_dir), "ISOLATED_ENV_POSTGRES_TCP": "1"}

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True, text=True,
                              timeout=180).stdout

    cli("-m", "isolated_env.cli", "up", "postgres")
    urls = json.loads(cli("-c", _URLS).strip().splitlines()[-1])  # on its unix socket, and over TCP
    clean_environ.setenv("ISOLATED_ENV_LEASE_TTL", "6")
    caplog.set_level(logging.INFO, logger="isolated_env")
    names = []
    for url in urls:
        clean_environ.setenv("TEST_POSTGRES_URL", url)
        server = await pg_servers.ensure_server(resolve())
        assert server.source == "external"
        admin = await driver.connect(server)
        try:
            name = f"ie_db_zs{os.urandom(3).hex()}_1_1"
            await _create(admin, name, leases.lease_label({}, await leases.expiry(admin, server)))
        finally:
            await driver.close(admin)
        leases.hold(server, name)
        names.append(name)
    assert all(leases.lost(name) is None for name in names)
    assert "postgres: stopped" in cli("-m", "isolated_env.cli", "down", "postgres")
    for _ in range(600):  # the next beat finds out (the TTL alone would be a minute at most)
        if all(leases.lost(name) is not None for name in names):
            break
        await anyio.sleep(0.1)
    for name in names:
        assert f"lease of PostgreSQL database {name} was lost: its server stopped" in str(leases.lost(name))
        with pytest.raises(ie.IsolationBroken, match="its server stopped"):
            leases.check(name)
    assert not [r for r in caplog.records if "renewing" in r.getMessage()]  # no beat knocked on it again


async def test_redis_frees_only_provably_dead_local_owners(clean_environ: pytest.MonkeyPatch) -> None:
    server = await redis_servers.ensure_server(resolve())
    control = redis_driver.asyncio_client(**server.client_kwargs(0))
    last = server.databases - 1
    child = await anyio.run_process([sys.executable, "-c", LABEL])
    dead_here = child.stdout.decode().strip()
    parsed = parse(dead_here)
    assert parsed is not None
    elsewhere = Owner("0therm4chine", *[getattr(parsed[0], f) for f in ("pidns", "pid", "start", "run")]).label()
    key = f"ie:slot:{last}"
    try:
        assert await control.set(key, elsewhere, nx=True, px=60_000), "the last database is leased"
        assert last not in await redis_resource._reap(control, last)
        assert await control.get(key) == elsewhere.encode()
        await control.set(key, dead_here, px=60_000)
        assert last in await redis_resource._reap(control, last)
        assert await control.get(key) is None
    finally:
        await control.delete(key)
        await control.aclose()


@pytest.mark.skipif(importlib.util.find_spec("chdb") is None, reason="needs the chdb extra")
async def test_clickhouse_databases_are_leased_and_only_ended_leases_reaped(
    external_clickhouse: tuple[Any, Any],
) -> None:
    from isolated_env.resources import _clickhouse_slots as slots

    server, admin = external_clickhouse
    run = "zc" + os.urandom(3).hex()

    async def comment(name: str) -> dict[str, Any]:
        rows = (await admin.query("SELECT comment FROM system.databases WHERE name = {n:String}",
                                  parameters={"n": name})).result_rows
        return dict(json.loads(rows[0][0])) if rows else {}

    try:
        async with ie.isolated_clickhouse() as ch:
            first = await comment(ch.database)
            assert parse(first) is not None and "exp" in first
            await anyio.sleep(TTL)
            assert (await comment(ch.database))["exp"] > first["exp"]  # renewed by the heartbeat
        now = float(await admin.command("SELECT toFloat64(toUnixTimestamp64Milli(now64(3))) / 1000"))
        made = {
            f"ie_{run}_ended": _foreign(run).label(exp=now - 1),
            f"ie_{run}_live": _foreign(run, os.getpid(), me().start).label(exp=now + 60),
            f"ie_{run}_nolease": _foreign(run).label(),
        }
        for name, label in made.items():
            await admin.command(f"CREATE DATABASE `{name}` COMMENT '{label}'", use_database=False)
        await slots.reap(admin, server, "database")
        left = {r[0] for r in (await admin.query("SELECT name FROM system.databases")).result_rows}
        assert f"ie_{run}_ended" not in left
        assert {f"ie_{run}_live", f"ie_{run}_nolease"} <= left
    finally:
        for name in (f"ie_{run}_ended", f"ie_{run}_live", f"ie_{run}_nolease"):
            await admin.command(f"DROP DATABASE IF EXISTS `{name}` SYNC", use_database=False)


async def test_redis_prune_can_be_narrowed_and_dry_run(
    clean_environ: pytest.MonkeyPatch, shared_servers: dict[str, str]
) -> None:
    """``prune --run ID`` / ``--mine`` / ``--dry-run`` on Redis: a lease of a dead owner is freed (its
    database flushed) only when its run or machine is named, listed and left as it is by a dry run;
    a database holding keys under no lease (no owner left to tell) is flushed by a wide prune only."""
    clean_environ.setenv("TEST_REDIS_URL", shared_servers["TEST_REDIS_URL"])  # this module's: nobody else reaps
    settings = resolve()
    server = await redis_servers.ensure_server(settings)
    run = "zr" + os.urandom(3).hex()
    child = await anyio.run_process([sys.executable, "-c", LABEL], env={**os.environ, "ISOLATED_ENV_RUN_ID": run})
    dead_here = child.stdout.decode().strip()
    leased, unleased = server.databases - 1, server.databases - 2
    control = redis_driver.asyncio_client(**server.client_kwargs(0))
    data = {db: redis_driver.asyncio_client(**server.client_kwargs(db)) for db in (leased, unleased)}

    async def reap(**options: Any) -> list[str]:
        return [x.split(" (")[0] for x in await redis_resource.RedisResource.reap(settings, **options)]

    try:
        assert await control.set(f"ie:slot:{leased}", dead_here, nx=True, px=60_000)
        for client in data.values():
            await client.set("left", 1)
        assert await reap(scope=Scope(run=run + "x")) == []
        assert await reap(scope=Scope(machine="0therm4chine"), dry_run=True) == []
        assert await reap(scope=Scope(run=run), dry_run=True) == [f"redis database {leased}"]
        assert await reap(scope=Scope(machine=me().machine), dry_run=True) == [f"redis database {leased}"]
        assert f"redis database {unleased}" in await reap(dry_run=True)
        assert await control.get(f"ie:slot:{leased}") == dead_here.encode()  # dry runs touched nothing
        assert [await client.dbsize() for client in data.values()] == [1, 1]
        assert await reap(scope=Scope(run=run)) == [f"redis database {leased}"]
        assert await control.get(f"ie:slot:{leased}") is None
        assert [await client.dbsize() for client in data.values()] == [0, 1]
        assert f"redis database {unleased}" in await reap()
        assert await data[unleased].dbsize() == 0
    finally:
        await control.delete(f"ie:slot:{leased}")
        for client in data.values():
            await client.flushdb()
            await client.aclose()
        await control.aclose()


async def test_fs_prune_can_be_narrowed_and_dry_run(clean_environ: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """``prune --run ID`` / ``--mine`` / ``--dry-run`` on scratch directories: a dead owner's run
    directory goes only when its run or machine is named; a kept directory (its name ends with its
    run id) only with ``--kept`` and its run named (never by machine: it carries none)."""
    import dataclasses

    from isolated_env.resources import fs

    settings = dataclasses.replace(resolve(), state_dir=tmp_path)
    child = await anyio.run_process([sys.executable, "-c", "import os; print(os.getpid())"])
    gone = int(child.stdout.decode())
    run, other = "zf" + os.urandom(3).hex(), "zg" + os.urandom(3).hex()
    root = tmp_path / "fs"
    dirs = {
        "dead": root / f"run-{Owner(me().machine, me().pidns, gone, 0, run).key}",
        "dead_other_run": root / f"run-{Owner(me().machine, me().pidns, gone, 0, other).key}",
        "alive": root / f"run-{me().key}",
        "kept": root / "kept" / f"t-abc-{run}",
        "kept_other_run": root / "kept" / f"t-def-{other}",
    }
    for path in dirs.values():
        path.mkdir(parents=True)

    async def reap(**options: Any) -> set[str]:
        return set(await fs.reap(settings, **options))

    assert await reap(scope=Scope(run=run), dry_run=True) == {str(dirs["dead"])}
    assert await reap(kept=True, scope=Scope(run=run), dry_run=True) == {str(dirs["dead"]), str(dirs["kept"])}
    assert await reap(kept=True, scope=Scope(machine=me().machine), dry_run=True) == {
        str(dirs["dead"]), str(dirs["dead_other_run"])}
    assert await reap(kept=True, scope=Scope(machine="0therm4chine")) == set()
    assert all(path.is_dir() for path in dirs.values())  # dry runs and a scope naming nothing removed nothing
    assert await reap(kept=True, scope=Scope(run=run)) == {str(dirs["dead"]), str(dirs["kept"])}
    assert {k for k, path in dirs.items() if path.is_dir()} == {"dead_other_run", "alive", "kept_other_run"}
