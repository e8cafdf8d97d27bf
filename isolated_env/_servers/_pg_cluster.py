"""The embedded PostgreSQL's cluster: one initdb'd cache per machine and version, and the password
each server gets when it starts.

The cache lives on tmpfs, outside any state directory (``/dev/shm/isolated-env-cache-<uid>``, or
``ISOLATED_ENV_CACHE_DIR``), so every state directory of the machine copies the same one, and only
the newest :data:`KEEP` builds are kept. Its ``pg_hba.conf`` trusts the server's own socket alone,
which sits in a 0700 directory: only the server user (and root) can reach it. A build also holds
the guard rails' test role and base database (:mod:`._pg_rails`), made by single-user backends
right after initdb. On start, :func:`set_password` uses that bootstrap path once to give the
superuser a fresh random password and the test role the one derived from it (as SCRAM verifiers,
so the clear text reaches neither the server nor its log) and replaces the trust line with
``scram-sha-256`` for sockets and loopback TCP alike.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .._checks import checked_private_dir
from .._config import Settings
from .._errors import ServiceUnavailable
from . import _pg_rails
from ._process import ServerUser, poll_until

__all__ = ["KEEP", "auth_code", "cache_root", "cached_cluster", "copy_cluster", "is_cached", "set_password"]

KEEP = 3  # cluster builds kept in the cache (one per PostgreSQL version and installation)
_LAYOUT = f"4-{_pg_rails.BASE}"  # changes when what a build holds does: an older build is then never copied
_BOOTSTRAP_HBA = "local all postgres trust\n"
_HBA = (
    "# written by isolated_env: the superuser's password is in the server directory's 0600 file\n"
    "local all all scram-sha-256\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n"
)
# The password is 24 random bytes, so the iteration count protects nothing and only costs each new
# connection its PBKDF2 (4096 rounds: ~2 ms on both sides); 64 keeps SCRAM and drops the wait.
_ITERATIONS = 64


def cache_root(settings: Settings) -> Path:
    """The machine's cluster cache for this user, checked like the state directory."""
    return checked_private_dir(settings.cache_dir, "ISOLATED_ENV_CACHE_DIR")


@contextlib.contextmanager
def _locked(path: Path, *, shared: bool) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _entry(root: Path, bindir: Path, version: str) -> Path:
    digest = hashlib.sha1(f"{os.path.realpath(bindir)}:{version}:{_LAYOUT}".encode()).hexdigest()[:10]
    return root / f"pg{version}-{digest}"


def is_cached(settings: Settings, bindir: Path, version: str) -> bool:
    return (_entry(cache_root(settings), bindir, version) / ".complete").exists()


def cached_cluster(settings: Settings, bindir: Path, run_bindir: Path, version: str, user: ServerUser) -> Path:
    """An initdb'd data directory for ``bindir``'s PostgreSQL, built once per machine.

    ``run_bindir`` is where the server user can execute the binaries (a readable copy of ``bindir``
    when that lies under a private home); the cache is keyed on ``bindir`` itself.
    """
    root = cache_root(settings)
    cache = _entry(root, bindir, version)
    data = cache / "data"
    if (cache / ".complete").exists():
        return data
    with _locked(root / "postgres.lock", shared=False):
        if (cache / ".complete").exists():
            return data
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(mode=0o711)
        os.chmod(cache, 0o711)  # the server user runs initdb in here
        tmp = cache / "data.tmp"
        tmp.mkdir(mode=0o700)
        user.chown(tmp)
        cmd = [
            str(run_bindir / "initdb"), "-D", str(tmp), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
            # 1 MB WAL segments, not 16: the first segment is 16 MB of zeros that every start copies
            # (40% of the cluster); throwaway data never needs a bigger one.
            "--wal-segsize=1",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=str(cache), **user.popen_kwargs())
        if result.returncode != 0:
            shutil.rmtree(cache, ignore_errors=True)
            raise ServiceUnavailable(
                "PostgreSQL",
                f"initdb failed ({' '.join(cmd)}): {result.stderr.strip()[-800:]}",
                fix=f"check that {root} is writable (or set ISOLATED_ENV_CACHE_DIR), and that the PostgreSQL "
                "installation works (ISOLATED_ENV_POSTGRES_BINDIR)",
            )
        _build_rails(run_bindir, tmp, version, user, root)
        (tmp / "pg_hba.conf").write_text(_BOOTSTRAP_HBA)  # keeps the server user's ownership
        os.replace(tmp, data)
        (cache / ".complete").touch()
        _evict(root, keep=cache)
    return data


def _build_rails(run_bindir: Path, data: Path, version: str, user: ServerUser, root: Path) -> None:
    """The guard rails' role and base database, made in the new cluster by single-user backends
    (no server, no socket), so every server copied from it starts with them (:mod:`._pg_rails`)."""
    major = int(version.split(".")[0])
    for database, statements in _pg_rails.build_statements(major):
        script = "".join(f"{statement};\n\n" for statement in statements)  # -j: ";" and a blank line end one
        cmd = [str(run_bindir / "postgres"), "--single", "-j", "-D", str(data), "-c", "fsync=off", database]
        result = subprocess.run(cmd, input=script, capture_output=True, text=True, cwd=str(data.parent),
                                **user.popen_kwargs())
        failed = [line for line in (result.stdout + result.stderr).splitlines() if " ERROR: " in line or
                  line.startswith(("ERROR:", "FATAL:")) or " FATAL: " in line]
        if result.returncode != 0 or failed:
            shutil.rmtree(data.parent, ignore_errors=True)
            raise ServiceUnavailable(
                "PostgreSQL",
                f"setting up the cluster cache's test role and base failed ({' '.join(cmd)}): "
                + ("; ".join(failed) or result.stderr.strip())[-800:],
                fix=f"remove {root} (or set ISOLATED_ENV_CACHE_DIR elsewhere) and run again; check that the "
                "PostgreSQL installation works (ISOLATED_ENV_POSTGRES_BINDIR)",
            )


def _evict(root: Path, *, keep: Path) -> None:
    """Remove all but the newest :data:`KEEP` builds (called under the exclusive lock)."""
    builds = [p for p in root.glob("pg*-*") if p.is_dir() and p != keep]
    builds.sort(key=lambda p: (p / ".complete").stat().st_mtime if (p / ".complete").exists() else 0.0)
    for old in builds[: max(0, len(builds) - (KEEP - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def copy_cluster(settings: Settings, cached: Path, data: Path) -> None:
    """Copy the cached cluster to ``data``; a build (and its eviction) waits for copies in flight."""
    with _locked(cache_root(settings) / "postgres.lock", shared=True):
        # cp -a keeps the server user's ownership and modes (PostgreSQL insists on a 0700 data dir).
        subprocess.run(["cp", "-a", str(cached), str(data)], check=True)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = _ITERATIONS) -> str:
    """The ``SCRAM-SHA-256$…`` secret PostgreSQL stores for ``password`` (RFC 5802, 7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}$"
        f"{b64(hashlib.sha256(client_key).digest()).decode()}:{b64(server_key).decode()}"
    )


def _startup(s: socket.socket) -> None:
    body = struct.pack("!I", 196608) + b"user\x00postgres\x00database\x00postgres\x00\x00"
    s.sendall(struct.pack("!I", len(body) + 4) + body)


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    return buf


def _message(s: socket.socket) -> tuple[bytes, bytes]:
    kind = _recv(s, 1)
    (length,) = struct.unpack("!I", _recv(s, 4))
    return kind, _recv(s, length - 4)


def auth_code(sock_dir: str, port: int) -> int | None:
    """What the server asks a new session on its socket for (0: nothing, trusted; 10: SASL), or None
    when it does not answer yet. A real connection, so it doubles as the readiness probe."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(os.path.join(sock_dir, f".s.PGSQL.{port}"))
            _startup(s)
            kind, body = _message(s)
            if kind != b"R":
                return None
            s.sendall(b"X\x00\x00\x00\x04")
            code: int = struct.unpack("!I", body[:4])[0]
            return code
    except OSError:
        return None


def _until_ready(s: socket.socket) -> None:
    """Read up to ReadyForQuery; an ErrorResponse on the way is raised."""
    error = ""
    while True:
        kind, body = _message(s)
        if kind == b"E" and not error:
            fields = {f[:1]: f[1:] for f in body.split(b"\x00") if f}
            error = fields.get(b"M", b"?").decode(errors="replace")
        if kind == b"Z":
            if error:
                raise ConnectionError(error)
            return


def _query(s: socket.socket, sql: str) -> None:
    body = sql.encode() + b"\x00"
    s.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)
    _until_ready(s)


def set_password(sock_dir: str, port: int, data: Path, password: str) -> None:
    """Blocking: over the bootstrap (trusted, owner-only) socket, give the superuser ``password``,
    then require it from every session; returns once the server no longer trusts anyone."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(os.path.join(sock_dir, f".s.PGSQL.{port}"))
            _startup(s)
            _until_ready(s)
            tests = _pg_rails.role_password(password)
            _query(s, f"ALTER ROLE postgres PASSWORD '{scram_verifier(password)}'; "
                      f"ALTER ROLE {_pg_rails.TEST_ROLE} PASSWORD '{scram_verifier(tests)}'")
            (data / "pg_hba.conf").write_text(_HBA)
            _query(s, "SELECT pg_reload_conf()")
            s.sendall(b"X\x00\x00\x00\x04")
    except OSError as exc:
        raise ServiceUnavailable(
            "PostgreSQL", f"could not set the embedded server's password: {exc}",
            fix="read the server's log in its directory under ISOLATED_ENV_STATE_DIR",
        ) from exc
    # The reload is asynchronous: wait until a new session is asked for its password.
    if not poll_until(lambda: auth_code(sock_dir, port) == 10, 10.0, first=0.001, most=0.004):
        raise ServiceUnavailable(
            "PostgreSQL", "the embedded server did not take its password authentication within 10 s",
            fix="read the server's log in its directory under ISOLATED_ENV_STATE_DIR",
        )
    # The rails came with the cluster, and the test role now has its password: no test sets them up.
    (Path(sock_dir) / _pg_rails.MARKER).touch()
