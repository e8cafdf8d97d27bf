"""The reaper that needs no next run: a small process started with each embedded server.

It watches its server and the server's users (the shared locks on ``users.lock``, which the kernel
drops when a user dies, SIGKILL included) and, once no live user has remained for
``ISOLATED_ENV_REAP_AFTER`` seconds (default 10) and the server is not pinned
(``isolated-env up``), stops the server and removes its directory and state file. It exits as soon
as its server is gone, however the server went; a server that died while users remain is left to
them (they read its log, restart it, and remove what it left).

It is detached (its own session, and a second fork so it is no user process's child) and cheap:
one wake-up a second, woken at once by the server's exit through a pidfd.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from .._errors import ConfigError
from ._owners import users_present
from ._statefile import CorruptState, ServerState, file_lock, read_state, remove_server_dir

__all__ = ["PINNED", "SERVER_FILE", "reap_after", "spawn"]

SERVER_FILE = "server.json"  # the state as started, in the server's own directory
PINNED = "pinned"  # present while `isolated-env up` keeps the server warm
_DEFAULT_REAP_AFTER = 10.0
_POLL_S = 1.0


def reap_after() -> float:
    """``ISOLATED_ENV_REAP_AFTER``: seconds without a live user before a server stops itself."""
    raw = os.environ.get("ISOLATED_ENV_REAP_AFTER", "").strip()
    if not raw:
        return _DEFAULT_REAP_AFTER
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise ConfigError(
            f"ISOLATED_ENV_REAP_AFTER={raw!r} is not a number of seconds between 0 and 3600; "
            f"set it to e.g. {_DEFAULT_REAP_AFTER:g}, or unset it"
        )
    return value


def spawn(root: Path, kind: str, server_dir: Path, grace: float) -> subprocess.Popen[bytes]:
    """Start the supervisor of the server whose state is in ``server_dir/server.json``. The
    returned process exits at once (after forking the supervisor off); wait for it when convenient."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(server_dir / "supervisor.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", __name__, str(root), kind, str(server_dir), repr(grace)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, cwd="/", env=env,
            start_new_session=True,
        )


def _wait_exit(pidfd: int | None, timeout: float) -> None:
    """Sleep ``timeout`` seconds, or until the server exits (its pidfd becomes readable)."""
    if pidfd is None:
        time.sleep(timeout)
        return
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.poll(timeout * 1000)


def _forget(root: Path, kind: str, state: ServerState) -> None:
    """Under the kind's lock: the state file goes if it still names this server; its directory goes."""
    if not root.is_dir():
        return
    with file_lock(root / f"{kind}.lock", make_parent=False):
        statefile = root / f"{kind}.json"
        with contextlib.suppress(CorruptState):  # the next run recovers a corrupt file
            current = read_state(statefile, kind)
            if current is not None and current.pid == state.pid and current.create_time == state.create_time:
                statefile.unlink(missing_ok=True)
        remove_server_dir(state)


def _stop(state: ServerState, pidfd: int | None) -> None:
    sig = signal.Signals.__members__.get(state.stop_signal, signal.SIGTERM)
    for attempt in (sig, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, attempt)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and state.server_alive():
            _wait_exit(pidfd, 0.05)
        if not state.server_alive():
            return


def run(root: Path, kind: str, server_dir: Path, grace: float) -> None:
    try:
        state = read_state(server_dir / SERVER_FILE, kind, root=root)
    except CorruptState as exc:
        print(f"isolated_env supervisor: {server_dir / SERVER_FILE} cannot be trusted ({exc})", file=sys.stderr)
        return
    if state is None:
        return
    try:
        pidfd: int | None = os.pidfd_open(state.pid)
    except (OSError, AttributeError):
        pidfd = None
    idle_since: float | None = None
    while True:
        _wait_exit(pidfd, min(_POLL_S, grace / 2))
        if not state.server_alive():
            if not users_present(server_dir):
                _forget(root, kind, state)
            return
        if (server_dir / PINNED).exists() or users_present(server_dir):
            idle_since = None
            continue
        now = time.monotonic()
        if idle_since is None:
            idle_since = now
        if now - idle_since < grace:
            continue
        if not root.is_dir():
            _stop(state, pidfd)
            remove_server_dir(state)
            return
        with file_lock(root / f"{kind}.lock", make_parent=False):
            # Users join under this lock: rechecked here, none can arrive while we stop.
            if state.server_alive() and not (server_dir / PINNED).exists() and not users_present(server_dir):
                _stop(state, pidfd)
        if not state.server_alive():
            _forget(root, kind, state)
            print(f"isolated_env: stopped the {kind} server (pid {state.pid}): no live user for {grace:g} s",
                  file=sys.stderr)
            return
        idle_since = None


def main(argv: list[str]) -> None:
    root, kind, server_dir, grace = Path(argv[0]), argv[1], Path(argv[2]), float(argv[3])
    if os.fork() > 0:
        os._exit(0)  # the spawner waits for this one; the supervisor goes on, nobody's child
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run(root, kind, server_dir, grace)
    except Exception as exc:  # nobody reads our stderr but the log; a supervisor must not linger
        print(f"isolated_env supervisor of {server_dir}: {exc!r}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
