"""Which resources exist: the built-in ones, and those other packages register.

A package adds a resource by naming its factory (or :class:`~isolated_env.Resource` class) under
the ``isolated_env.resources`` entry point::

    [project.entry-points."isolated_env.resources"]
    sqlite = "my_package.sqlite:isolated_sqlite"

The Environment, the pytest plugin (fixtures ``isolated_<kind>``, markers ``requires_<kind>``),
``isolated-env doctor`` and ``prune`` are generated from this registry. Built-in entries are
described here without importing their modules, so listing them costs no driver import.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError

if TYPE_CHECKING:
    import importlib.metadata

__all__ = ["ResourceSpec", "aliases", "builtin_kind", "require_backend", "spec", "specs"]

ENTRY_POINT_GROUP = "isolated_env.resources"
log = logging.getLogger("isolated_env")


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """One registered resource: its names, the server and extra it needs, and where its factory is."""

    kind: str
    aliases: tuple[str, ...]
    provider: str | None
    extra: str | None
    target: str  # "module:attribute" of the factory (or Resource class)
    doc: str
    builtin: bool = True
    asyncio_only: str | None = None
    """Why the resource runs on asyncio only (its driver), or None when it runs on trio too."""

    @property
    def fixtures(self) -> tuple[str, ...]:
        return tuple(f"isolated_{name}" for name in (self.kind, *self.aliases))

    def factory(self) -> Callable[[], Any]:
        module, _, attr = self.target.partition(":")
        obj: Callable[[], Any] = getattr(importlib.import_module(module), attr)
        return obj

    def resource_class(self) -> Any:
        obj = self.factory()
        return getattr(obj, "resource_class", obj)


_BUILTIN = (
    ResourceSpec("postgres", ("database",), "postgres", "postgres", "isolated_env.resources.postgres:isolated_postgres",
                 "A PostgreSQL handle (asyncpg API) whose changes are rolled back after the test.",
                 asyncio_only="asyncpg"),
    ResourceSpec("redis", (), "redis", "redis", "isolated_env.resources.redis:isolated_redis",
                 "A private Redis logical database (redis.asyncio API), flushed after the test.",
                 asyncio_only="redis.asyncio"),
    ResourceSpec("clickhouse", (), "clickhouse", "clickhouse", "isolated_env.resources.clickhouse:isolated_clickhouse",
                 "A ClickHouse client bound to a private database, dropped after the test.",
                 asyncio_only="clickhouse-connect's async client"),
    ResourceSpec("ws", ("websocket",), None, None, "isolated_env.resources.ws:isolated_ws",
                 "A real WebSocket server on a loopback port with a connected client."),
    ResourceSpec("http", (), None, None, "isolated_env.resources.http:isolated_http",
                 "A real HTTP server with expectations, and an httpx client pointed at it."),
    ResourceSpec("fs", (), None, None, "isolated_env.resources.fs:isolated_fs",
                 "A private scratch directory, removed after the test."),
    ResourceSpec("llm", (), None, "llm", "isolated_env.resources.llm:isolated_llm",
                 "An OpenAI- and Anthropic-compatible server for one test: scripted, replayed or recorded."),
)


def _from_entry_point(ep: importlib.metadata.EntryPoint) -> ResourceSpec:
    try:
        obj = ep.load()
    except Exception as exc:
        raise ConfigError(
            f"the isolated_env.resources entry point {ep.name!r} ({ep.value}) failed to load: {exc!r}; "
            "fix or uninstall the package that declares it"
        ) from exc
    cls = getattr(obj, "resource_class", obj)
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ConfigError(
            f"the isolated_env.resources entry point {ep.name!r} ({ep.value}) is not a resource: it needs a "
            "`kind` class attribute that is a Python identifier (see docs/extending.md)"
        )
    doc = (obj.__doc__ or cls.__doc__ or f"The {kind} resource.").strip().split("\n\n")[0]
    return ResourceSpec(
        kind=kind,
        aliases=tuple(getattr(cls, "aliases", ())),
        provider=getattr(cls, "provider", None),
        extra=getattr(cls, "extra", None),
        target=ep.value,
        doc=" ".join(doc.split()),
        builtin=False,
    )


@functools.cache
def specs() -> tuple[ResourceSpec, ...]:
    """Every registered resource: built-in ones first, then entry points in name order."""
    # Imported here: importlib.metadata (email, zipfile, csv ...) and the scan of every installed
    # distribution cost a start-up more than the rest of the package; built-in names need neither.
    import importlib.metadata

    found = list(_BUILTIN)
    taken = {name for s in found for name in (s.kind, *s.aliases)}
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        extra = _from_entry_point(ep)
        clash = taken & {extra.kind, *extra.aliases}
        if clash:
            raise ConfigError(
                f"the isolated_env.resources entry point {ep.name!r} ({ep.value}) uses the name(s) "
                f"{', '.join(sorted(clash))}, already taken by another resource; give it another kind"
            )
        taken |= {extra.kind, *extra.aliases}
        found.append(extra)
    return tuple(found)


def spec(name: str) -> ResourceSpec:
    """The resource registered under ``name`` (a kind or an alias)."""
    for entry in specs():
        if name == entry.kind or name in entry.aliases:
            return entry
    raise ConfigError(f"no resource is registered as {name!r}; known: {', '.join(s.kind for s in specs())}")


def require_backend(kind: str) -> None:
    """Raise ConfigError when the resource ``kind`` runs on asyncio only and the running event loop
    is trio's (one line: which resource, why, and how to run the test on asyncio)."""
    if "trio" not in sys.modules:
        return  # no trio, so the loop is asyncio's
    import trio

    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return  # not in trio's loop
    why = next((s.asyncio_only for s in specs() if s.kind == kind), None)
    if why is None:
        return
    raise ConfigError(
        f"isolated_{kind} needs asyncio ({why} runs on asyncio only), and this code runs on trio; "
        "run the test on asyncio: @pytest.mark.anyio with an anyio_backend fixture (or "
        "@pytest.mark.parametrize('anyio_backend', ['asyncio'])) that returns \"asyncio\""
    )


def builtin_kind(name: str) -> str | None:
    """The built-in kind ``name`` is (a kind or an alias), or None; reads no entry point."""
    for entry in _BUILTIN:
        if name == entry.kind or name in entry.aliases:
            return entry.kind
    return None


@functools.cache
def aliases() -> Mapping[str, str]:
    """Alias → kind for every registered resource."""
    return {alias: s.kind for s in specs() for alias in s.aliases}
