"""``isolated-env``: check, start, stop and clean up the services behind isolated_env.

    isolated-env doctor     find/start every service, run an isolation self-check, print a table
    isolated-env up         start the embedded servers and keep them warm between test runs
    isolated-env down       let them stop (now, if no test run is using them)
    isolated-env status     what is running, where, and who uses it
    isolated-env prune      remove what dead runs left behind: ended leases (--run ID, --mine, --dry-run)
    isolated-env migrate    scan | ratchet | rewrite: move a mock-based suite onto real services
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ._config import Settings, resolve
from ._errors import IsolatedEnvError, ServiceUnavailable
from ._registry import ResourceSpec, spec, specs
from .migrate import _cli as migrate

__all__ = ["main"]


async def _overhead(entry: ResourceSpec, n: int) -> float:
    factory = entry.factory()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        async with factory():
            pass
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _server(entry: ResourceSpec) -> Any:
    if entry.provider is None:
        return None
    from ._servers._provider import provider

    return await provider(entry.provider).ensure(resolve())


async def _check(entry: ResourceSpec) -> dict[str, Any]:
    """One doctor row: the server (started or found), the isolation self-check, the per-test cost."""
    from .pytest_plugin import probe

    await probe(entry)
    server = await _server(entry)
    cls = entry.resource_class()
    self_check = getattr(cls, "self_check", None)
    checked = "ok"
    if self_check is not None:
        await self_check()
    else:
        checked = "ok (no self-check)"
    return {"server": server, "overhead": await _overhead(entry, 50 if entry.kind == "clickhouse" else 200),
            "checked": checked, "grants": await _grants(entry, server)}


async def _grants(entry: ResourceSpec, server: Any) -> list[tuple[str, str]]:
    """What the login may do on an external server (least privilege, docs/fleet.md)."""
    if server is None or entry.provider is None or getattr(server, "source", "") != "external":
        return []
    from . import _grants as grants

    try:
        return await grants.check(entry.provider, server)
    except Exception as exc:  # a doctor row must not fail on a check of rights; it says it could not tell
        return [("warning", f"could not read this login's rights: {exc!r}")]


def _row(entry: ResourceSpec, result: dict[str, Any] | BaseException) -> list[str]:
    kind = entry.kind
    if isinstance(result, BaseException):
        text = result.problem if isinstance(result, ServiceUnavailable) else str(result)
        if isinstance(result, ImportError):
            text = f"driver not installed ({result})"
        return [kind, "unavailable", "", "", "", text]
    server = result["server"]
    if server is None:
        return [kind, "local", "", "", f"{result['overhead']:.3f}", result["checked"]]
    startup = "reused" if getattr(server, "reused", False) else f"{server.startup_ms:.0f}"
    return [kind, server.source, str(server.version), startup, f"{result['overhead']:.3f}", result["checked"]]


def _details(entry: ResourceSpec, result: dict[str, Any] | BaseException, settings: Settings | None) -> list[str]:
    """Where a service's server comes from: binary, version, state dir and log; or why it cannot
    be had and the fix (``settings`` is None when they do not resolve)."""
    from ._servers import registry
    from ._servers._provider import provider

    lines = [f"{entry.kind}:"]

    def field(name: str, value: object) -> None:
        lines.append(f"  {name:<10} {value}")

    if isinstance(result, BaseException):
        field("problem", result.problem if isinstance(result, ServiceUnavailable) else result)
        for tried in getattr(result, "tried", ()):
            field("tried", tried)
        fix = getattr(result, "fix", "")
        if isinstance(result, ImportError):
            fix = f"pip install 'isolated-env[{entry.extra}]'" if entry.extra else "install its package"
        field("fix", fix or "read the problem above")
        if entry.provider is not None and settings is not None:
            field("state dir", settings.state_dir)
        return lines
    server = result["server"]
    if server is None:
        field("server", "none (runs in this process)")
        return lines
    assert entry.provider is not None and settings is not None  # a server was had, so both are
    endpoint = provider(entry.provider).find(settings)
    if endpoint is not None:
        field("server", f"external, {endpoint.source}={endpoint.redacted()}")
        field("version", server.version)
        field("log", "the external server's own")
        for level, text in result.get("grants", []):
            field("grants", f"{level}: {text}")
        return lines
    state = registry.status(entry.provider, settings.state_dir)
    info = state.info if state is not None else {}
    field("server", f"embedded, pid {state.pid}" if state is not None else "embedded")
    field("binary", info.get("binary", "?"))
    field("version", server.version)
    field("state dir", settings.state_dir)
    field("log", info.get("log", "?"))
    return lines


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + str(r[-1]))
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))
    return "\n".join(lines)


def doctor(entries: Sequence[ResourceSpec]) -> int:
    results: dict[str, dict[str, Any] | BaseException] = {}

    async def run() -> None:
        for entry in entries:
            try:
                results[entry.kind] = await _check(entry)
            except (IsolatedEnvError, ImportError) as exc:
                results[entry.kind] = exc

    anyio.run(run)
    header = ["service", "source", "version", "startup ms", "per-test ms", "isolation self-check"]
    print(_table([_row(e, results[e.kind]) for e in entries], header))
    try:
        settings: Settings | None = resolve()
    except IsolatedEnvError:
        settings = None  # every row says why
    for entry in entries:
        print()
        print("\n".join(_details(entry, results[entry.kind], settings)))
    failed = [k for k, r in results.items() if isinstance(r, BaseException)]
    if failed:
        print(f"\n{len(failed)} service(s) unavailable: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _embedded(kind: str) -> Any:
    from ._servers._provider import provider

    return provider(kind).embedded


def up(kinds: Sequence[str]) -> int:
    code = 0
    for kind in kinds:
        try:
            state = _embedded(kind).keep_up(resolve())
        except (IsolatedEnvError, ImportError) as exc:
            print(f"{kind}: {exc}", file=sys.stderr)
            code = 1
            continue
        if kind == "postgres":
            _set_up_rails(state)
        where = state.info.get("host") or state.info.get("unix_socket") or state.info.get("url") or ""
        how = "already running" if state.reused else f"started in {state.startup_ms:.0f} ms"
        print(f"{kind}: {how}, pid {state.pid}, {where}; kept warm until `isolated-env down`")
    return code


def _set_up_rails(state: Any) -> None:
    """The guard rails' test role and base database, made now rather than by the first test after
    ``up`` (they cost it two connections and a CREATE DATABASE); if this fails, that test makes them."""
    import anyio

    from ._servers._provider import provider
    from .resources.postgres.roles import rails

    try:
        anyio.run(rails, provider("postgres").view(state))
    except Exception as exc:  # not fatal: the server is up, and the first test sets them up itself
        print(f"postgres: the guard rails were not set up ahead ({exc}); the first test sets them up", file=sys.stderr)


def down(kinds: Sequence[str]) -> int:
    from ._servers import registry

    settings = resolve()
    for kind in kinds:
        if registry.status(kind, settings.state_dir) is None:
            print(f"{kind}: not running")
            continue
        stopped = registry.release(kind, settings.state_dir, unpin=True)
        print(f"{kind}: {'stopped' if stopped else 'unpinned; stops when its last test run ends'}")
    return 0


def status(kinds: Sequence[str], as_json: bool) -> int:
    from ._servers import registry

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


def _worth_pruning(entry: ResourceSpec) -> bool:
    """A resource with no server, an external server, or an embedded one that is running: a server
    started just to look would be a fresh copy, with nothing of ours in it."""
    from ._servers import registry

    if entry.provider is None:
        return True
    kind = entry.provider
    if any(name.startswith(f"TEST_{kind.upper()}_") and value for name, value in os.environ.items()):
        return True
    state = registry.status(kind, resolve().state_dir)
    return state is not None and state.server_alive()


def prune(kept: bool, templates: bool, *, run_id: str | None = None, mine: bool = False,
          dry_run: bool = False) -> int:
    """Remove what has no live owner: a database (or slot, directory) whose owner provably died or
    whose server-side lease ended; ``run_id``/``mine`` narrow it to one run or this machine's runs,
    ``dry_run`` only lists it. A live lease is never touched."""
    from ._ownership import Scope, me

    scope = Scope(run=run_id, machine=me().machine if mine else None)
    narrowed = scope != Scope()

    async def run() -> list[str]:
        removed: list[str] = []
        settings = resolve()
        for entry in specs():
            if not _worth_pruning(entry):
                continue
            try:
                cls = entry.resource_class()
            except ImportError:
                continue  # its driver is not installed: nothing of it can be there
            options: dict[str, Any] = {}
            if getattr(cls, "_reap", ...) is None:
                continue  # leaves nothing anywhere (a resource of the decorator with no reap)
            # A resource made by the decorator forwards options to its function: ask the function.
            accepts = inspect.signature(getattr(cls, "_reap", None) or cls.reap).parameters
            if templates and "templates" in accepts:
                options["templates"] = True
            if (narrowed and "scope" not in accepts) or (dry_run and "dry_run" not in accepts):
                print(f"prune: {entry.kind}: skipped (it cannot narrow or list what it would remove)",
                      file=sys.stderr)
                continue
            if narrowed:
                options["scope"] = scope
            if dry_run:
                options["dry_run"] = True
            try:
                removed += await cls.reap(settings, kept=kept, **options)
            except ServiceUnavailable as exc:
                print(f"prune: {entry.kind}: {exc}", file=sys.stderr)
        return removed

    try:
        removed = anyio.run(run)
    except IsolatedEnvError as exc:
        print(f"prune: {exc}", file=sys.stderr)
        return 1
    verb = "would remove" if dry_run else "removed"
    print("\n".join(f"{verb} {name}" for name in removed) or "nothing to remove")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isolated-env", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("doctor", "check every service and print a table"),
                        ("up", "start embedded servers and keep them warm"),
                        ("down", "let kept-warm servers stop"),
                        ("status", "show running embedded servers")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("services", nargs="*", help="the resources to act on (default: all)")
        if name == "status":
            p.add_argument("--json", action="store_true")
    p = sub.add_parser("prune", help="remove databases left by dead runs")
    p.add_argument("--kept", action="store_true", help="also remove databases kept for failed tests")
    p.add_argument("--templates", action="store_true", help="also remove built templates (rebuilt when next needed)")
    p.add_argument("--run", metavar="ID", dest="run_id", help="only what the run ID made (its lease must have ended)")
    p.add_argument("--mine", action="store_true", help="only what runs on this machine made")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p = sub.add_parser("bench", help="run the benchmarks, then render docs/benchmarks.md and the README's table")
    p.add_argument("names", nargs="*", help="benchmarks to run, as in benchmarks/bench_<name>.py (default: all)")
    p.add_argument("--dir", type=Path, default=Path("benchmarks"),
                   help="the benchmarks directory (default: ./benchmarks)")
    p.add_argument("--render-only", action="store_true", help="run nothing; render what benchmarks/results holds")
    p.add_argument("--quick", action="store_true", help="pass --quick to the scripts that take it")
    migrate.register(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "migrate":
            return migrate.run(args)
        if args.command == "bench":
            from . import _bench

            root = args.dir.resolve().parent
            return _bench.main(bench_dir=args.dir, only=args.names, render_only=args.render_only,
                               quick=args.quick, readme=root / "README.md", docs=root / "docs" / "benchmarks.md")
        if args.command == "prune":
            return prune(args.kept, args.templates, run_id=args.run_id, mine=args.mine, dry_run=args.dry_run)
        known = {name: entry for entry in specs() for name in (entry.kind, *entry.aliases)}
        for kind in args.services:
            if kind not in known:
                parser.error(f"unknown service {kind!r}; choose from {', '.join(e.kind for e in specs())}")
        entries = [spec(k) for k in args.services] or list(specs())
        if args.command == "doctor":
            return doctor(entries)
        servers = [e.provider for e in entries if e.provider is not None]
        kinds = tuple(dict.fromkeys(servers))
        if args.command == "up":
            return up(kinds)
        if args.command == "down":
            return down(kinds)
        return status(kinds, args.json)
    except IsolatedEnvError as exc:
        print(f"isolated-env: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.command not in {"up"} and "isolated_env._servers.registry" in sys.modules:
            sys.modules["isolated_env._servers.registry"].release_all()


if __name__ == "__main__":
    sys.exit(main())
