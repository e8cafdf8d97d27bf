"""ClickHouse on a shared server: a table prefix is leased like a database (its marker table's
comment carries ``exp``, renewed by the heartbeat), and ``prune --run ID`` / ``--mine`` /
``--dry-run`` cover ClickHouse databases and prefixes as they cover the other kinds. Against the
embedded chdb adaptor named by TEST_CLICKHOUSE_URL (so: external, leased)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

import anyio
import pytest

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._ownership import Owner, Scope, me, parse

pytestmark = pytest.mark.skipif(importlib.util.find_spec("chdb") is None, reason="needs the chdb extra")

TTL = 3.0  # the lease TTL the external_clickhouse fixture sets
NOW = "SELECT toFloat64(toUnixTimestamp64Milli(now64(3))) / 1000"


async def _marker_label(admin: Any, database: str, marker: str) -> dict[str, Any]:
    rows = (await admin.query(
        "SELECT comment FROM system.tables WHERE database = {d:String} AND name = {n:String}",
        parameters={"d": database, "n": marker},
    )).result_rows
    return dict(json.loads(rows[0][0])) if rows else {}


async def test_a_table_prefix_is_leased_and_renewed(external_clickhouse: tuple[Any, Any]) -> None:
    _server, admin = external_clickhouse
    async with ie.isolated_clickhouse(mode="prefix") as ch:
        marker = ch.prefix + "_owner"
        first = await _marker_label(admin, ch.database, marker)
        parsed = parse(first)
        assert parsed is not None and parsed[0] == me() and "exp" in first  # a lease, not liveness alone
        await anyio.sleep(TTL)
        assert (await _marker_label(admin, ch.database, marker))["exp"] > first["exp"]  # renewed


@pytest.mark.parametrize("mode", ["database", "prefix"])
async def test_a_lost_lease_fails_the_test_holding_it(external_clickhouse: tuple[Any, Any], mode: str) -> None:
    _server, admin = external_clickhouse
    what = "ClickHouse database" if mode == "database" else "ClickHouse table prefix"
    with pytest.raises(ie.IsolationBroken, match=f"lease of {what} .* was lost: the .* was dropped by someone else"):
        async with ie.isolated_clickhouse(mode=mode) as ch:
            # Another run's reaper judged its lease ended and dropped it.
            if mode == "database":
                await admin.command(f"DROP DATABASE `{ch.database}` SYNC", use_database=False)
            else:
                await admin.command(f"DROP TABLE `{ch.database}`.`{ch.prefix}_owner` SYNC")
            await anyio.sleep(TTL)  # the next beats find it gone
    async with ie.isolated_clickhouse(mode=mode) as fresh:
        assert (fresh.database, fresh.prefix) != (ch.database, ch.prefix)  # the lost one was not handed out
        await fresh.command(f"CREATE TABLE {fresh.table('t')} (x UInt8) ENGINE = Memory")


def _owner(run: str, *, here: bool, pid: int = 999_999, start: int = 0) -> Owner:
    return Owner(me().machine if here else "0therm4chine", me().pidns, pid, start, run)


async def test_clickhouse_prune_can_be_narrowed_and_dry_run(external_clickhouse: tuple[Any, Any]) -> None:
    """A database or prefix goes when its lease ended (another machine) or its owner provably died
    (this one), only when ``scope`` names its run or machine; a dry run lists it and drops nothing;
    a live lease, a lease-less foreign owner and a live local owner are never touched."""
    from isolated_env.resources.clickhouse import ClickHouseResource

    server, admin = external_clickhouse
    child = await anyio.run_process([sys.executable, "-c", "import os; print(os.getpid())"])
    gone = int(child.stdout.decode())
    run, other = "zk" + os.urandom(3).hex(), "zl" + os.urandom(3).hex()
    now = float(await admin.command(NOW))
    labels = {
        "ended": _owner(run, here=False).label(exp=now - 1),
        "ended_other_run": _owner(other, here=False).label(exp=now - 1),
        "dead_here": _owner(run, here=True, pid=gone).label(),
        "live_lease": _owner(run, here=False).label(exp=now + 600),
        "no_lease": _owner(run, here=False).label(),
        "alive_here": _owner(run, here=True, pid=os.getpid(), start=me().start).label(),
    }
    databases = {k: f"ie_{run}_{k}" for k in labels}
    prefixes = {k: f"ie_{run}_p{i}_" for i, k in enumerate(labels)}
    db = server.database
    for key, label in labels.items():
        await admin.command(f"CREATE DATABASE `{databases[key]}` COMMENT '{label}'", use_database=False)
        await admin.command(f"CREATE TABLE `{db}`.`{prefixes[key]}_owner` (x UInt8) ENGINE = Memory COMMENT '{label}'")
        await admin.command(f"CREATE TABLE `{db}`.`{prefixes[key]}events` (x UInt8) ENGINE = Memory")

    def gone_with(*keys: str) -> set[str]:
        return {databases[k] for k in keys} | {f"{db}.{prefixes[k]}{t}" for k in keys for t in ("_owner", "events")}

    async def reap(**options: Any) -> set[str]:
        names = await ClickHouseResource.reap(resolve(), **options)
        return {n for n in names if run in n or other in n}  # what other tests left is not ours to count

    async def left() -> set[str]:
        dbs = (await admin.query("SELECT name FROM system.databases")).result_rows
        tables = (await admin.query("SELECT name FROM system.tables WHERE database = {d:String}",
                                    parameters={"d": db})).result_rows
        return {r[0] for r in dbs} | {f"{db}.{r[0]}" for r in tables}

    try:
        everything = gone_with(*labels)
        assert everything <= await left()
        assert await reap(scope=Scope(run=run), dry_run=True) == gone_with("ended", "dead_here")
        assert await reap(scope=Scope(machine=me().machine), dry_run=True) == gone_with("dead_here")
        assert await reap(scope=Scope(machine="0therm4chine"), dry_run=True) == gone_with("ended", "ended_other_run")
        assert await reap(dry_run=True) == gone_with("ended", "ended_other_run", "dead_here")
        assert everything <= await left()  # dry runs dropped nothing
        assert await reap(scope=Scope(run=run + "x")) == set()
        assert await reap(scope=Scope(run=run)) == gone_with("ended", "dead_here")
        assert (await left()) & everything == gone_with("ended_other_run", "live_lease", "no_lease", "alive_here")
        assert await reap() == gone_with("ended_other_run")
        assert (await left()) & everything == gone_with("live_lease", "no_lease", "alive_here")
    finally:
        for key in labels:
            await admin.command(f"DROP DATABASE IF EXISTS `{databases[key]}` SYNC", use_database=False)
            for table in ("_owner", "events"):
                await admin.command(f"DROP TABLE IF EXISTS `{db}`.`{prefixes[key]}{table}` SYNC")


async def test_the_cli_prune_narrows_clickhouse_instead_of_skipping_it(external_clickhouse: tuple[Any, Any]) -> None:
    _server, admin = external_clickhouse
    run = "zm" + os.urandom(3).hex()
    now = float(await admin.command(NOW))
    name = f"ie_{run}_ended"
    await admin.command(f"CREATE DATABASE `{name}` COMMENT '{_owner(run, here=False).label(exp=now - 1)}'",
                        use_database=False)
    try:
        listed = await anyio.run_process([sys.executable, "-m", "isolated_env.cli", "prune", "--run", run,
                                          "--dry-run"], env=dict(os.environ))  # TEST_CLICKHOUSE_URL: ours
        assert "clickhouse: skipped" not in listed.stderr.decode()
        assert f"would remove {name}" in listed.stdout.decode().splitlines()
        assert name in {r[0] for r in (await admin.query("SELECT name FROM system.databases")).result_rows}
    finally:
        await admin.command(f"DROP DATABASE IF EXISTS `{name}` SYNC", use_database=False)
