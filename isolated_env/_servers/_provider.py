"""The contract every kind of server implements, and external-or-embedded resolution, written once.

A :class:`ServerProvider` knows one kind of server: where the environment names an external one
(:meth:`~ServerProvider.find`, no I/O), how to check it (:meth:`~ServerProvider.connect_external`),
how to start, stop and reap an embedded one, and how to read the registry's state of a running one
(:meth:`~ServerProvider.view`). :class:`Provider` adds :meth:`~Provider.ensure`: the external
server if one is named, else the embedded one shared through :mod:`.registry`.

:func:`provider` finds a kind's provider by name, importing its module only then, so listing the
kinds (:func:`provider_kinds`) imports no driver.
"""

from __future__ import annotations

import importlib
import signal
import subprocess
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from .._config import ExternalEndpoint, Settings
from .._errors import ConfigError, ServerDied, ServiceUnavailable
from .._redact import scrubbed, secret_digest
from . import registry
from ._embedded import Embedded

__all__ = ["Provider", "ServerProvider", "provider", "provider_kinds", "server_died", "unreachable"]

S = TypeVar("S")

_KINDS = ("postgres", "redis", "clickhouse")


class ServerProvider(Protocol[S]):
    """One kind of server; ``S`` is the frozen view of a reachable server handed to resources."""

    @property
    def kind(self) -> str:
        """``"postgres"``: the name of its state file and of its ``TEST_<KIND>_*`` variables."""
        ...

    @property
    def display(self) -> str:
        """``"PostgreSQL"``: how messages name it."""
        ...

    @property
    def stop_signal(self) -> signal.Signals:
        """What :meth:`stop` (and the last user to leave) sends the embedded server."""
        ...

    @property
    def embedded(self) -> Embedded[S]:
        """The embedded server alone (``keep_up`` for ``isolated-env up``, ``cached``)."""
        ...

    def find(self, settings: Settings) -> ExternalEndpoint | None:
        """The external server named by ``TEST_<KIND>_*`` variables, if any; no I/O."""
        ...

    async def connect_external(self, endpoint: ExternalEndpoint, settings: Settings) -> S:
        """Reach ``endpoint`` once and build its view; :class:`ServiceUnavailable` if it cannot."""
        ...

    def start(self, settings: Settings, directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        """Blocking: start an embedded server in the fresh ``directory``, ready for connections."""
        ...

    def stop(self, state: registry.ServerState) -> None:
        """Blocking: stop a running embedded server and remove its directory."""
        ...

    def reap(self, settings: Settings) -> list[str]:
        """Blocking: remove what dead embedded servers of this kind left in the state directory."""
        ...

    def view(self, state: registry.ServerState) -> S:
        """The view of a running embedded server, from what :meth:`start` recorded."""
        ...

    async def ensure(self, settings: Settings) -> S:
        """The server this process uses: external if the environment names one, else embedded."""
        ...

    def died(self, server: S) -> ServerDied | None:
        """The error for a test whose embedded ``server`` died (it is then forgotten, and the next
        :meth:`ensure` starts a new one); None while it runs, and for external servers."""
        ...


class Provider(Generic[S]):
    """What every provider shares: :meth:`ensure`, stop and reap through :mod:`.registry`.

    A subclass sets ``kind``, ``display``, ``fix`` (and ``stop_signal`` if SIGTERM is wrong) and
    writes ``find``, ``connect_external``, ``start`` and ``view``.
    """

    kind: ClassVar[str]
    display: ClassVar[str]
    fix: ClassVar[str]  # how to get a server of this kind at all
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self) -> None:
        self.embedded: Embedded[S] = Embedded(
            self.kind, self.start, self.view, stop_signal=self.stop_signal, display=self.display
        )
        self._external: dict[tuple[Any, ...], S] = {}

    def find(self, settings: Settings) -> ExternalEndpoint | None:
        raise NotImplementedError

    async def connect_external(self, endpoint: ExternalEndpoint, settings: Settings) -> S:
        raise NotImplementedError

    def start(self, settings: Settings, directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        raise NotImplementedError

    def view(self, state: registry.ServerState) -> S:
        raise NotImplementedError

    def stop(self, state: registry.ServerState) -> None:
        registry.stop(state, sig=self.stop_signal)

    def reap(self, settings: Settings) -> list[str]:
        return registry.reap(self.kind, settings.state_dir)

    async def ensure(self, settings: Settings) -> S:
        """The server this process uses: external if the environment names one, else embedded.

        An external server is checked once per endpoint and process; the embedded one is joined
        (started if no process on the machine runs it) once per state directory.
        """
        endpoint = self.find(settings)
        if endpoint is not None:
            key = _endpoint_key(endpoint)
            server = self._external.get(key)
            if server is None:
                server = self._external[key] = await self.connect_external(endpoint, settings)
            return server
        try:
            return await self.embedded.ensure(settings)
        except ServiceUnavailable as exc:
            raise self._not_embedded(exc) from exc

    def died(self, server: S) -> ServerDied | None:
        """The error for a test whose embedded ``server`` died (it is then forgotten, and the next
        :meth:`ensure` starts a new one); None while it runs, and for external servers. Checked
        only after something failed: a pid, its start time and identity, never per test."""
        return self.embedded.died(server)

    def forget(self) -> None:
        """Drop this process's cached views (after the registry released the server)."""
        self.embedded.forget()
        self._external.clear()

    def _not_embedded(self, exc: ServiceUnavailable) -> ServiceUnavailable:
        """``exc`` from the embedded start, saying also that no external server was named."""
        prefix = f"TEST_{self.kind.upper()}_"
        tried = list(exc.tried)
        if not any(prefix in t for t in tried):
            tried.insert(0, f"{prefix}URL / {prefix}HOST (not set)")
        fix = exc.fix or self.fix
        if f"{prefix}URL" not in fix:
            fix += f"; or point {prefix}URL at a running server"
        return ServiceUnavailable(exc.service, exc.problem, tried=tried, fix=fix)


def _endpoint_key(endpoint: ExternalEndpoint) -> tuple[Any, ...]:
    return (
        endpoint.source, endpoint.scheme, endpoint.host, endpoint.port, endpoint.user,
        secret_digest(endpoint.password),
        endpoint.database, tuple(sorted(endpoint.params.items())),
    )


def unreachable(
    display: str, endpoint: ExternalEndpoint, exc: BaseException, *, timeout: float, engine: str = ""
) -> ServiceUnavailable:
    """The error for an external server that did not answer (within ``timeout`` seconds), without
    its password. Raise it ``from exc``: the driver's exception stays reachable as the cause.
    """
    source = f"{endpoint.source}={endpoint.redacted()}"
    if isinstance(exc, TimeoutError):
        problem = f"no answer within {timeout:g} s from {source}"
    else:
        detail = str(exc) or type(exc).__name__
        if endpoint.password:
            detail = detail.replace(endpoint.password, "***")
        problem = f"cannot connect using {source}: {detail}"
    fallback = engine or "the embedded server"
    scrubbed(exc)  # the driver's frames hold the password in their locals
    return ServiceUnavailable(
        display,
        problem,
        fix=f"start the server or correct {endpoint.source}; unset it to use {fallback} instead",
    )


def server_died(kind: str, server: Any) -> ServerDied | None:
    """:meth:`Provider.died` of ``kind``'s provider."""
    return provider(kind).died(server)


def provider_kinds() -> tuple[str, ...]:
    """The kinds of server there are providers for; imports none of them."""
    return _KINDS


def provider(kind: str) -> ServerProvider[Any]:
    """The provider of ``kind``, importing its module (``isolated_env._servers.<kind>``) now."""
    if kind not in _KINDS:
        raise ConfigError(f"no server provider for {kind!r}; choose one of {', '.join(_KINDS)}")
    module = importlib.import_module(f"{__package__}.{kind}")
    found: ServerProvider[Any] = module.PROVIDER
    return found
