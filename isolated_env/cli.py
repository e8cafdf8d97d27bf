"""``isolated-env``: check, start, stop and clean up the services behind isolated_env.

    isolated-env doctor     find/start every service, run an isolation self-check, print a table
    isolated-env up         start the embedded servers and keep them warm between test runs
    isolated-env down       let them stop (now, if no test run is using them)
    isolated-env status     what is running, where, and who uses it
    isolated-env prune      remove what dead runs left behind (and kept databases, with --kept)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from ._config import resolve
from ._errors import IsolatedEnvError, ServiceUnavailable
from ._servers import registry

__all__ = ["main"]

_KINDS = ("postgres", "redis", "clickhouse")


async def _overhead(factory: Callable[[], Any], n: int) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        async with factory():
            pass
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _check_postgres() -> dict[str, Any]:
    from ._servers.postgres import ensure_server
    from .resources.postgres import isolated_postgres

    server = await ensure_server(resolve())
    async with isolated_postgres() as a, isolated_postgres() as b:
        await a.execute("CREATE TABLE ie_doctor (x int)")
        await a.execute("INSERT INTO ie_doctor VALUES (1)")
        if await b.fetchval("SELECT to_regclass('ie_doctor')") is not None:
            raise IsolatedEnvError("isolation self-check failed: a concurrent test saw another's table")
    async with isolated_postgres() as c:
        if await c.fetchval("SELECT to_regclass('ie_doctor')") is not None:
            raise IsolatedEnvError("isolation self-check failed: a table survived its test")
    return {"server": server, "overhead": await _overhead(isolated_postgres, 200)}


async def _check_redis() -> dict[str, Any]:
    from ._servers.redis import ensure_server
    from .resources.redis import isolated_redis

    server = await ensure_server(resolve())
    async with isolated_redis() as a, isolated_redis() as b:
        await a.set("ie:doctor", 1)
        if await b.exists("ie:doctor") or a.db == b.db:
            raise IsolatedEnvError("isolation self-check failed: two tests shared a database")
    async with isolated_redis() as c:
        if await c.dbsize():
            raise IsolatedEnvError("isolation self-check failed: keys survived their test")
    return {"server": server, "overhead": await _overhead(isolated_redis, 200)}


async def _check_clickhouse() -> dict[str, Any]:
    from ._servers import clickhouse
    from .resources.clickhouse import isolated_clickhouse

    server = await clickhouse.ensure_server(resolve())
    async with isolated_clickhouse() as a, isolated_clickhouse() as b:
        await a.command("CREATE TABLE ie_doctor (x Int32) ENGINE = Memory")
        tables = await b.query("SHOW TABLES")
        if "ie_doctor" in str(tables.result_rows):
            raise IsolatedEnvError("isolation self-check failed: a concurrent test saw another's table")
    return {"server": server, "overhead": await _overhead(isolated_clickhouse, 50)}


async def _check_fs() -> dict[str, Any]:
    from .resources.fs import isolated_fs

    async with isolated_fs() as a, isolated_fs() as b:
        await a.write_text("x.txt", "x")
        if b.exists("x.txt") or a.path == b.path:
            raise IsolatedEnvError("isolation self-check failed: two tests shared a directory")
    if a.path.exists():
        raise IsolatedEnvError("isolation self-check failed: a directory survived its test")
    return {"server": None, "overhead": await _overhead(isolated_fs, 200)}


_CHECKS: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
    "postgres": _check_postgres,
    "redis": _check_redis,
    "clickhouse": _check_clickhouse,
    "fs": _check_fs,
}


def _row(kind: str, result: dict[str, Any] | BaseException) -> list[str]:
    if isinstance(result, BaseException):
        text = str(result)
        if isinstance(result, ImportError):
            text = f"driver not installed ({result}); pip install 'isolated-env[{kind}]'"
        return [kind, "unavailable", "", "", "", text]
    server = result["server"]
    if server is None:
        return [kind, "local", "", "", f"{result['overhead']:.3f}", "ok"]
    startup = "reused" if getattr(server, "reused", False) else f"{server.startup_ms:.0f}"
    return [kind, server.source, str(server.version), startup, f"{result['overhead']:.3f}", "ok"]


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + str(r[-1]))
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))
    return "\n".join(lines)


def doctor(kinds: Sequence[str]) -> int:
    results: dict[str, dict[str, Any] | BaseException] = {}

    async def run() -> None:
        for kind in kinds:
            try:
                results[kind] = await _CHECKS[kind]()
            except (IsolatedEnvError, ImportError) as exc:
                results[kind] = exc

    anyio.run(run)
    header = ["service", "source", "version", "startup ms", "per-test ms", "isolation self-check"]
    print(_table([_row(k, results[k]) for k in kinds], header))
    failed = [k for k, r in results.items() if isinstance(r, BaseException)]
    if failed:
        print(f"\n{len(failed)} service(s) unavailable: {', '.join(failed)}", file=sys.stderr)
    return 1 if any(isinstance(r, BaseException) and not isinstance(r, (ServiceUnavailable, ImportError))
                    for r in results.values()) or len(failed) == len(kinds) else 0


def _start(kind: str) -> registry.ServerState:
    module = importlib.import_module(f"isolated_env._servers.{kind}")
    embedded: registry.Embedded[Any] = module.embedded
    return embedded.keep_up(resolve())


def up(kinds: Sequence[str]) -> int:
    code = 0
    for kind in kinds:
        try:
            state = _start(kind)
        except (IsolatedEnvError, ImportError) as exc:
            print(f"{kind}: {exc}", file=sys.stderr)
            code = 1
            continue
        where = state.info.get("host") or state.info.get("unix_socket") or state.info.get("url") or ""
        how = "already running" if state.reused else f"started in {state.startup_ms:.0f} ms"
        print(f"{kind}: {how}, pid {state.pid}, {where}; kept warm until `isolated-env down`")
    return code


def down(kinds: Sequence[str]) -> int:
    settings = resolve()
    for kind in kinds:
        if registry.status(kind, settings.state_dir) is None:
            print(f"{kind}: not running")
            continue
        stopped = registry.release(kind, settings.state_dir, unpin=True)
        print(f"{kind}: {'stopped' if stopped else 'unpinned; stops when its last test run ends'}")
    return 0


def status(kinds: Sequence[str], as_json: bool) -> int:
    settings = resolve()
    out = {}
    for kind in kinds:
        state = registry.status(kind, settings.state_dir)
        if state is not None and state.server_alive():
            out[kind] = {"pid": state.pid, "pinned": state.pinned, "users": [u["pid"] for u in state.users],
                         **{k: v for k, v in state.info.items() if k in {"host", "unix_socket", "url", "version"}}}
    if as_json:
        print(json.dumps(out, indent=2))
    elif not out:
        print("no embedded server is running")
    for kind, info in out.items() if not as_json else ():
        users = ", ".join(map(str, info["users"])) or "none"
        print(f"{kind}: pid {info['pid']}, version {info.get('version', '?')}, pinned {info['pinned']}, users {users}")
    return 0


def _worth_pruning(kind: str) -> bool:
    """An external server, or an embedded one that is running: a server started just to look would
    be a fresh copy, with nothing of ours in it."""
    settings = resolve()
    if any(name.startswith(f"TEST_{kind.upper()}_") and value for name, value in os.environ.items()):
        return True
    state = registry.status(kind, settings.state_dir)
    return state is not None and state.server_alive()


def prune(kept: bool, templates: bool) -> int:
    async def run() -> list[str]:
        removed: list[str] = []
        if _worth_pruning("postgres"):
            from ._servers.postgres import ensure_server
            from .resources.postgres import prune as prune_databases

            server = await ensure_server(resolve())
            removed += await prune_databases(server, kept=kept, orphans=True, templates=templates)
        if _worth_pruning("clickhouse"):
            try:
                from .resources.clickhouse import prune as prune_clickhouse

                removed += await prune_clickhouse()
            except (ImportError, ServiceUnavailable):
                pass  # ClickHouse not installed or not available: nothing of ours can be there
        return removed

    try:
        removed = anyio.run(run)
    except IsolatedEnvError as exc:
        print(f"prune: {exc}", file=sys.stderr)
        return 1
    print("\n".join(f"removed {name}" for name in removed) or "nothing to remove")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isolated-env", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("doctor", "check every service and print a table"),
                        ("up", "start embedded servers and keep them warm"),
                        ("down", "let kept-warm servers stop"),
                        ("status", "show running embedded servers")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("services", nargs="*", help="postgres, redis, clickhouse (default: all)")
        if name == "status":
            p.add_argument("--json", action="store_true")
    p = sub.add_parser("prune", help="remove databases left by dead runs")
    p.add_argument("--kept", action="store_true", help="also remove databases kept for failed tests")
    p.add_argument("--templates", action="store_true", help="also remove built templates (rebuilt when next needed)")
    args = parser.parse_args(argv)
    try:
        if args.command == "prune":
            return prune(args.kept, args.templates)
        kinds = tuple(args.services) or ((*_KINDS, "fs") if args.command == "doctor" else _KINDS)
        for kind in kinds:
            if kind not in _CHECKS:
                parser.error(f"unknown service {kind!r}; choose from {', '.join(_CHECKS)}")
        if args.command == "doctor":
            return doctor(kinds)
        kinds = tuple(k for k in kinds if k != "fs")
        if args.command == "up":
            return up(kinds)
        if args.command == "down":
            return down(kinds)
        return status(kinds, args.json)
    except IsolatedEnvError as exc:
        print(f"isolated-env: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.command not in {"up"}:
            registry.release_all()


if __name__ == "__main__":
    sys.exit(main())
