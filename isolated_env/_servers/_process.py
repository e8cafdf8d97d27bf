"""Helpers shared by the embedded server starters: binaries, users, readiness waits."""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._errors import ServiceUnavailable

__all__ = [
    "ServerUser",
    "log_tail",
    "naming",
    "poll_until",
    "read_secret",
    "readable_copy",
    "server_user",
    "traversable_by_others",
    "wait_ready",
    "write_secret",
]


class ServerUser:
    """The account a server runs as: ourselves, or an unprivileged one when we are root."""

    def __init__(self, entry: pwd.struct_passwd | None) -> None:
        self.entry = entry

    @property
    def uid(self) -> int:
        return self.entry.pw_uid if self.entry else os.getuid()

    @property
    def gid(self) -> int:
        return self.entry.pw_gid if self.entry else os.getgid()

    @property
    def name(self) -> str | None:
        return self.entry.pw_name if self.entry else None

    def popen_kwargs(self) -> dict[str, Any]:
        """What ``subprocess`` needs to start a process as this user: its uid, its own group and no
        supplementary groups. ``user=`` alone would keep root's gid 0 (and root's groups)."""
        if self.entry is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path, *, recursive: bool = True) -> None:
        if self.entry is None:
            return
        os.chown(path, self.uid, self.gid)
        if not recursive:
            return
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)


def server_user(prefer: str = "postgres") -> ServerUser:
    """PostgreSQL refuses to run as root: pick ``prefer`` if it exists, else ``nobody``."""
    if os.geteuid() != 0:
        return ServerUser(None)
    for name in (prefer, "nobody"):
        try:
            return ServerUser(pwd.getpwnam(name))
        except KeyError:
            continue
    raise ServiceUnavailable(
        "postgres",
        "running as root and no unprivileged user exists to run the server as",
        tried=[f"user {prefer!r}", "user 'nobody'"],
        fix="create one (useradd postgres) or run the tests as a normal user",
    )


def traversable_by_others(path: Path) -> bool:
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def readable_copy(prefix: Path, cache_root: Path, user: ServerUser) -> Path:
    """``prefix`` itself when the server user can reach it, else a copy in a readable cache.

    Binaries installed by pip under a 0700 home (root's) cannot be executed by the server user.
    """
    if user.entry is None or traversable_by_others(prefix):
        return prefix
    digest = hashlib.sha1(str(prefix).encode()).hexdigest()[:10]
    target = cache_root / f"bin-{digest}"
    if not (target / ".complete").exists():
        tmp = cache_root / f"bin-{digest}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(prefix, tmp, symlinks=True)
        (tmp / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def write_secret(path: Path) -> str:
    """A new random password, written to ``path`` (created, never followed or reused; mode 0600:
    the test-running user alone can read it)."""
    secret = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return secret


def read_secret(path: str | Path, service: str) -> str:
    """The password a server's :func:`write_secret` left, or :class:`ServiceUnavailable` saying why not."""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ServiceUnavailable(
            service,
            f"the embedded server's password file cannot be read ({exc})",
            fix="stop the server (isolated-env down) so the next run starts a fresh one, or check "
            "that ISOLATED_ENV_STATE_DIR belongs to this user",
        ) from None


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


def naming(text: str) -> list[Any]:
    """The live processes (zombies aside) with an argument that contains ``text`` (a server
    directory, a state directory); each one's ``.info`` holds its ``cmdline`` and ``uids``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "uids", "status"]):
        info = proc.info
        if info["status"] != psutil.STATUS_ZOMBIE and any(text in arg for arg in info["cmdline"] or []):
            found.append(proc)
    return found


def poll_until(done: Callable[[], bool], timeout: float, *, first: float = 0.002, most: float = 0.05) -> bool:
    """Blocking: call ``done`` with a growing pause (``first`` up to ``most`` seconds) until it is
    true or ``timeout`` seconds have passed; whether it became true. An exception from ``done``
    is not retried: it propagates."""
    import tenacity  # lazily: importing the package must not import it

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_exponential(multiplier=first, exp_base=1.5, max=most),
        retry=tenacity.retry_if_result(lambda ok: not ok),
        retry_error_callback=lambda _state: False,
    )
    return bool(retrying(done))


def wait_ready(
    service: str,
    proc: subprocess.Popen[bytes],
    probe: Callable[[], bool],
    log: Path,
    timeout: float = 60.0,
) -> None:
    """Poll ``probe`` (a real connection) until it succeeds; fail with the server's log if it dies."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise ServiceUnavailable(
                service,
                f"the embedded server exited with code {proc.returncode} while starting; its log says:\n"
                + log_tail(log),
                fix="read the log above; set ISOLATED_ENV_STATE_DIR to a writable tmpfs directory if it is a "
                "permissions or disk problem",
            )
        return probe()

    # At most 4 ms between probes (a refused connect costs microseconds): Valkey and PostgreSQL
    # answer after 30-40 ms here, and a server up is seen within 4 ms of it, not after the 50 ms
    # pause the longer waits grow to.
    if not poll_until(ready, timeout, first=0.001, most=0.004):
        proc.kill()
        proc.wait()
        raise ServiceUnavailable(
            service,
            f"the embedded server did not accept connections within {timeout:g} s; its log says:\n"
            + log_tail(log),
            fix="read the log above; a slow machine may need the server started ahead with `isolated-env up`",
        )
