"""The exception tree.

Every error raised by isolated_env derives from :class:`IsolatedEnvError` and also from the closest
builtin, so ``except TimeoutError`` or ``except ValueError`` keeps working::

    IsolatedEnvError
    ├── ConfigError (ValueError)               bad argument, option or environment variable
    │   ├── UnsafePath                         a path would leave an isolated directory
    │   └── NestingUnsupported                 a resource cannot share a wider scope's state
    ├── MissingDependencyError (ImportError)   an optional extra is not installed
    ├── ServiceUnavailable (RuntimeError)      no server could be found, started or reached
    │   └── ServerDied                         an embedded server died while a test used it
    ├── PoolError
    │   ├── LeaseTimeout (TimeoutError)        capacity stayed exhausted past lease_timeout
    │   └── PoolClosed (RuntimeError)          the pool was closed while a lease was wanted
    ├── IsolationBroken (AssertionError)       a test's data escaped its isolation (e.g. a COMMIT)
    ├── TemplateError (RuntimeError)           a PostgreSQL template could not be built
    ├── ResourceCheckFailed (AssertionError)   an in-process server saw errors or unmet expectations
    ├── BudgetExceeded (RuntimeError)          an LLM call would exceed the cost or rate budget
    │   └── UnpricedModel                      a budgeted call to a model nobody priced
    ├── SecretInCassette (ValueError)          a recording would write a key or token; nothing was written
    ├── CircuitOpen (RuntimeError)             a circuit breaker failed a call fast, without sending it
    └── TeardownError (RuntimeError)           cleanup failed or timed out
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigError",
    "IsolatedEnvError",
    "IsolationBroken",
    "LeaseTimeout",
    "MissingDependencyError",
    "NestingUnsupported",
    "PoolClosed",
    "PoolError",
    "ResourceCheckFailed",
    "SecretInCassette",
    "ServerDied",
    "ServiceUnavailable",
    "TeardownError",
    "TemplateError",
    "UnpricedModel",
    "UnsafePath",
]


class IsolatedEnvError(Exception):
    """Root of every error raised by isolated_env."""


class ConfigError(IsolatedEnvError, ValueError):
    """A setting is malformed or out of range; the message names the setting and the fix."""


class UnsafePath(ConfigError):
    """A relative path given to an isolated directory would resolve outside it."""


class NestingUnsupported(ConfigError):
    """A resource was asked to give a narrower scope (a test) a copy of a wider scope's state (its
    class's), and cannot; the message names the resource and what to do instead."""

    def __init__(self, kind: str, why: str = "") -> None:
        self.kind = kind
        super().__init__(
            f"{kind} cannot be shared by a wider scope: {why or 'it offers no nested() to give each test a copy'}"
            f"; give each test its own instead (leave {kind} out of the class- or module-scoped "
            f"environment_fixture and request isolated_{kind}, or an environment_fixture of scope='function')"
        )


class MissingDependencyError(IsolatedEnvError, ImportError):
    """An optional driver is not installed; the message names the pip extra that brings it."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the {package!r} package, which is not installed; "
            f"install it with: pip install 'isolated-env[{extra}]'"
        )


class ServiceUnavailable(IsolatedEnvError, RuntimeError):
    """No server of a kind could be found, started or reached.

    ``tried`` lists what was attempted, ``fix`` says what to do about it.
    """

    def __init__(self, service: str, problem: str, *, tried: Sequence[str] = (), fix: str = "") -> None:
        self.service = service
        self.problem = problem
        self.tried = tuple(tried)
        self.fix = fix
        text = f"{service} is unavailable: {problem}"
        if self.tried:
            text += " (tried: " + "; ".join(self.tried) + ")"
        if fix:
            text += f". Fix: {fix}"
        super().__init__(text)


class ServerDied(ServiceUnavailable):
    """An embedded server died (killed, crashed, out of memory) while a test used it.

    The test that was running gets this error once, with the last lines of the server's log in
    ``log_tail``; the server is started again for the next environment. Not a reason to skip: the
    pytest plugin fails the test."""

    def __init__(self, service: str, *, pid: int, how: str, log: str, log_tail: str) -> None:
        self.pid = pid
        self.log = log
        self.log_tail = log_tail
        super().__init__(
            service,
            f"the embedded server (pid {pid}) died {how} while this test used it; the last lines of its log "
            f"({log}):\n{log_tail}\n",
            fix="nothing to do for the next test, which gets a new server; if servers keep dying, read the log "
            "(out of memory? killed by another process?)",
        )


class PoolError(IsolatedEnvError):
    """A resource pool could not hand out a lease."""


class LeaseTimeout(PoolError, TimeoutError):
    """Every slot of a pool stayed leased for longer than the configured lease timeout."""


class PoolClosed(PoolError, RuntimeError):
    """The pool was closed (its event loop ended or the process is shutting down)."""


class IsolationBroken(IsolatedEnvError, AssertionError):
    """A test's changes escaped its isolation; the resource was restored, but the test is wrong."""


class TemplateError(IsolatedEnvError, RuntimeError):
    """A PostgreSQL template could not be built; nothing half-built is left behind."""


class ResourceCheckFailed(IsolatedEnvError, AssertionError):
    """An in-process server recorded handler errors, unexpected requests or unmet expectations."""

    causes: tuple[BaseException, ...] = ()
    """The exceptions of the handlers that failed, if any."""


class BudgetExceeded(IsolatedEnvError, RuntimeError):
    """An LLM call would exceed the configured cost, token or request budget."""


class UnpricedModel(BudgetExceeded):
    """A budgeted LLM call named a model with no price: it was refused (the budget fails closed)
    until the test gives a price."""


class SecretInCassette(IsolatedEnvError, ValueError):
    """A cassette about to be written holds something shaped like a key or token: the write was
    refused, so no secret reaches a file that may be committed."""


class CircuitOpen(IsolatedEnvError, RuntimeError):
    """A circuit breaker is open (or its half-open probe is in flight): the call was refused without
    reaching the server. ``retry_in`` says how many seconds remain until a probe is allowed."""

    def __init__(self, message: str, *, name: str, retry_in: float) -> None:
        self.name = name
        self.retry_in = retry_in
        super().__init__(message)


class TeardownError(IsolatedEnvError, RuntimeError):
    """Cleanup of a resource failed or did not finish within the teardown timeout."""
