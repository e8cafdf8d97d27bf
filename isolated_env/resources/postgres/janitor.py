"""What isolated_env leaves on a server, and how it goes away.

- Orphans: the reaper drops ``ie_*`` databases whose owner process provably died (it ran in this
  machine and PID namespace) or whose server-side lease ended (:mod:`.leases`), once per server and
  process, before the first use. A database under a live lease is never touched, whoever asks.
- Kept databases: with ``keep_on_failure``, a failed test's database is relabelled as kept, and
  stays (the reaper leaves it alone) until :func:`prune` removes it (``isolated-env prune``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

import anyio
import psutil

from ..._contract import current_settings
from ..._drivers import asyncpg as driver
from ..._errors import TeardownError
from ..._leases import expired, lease_label
from ..._ownership import Scope, alive, parse
from ..._servers import registry
from ..._servers.postgres import PostgresServer
from .handle import DatabaseHandle
from .labels import disown, drop, drop_database, server_key
from .leases import let_go
from .sql import quote_ident, quote_literal
from .templates import forget_templates

__all__ = ["KeptDatabase", "keep", "kept_databases", "prune", "reap_once", "reap_orphans"]

log = logging.getLogger("isolated_env")

_reap_lock = threading.Lock()
_reaped: set[str] = set()  # server keys whose dead owners' databases this process has reaped
_reaped_unlabelled: set[str] = set()  # ... and whose unlabelled clones of dead creators
_ALL = Scope()


async def reap_orphans(
    server: PostgresServer, admin: Any, *, scope: Scope = _ALL, dry_run: bool = False
) -> list[str]:
    """Drop ``ie_*`` databases whose owner is provably dead (in this machine and PID namespace) or
    whose lease has ended (in the server's clock); returns their names. A live lease, a kept
    database and a database of an owner elsewhere with no lease are never touched."""
    rows = await admin.fetch(
        "SELECT datname, shobj_description(oid, 'pg_database') AS label, "
        "extract(epoch FROM clock_timestamp())::float8 AS now FROM pg_database "
        "WHERE datname LIKE 'ie\\_%' AND NOT datistemplate"
    )
    dropped: list[str] = []
    for row in rows:
        parsed = parse(row["label"]) if row["label"] else None
        if parsed is None or parsed[1].get("keep") or not scope.covers(parsed[0]):
            continue
        state = alive(parsed[0])
        if state is False or (state is None and expired(parsed[1], row["now"])):
            if dry_run or await _try_drop(admin, row["datname"]):
                dropped.append(row["datname"])
    if dropped and not dry_run:
        log.info("isolated_env: dropped %s: their owner died or their lease ended", ", ".join(dropped))
    return dropped


async def _try_drop(admin: Any, name: str, *, template: bool = False) -> bool:
    try:
        await (drop if template else drop_database)(admin, name)
    except Exception as exc:  # still in use, or gone meanwhile: the next reaper or prune tries again
        log.debug("isolated_env: could not drop %s: %r", name, exc)
        return False
    return True


_UNLABELLED = (
    "SELECT datname FROM pg_database WHERE (datname LIKE 'ie\\_db\\_%' OR datname LIKE 'ie\\_tx\\_%') "
    "AND NOT datistemplate AND shobj_description(oid, 'pg_database') IS NULL"
)
UNLABELLED_GRACE_S = 2.0  # a live creator labels its database one round trip after creating it


async def _reap_unlabelled(
    server: PostgresServer, admin: Any, *, scope: Scope = _ALL, dry_run: bool = False, wait: bool = False
) -> list[str]:
    """Drop clones whose creator was killed between CREATE DATABASE and labelling it.

    On the embedded server (every client on this machine, in this PID namespace: its socket is ours
    alone) a name whose pid is not running here is enough. On an external server, with ``wait``
    (``prune``), a database still unlabelled after a grace period is: its creator labels it one
    round trip after creating it, so one that has not done so by then has died.
    """
    names = [r["datname"] for r in await admin.fetch(_UNLABELLED) if scope.covers_name(r["datname"])]
    if server.source == "embedded":
        names = [n for n in names if (m := _NAME.fullmatch(n)) and not psutil.pid_exists(int(m.group(1)))]
    elif not (names and wait):
        return []
    else:
        await anyio.sleep(UNLABELLED_GRACE_S)
        still = {r["datname"] for r in await admin.fetch(_UNLABELLED)}
        names = [n for n in names if n in still]
    return [n for n in names if dry_run or await _try_drop(admin, n)]


_NAME = re.compile(r"ie_(?:db|tx)_[a-z0-9]+_(\d+)_\d+")


async def reap_once(server: PostgresServer, *, unlabelled: bool, admin: Any = None) -> None:
    """Remove dead owners' databases the first time this process uses the server (also the
    unlabelled clones of dead creators, with ``unlabelled=True``), on ``admin`` or a connection of
    its own."""
    key = server_key(server)
    with _reap_lock:
        labelled = key not in _reaped
        _reaped.add(key)
        unlabelled = unlabelled and key not in _reaped_unlabelled
        if unlabelled:
            _reaped_unlabelled.add(key)
    if not (labelled or unlabelled):
        return
    with driver.translate("remove dead owners' databases on", driver.redacted_dsn(server)):
        conn = admin if admin is not None else await driver.connect(server)
        try:
            if labelled:
                await reap_orphans(server, conn)
            if unlabelled:
                await _reap_unlabelled(server, conn)
        finally:
            if admin is None:
                await driver.close(conn)


# ---------------------------------------------------------------------------------------------
# Keeping a failed test's database


async def keep(handle: DatabaseHandle, reason: str) -> str:
    """Relabel the database as kept (the reaper and the exit handler leave it alone); a note for
    the report saying where it is, or why it could not be kept (then it is dropped as usual)."""
    let_go(handle.database)  # before the relabelling: the heartbeat must not write the lease back
    label = lease_label({"mode": "database", "origin": handle.template, "keep": True,
                                "kept_at": round(time.time()), "reason": reason[:500]}, None)
    try:
        with anyio.CancelScope(shield=True), anyio.fail_after(10):
            admin = await driver.connect(handle._admin)
            try:
                comment = quote_literal(label)
                await admin.execute(f"COMMENT ON DATABASE {quote_ident(handle.database)} IS {comment}")
            finally:
                await driver.close(admin)
    except Exception as exc:  # the test's own failure matters more than the keeping of its evidence
        return f"isolated_env could not keep this test's database {handle.database}: {exc}"
    handle.kept = handle._ie_clone.kept = True
    disown(handle.database)
    stays = ""
    if handle.server.source == "embedded":
        # Evidence on a server that stops with the run would be gone before anyone looks at it.
        settings = current_settings()
        await anyio.to_thread.run_sync(registry.pin, "postgres", settings.state_dir)
        stays = "; the embedded server stays up until `isolated-env down`"
    pwfile = handle._admin.password_file  # the admin is the one whose password a file holds
    secret = f" (password: `cat {pwfile}`)" if pwfile else ""
    return (
        f"isolated_env kept this test's database {handle.database}: "
        f"{driver.redacted_dsn(handle._admin, handle.database)}{secret} "
        f"(remove it with `isolated-env prune --kept`{stays})"
    )


# ---------------------------------------------------------------------------------------------
# Kept databases and pruning (the CLI's `isolated-env prune`)


@dataclasses.dataclass(frozen=True)
class KeptDatabase:
    """A failed test's database kept by ``keep_on_failure``."""

    name: str
    dsn: str
    run: str
    host: str  # the owner's machine id (see isolated_env._ownership)
    pid: int | None
    kept_at: float | None
    reason: str


async def kept_databases(server: PostgresServer) -> list[KeptDatabase]:
    """The databases kept for failed tests on ``server``, oldest first."""
    with driver.translate("list the kept databases on", driver.redacted_dsn(server)):
        admin = await driver.connect(server)
        try:
            return _kept(server, await _labelled(admin))
        finally:
            await driver.close(admin)


async def _labelled(admin: Any) -> list[tuple[str, bool, dict[str, Any]]]:
    rows = await admin.fetch(
        "SELECT datname, datistemplate, shobj_description(oid, 'pg_database') AS label FROM pg_database "
        "WHERE datname LIKE 'ie\\_%' ORDER BY oid"
    )
    out = []
    for row in rows:
        try:
            label = json.loads(row["label"] or "{}")
        except ValueError:
            label = {}
        out.append((row["datname"], row["datistemplate"], label if isinstance(label, dict) else {}))
    return out


def _kept(server: PostgresServer, rows: Iterable[tuple[str, bool, dict[str, Any]]]) -> list[KeptDatabase]:
    return [
        KeptDatabase(
            name=name,
            dsn=driver.redacted_dsn(server, name),
            run=str(label.get("run", "")),
            host=str(label.get("machine", "")),
            pid=label.get("pid"),
            kept_at=label.get("kept_at"),
            reason=str(label.get("reason", "")),
        )
        for name, is_template, label in rows
        if label.get("keep") and not is_template
    ]


async def prune(
    server: PostgresServer, *, kept: bool = True, orphans: bool = False, templates: bool = False,
    scope: Scope = _ALL, dry_run: bool = False,
) -> list[str]:
    """Drop what isolated_env left on ``server`` and return the names dropped (or, with ``dry_run``,
    that would be): the databases kept for failed tests (``kept``); with ``orphans=True`` also those
    whose owner died or whose lease ended (what the reaper does at start, plus clones whose creator
    died before labelling them); with ``templates=True`` every built template (a run that still needs
    one builds it again). ``scope`` narrows it to one run or this machine's runs. A database under a
    live lease is never touched."""
    with driver.translate("prune databases on", driver.redacted_dsn(server), failure=TeardownError):
        admin = await driver.connect(server)
        try:
            rows = await _labelled(admin)
            dropped: list[str] = []
            if kept:
                labels = {name: label for name, _t, label in rows}
                for item in _kept(server, rows):
                    if _in_scope(scope, labels[item.name]) and (
                        dry_run or await _try_drop(admin, item.name, template=True)
                    ):
                        dropped.append(item.name)
            if orphans:
                dropped += await reap_orphans(server, admin, scope=scope, dry_run=dry_run)
                dropped += await _reap_unlabelled(server, admin, scope=scope, dry_run=dry_run, wait=True)
            if templates and scope == _ALL:
                for name, is_template, _label in rows:
                    if is_template and name.startswith("ie_tpl_") and (
                        dry_run or await _try_drop(admin, name, template=True)
                    ):
                        dropped.append(name)
                if not dry_run:
                    forget_templates(dropped)
            return dropped
        finally:
            await driver.close(admin)


def _in_scope(scope: Scope, label: dict[str, Any]) -> bool:
    if scope == _ALL:
        return True
    parsed = parse(label)
    return parsed is not None and scope.covers(parsed[0])
