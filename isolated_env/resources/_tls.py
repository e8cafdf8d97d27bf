"""A certificate authority for the run, so in-process servers can speak TLS to clients that trust it.

``isolated_http(tls=True)`` and ``isolated_ws(tls=True)`` present a certificate this CA issued for
``localhost``, ``127.0.0.1`` and every host routed to the server; the clients the library hands out
trust the CA, and a handle's ``.env`` points subprocesses at a bundle holding it (after the system's
own authorities, so they still reach real hosts). One CA per process, made on first use by
``trustme``; its files live in a private temporary directory removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import anyio.to_thread

from .._errors import ConfigError, MissingDependencyError

__all__ = ["RunCA", "TlsMixin", "existing_ca", "run_ca"]

_LOCAL_NAMES = ("localhost", "127.0.0.1")


class RunCA:
    """The run's test CA: ``ca_path`` (its certificate, PEM), ``bundle_path`` (the system's
    authorities plus this one), server contexts per set of host names, and a client context."""

    def __init__(self) -> None:
        try:
            import trustme  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise MissingDependencyError("trustme", "tls", "tls=True (a test certificate authority)") from None
        self._ca = trustme.CA(organization_name="isolated_env test CA")
        self._dir = Path(tempfile.mkdtemp(prefix="isolated-env-ca-"))
        atexit.register(shutil.rmtree, self._dir, True)
        self.ca_path = self._dir / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_path))
        self.bundle_path = self._dir / "bundle.pem"
        self.bundle_path.write_bytes(_system_bundle() + b"\n" + self.ca_path.read_bytes())
        self._lock = threading.Lock()
        self._servers: dict[frozenset[str], ssl.SSLContext] = {}
        self.client_context = ssl.create_default_context(cafile=str(self.ca_path))
        """Trusts this CA only: for the clients of the isolated servers."""
        self.bundle_context = ssl.create_default_context(cafile=str(self.bundle_path))
        """Trusts this CA and the system's: for clients that reach routed and real hosts alike."""

    def server_context(self, hosts: Iterable[str] = ()) -> ssl.SSLContext:
        """A server context whose certificate names ``localhost``, ``127.0.0.1`` and ``hosts``."""
        names = frozenset((*_LOCAL_NAMES, *hosts))
        with self._lock:
            context = self._servers.get(names)
            if context is None:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                self._ca.issue_cert(*sorted(names, key=lambda n: (n not in _LOCAL_NAMES, n))).configure_cert(context)
                self._servers[names] = context
            return context


def _system_bundle() -> bytes:
    try:
        import certifi
    except ImportError:  # httpx depends on certifi, so this is rare: the OS bundle then
        paths = ssl.get_default_verify_paths()
        where = paths.cafile or paths.openssl_cafile
        return Path(where).read_bytes() if where and Path(where).exists() else b""
    return Path(certifi.where()).read_bytes()


@functools.cache
def _make_ca() -> RunCA:
    return RunCA()


def existing_ca() -> RunCA | None:
    """The run's CA if this process has made it (a forwarding client then trusts the servers it signed)."""
    return _make_ca() if _make_ca.cache_info().currsize else None


async def run_ca() -> RunCA:
    """The run's CA, made on first use in a worker thread (key generation is CPU work)."""
    if _make_ca.cache_info().currsize:
        return _make_ca()
    return await anyio.to_thread.run_sync(_make_ca)


class TlsMixin:
    """``ca_path``, ``ssl_context`` and ``env`` for a handle whose server may speak TLS."""

    _ca: RunCA | None

    def _tls(self) -> RunCA:
        if self._ca is None:
            raise ConfigError(f"{type(self).__name__} serves plain text; create it with tls=True for a certificate")
        return self._ca

    @property
    def ca_path(self) -> Path:
        """The test CA's certificate (PEM): give it to a client as its trust store."""
        return self._tls().ca_path

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` trusting the test CA (``verify=`` for httpx, ``ssl=`` for others)."""
        return self._tls().client_context

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that make a subprocess trust the test CA (and the system's CAs)."""
        bundle = str(self._tls().bundle_path)
        return {"SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle}
