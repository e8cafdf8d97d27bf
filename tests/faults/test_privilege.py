"""Embedded servers are reachable by their owner only: as another uid (``nobody``, through
``runuser``), PostgreSQL, Redis and the ClickHouse adaptor refuse the connection, over their unix
sockets and over loopback TCP alike, and their password files cannot be read; PostgreSQL, which
root must start as an unprivileged user, runs with that user's own group, never root's gid 0.

Each check has its control: as the owner, with the password, the same client gets in, so a
refusal is the server's doing and not a server that is down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from _helpers import Servers, servers_on_tcp

from isolated_env._servers import registry

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None, reason="acting as another uid needs root and runuser"
)

OTHER = "nobody"
RUNUSER = shutil.which("runuser") or "runuser"
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def as_other(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cmd`` run as another uid, from a directory it can enter."""
    return subprocess.run([RUNUSER, "-u", OTHER, "--", *cmd], capture_output=True, text=True, timeout=30,
                          cwd="/", env={"PATH": "/usr/bin:/bin", **(env or {})})


def python_as_other(code: str) -> str:
    """Standard-library Python as another uid; its last line of output."""
    result = as_other(PYTHON, "-I", "-c", textwrap.dedent(code))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """This module's own embedded servers, on their sockets and on loopback TCP."""
    with servers_on_tcp("ie-priv-") as found:
        yield found


def _psql(servers: Servers) -> str:
    found = shutil.which("psql") or str(Path(servers.info("postgres")["bindir"]) / "psql")
    if not os.access(found, os.X_OK):
        pytest.skip("no psql client")
    return found


def test_postgres_refuses_another_user_on_its_socket_and_over_tcp(servers: Servers) -> None:
    pg, psql = servers.pg, _psql(servers)
    query = ["-U", "postgres", "-d", "postgres", "-w", "-At", "-c", "SELECT current_user"]
    socket = as_other(psql, "-h", pg.host, "-p", str(pg.port), *query)
    assert socket.returncode != 0 and "Permission denied" in socket.stderr, socket.stderr
    no_password = as_other(psql, "-h", "127.0.0.1", "-p", str(pg.tcp_port), *query)
    assert no_password.returncode != 0 and "no password supplied" in no_password.stderr, no_password.stderr
    guessed = as_other(psql, "-h", "127.0.0.1", "-p", str(pg.tcp_port), *query, env={"PGPASSWORD": "postgres"})
    assert guessed.returncode != 0 and "password authentication failed" in guessed.stderr, guessed.stderr
    stolen = as_other("cat", pg.password_file)
    assert stolen.returncode != 0 and "Permission denied" in stolen.stderr
    # the owner, with the password, gets in on both
    env = {**os.environ, "PGPASSWORD": pg.password}
    for host, port in ((pg.host, pg.port), ("127.0.0.1", pg.tcp_port)):
        mine = subprocess.run([psql, "-h", host, "-p", str(port), *query], capture_output=True, text=True,
                              env=env, timeout=30)
        assert mine.stdout.strip() == "postgres", mine.stderr
    # and not without it: password authentication on the socket too, not trust
    env.pop("PGPASSWORD")
    env.pop("PGPASSFILE", None)
    bare = subprocess.run([psql, "-h", pg.host, "-p", str(pg.port), *query], capture_output=True, text=True,
                          env={**env, "PGPASSFILE": "/nonexistent"}, timeout=30)
    assert bare.returncode != 0 and "no password supplied" in bare.stderr, bare.stderr


def test_postgres_runs_with_its_users_group_never_roots(servers: Servers) -> None:
    state = registry.status("postgres", servers.state_dir)
    assert state is not None
    postmaster = psutil.Process(state.pid)
    for proc in [postmaster, *postmaster.children()]:
        gids = proc.gids()
        groups = next(line.split()[1:] for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if line.startswith("Groups:"))
        assert proc.uids().real != 0 and gids.real != 0 and gids.effective != 0, (proc.pid, gids)
        assert "0" not in groups, (proc.pid, groups)
    # its directory (and so its socket) is the server user's alone
    mode = Path(servers.pg.host).stat().st_mode & 0o777
    assert mode == 0o700, oct(mode)


def test_redis_refuses_another_user_on_its_socket_and_over_tcp(servers: Servers) -> None:
    rs = servers.rs
    on_socket = python_as_other(f"""
        import socket
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect({rs.unix_socket!r})
            print("connected")
        except PermissionError:
            print("refused")
    """)
    assert on_socket == "refused"
    over_tcp = python_as_other(f"""
        import socket
        s = socket.create_connection(("127.0.0.1", {rs.port}), timeout=5)
        s.sendall(b"PING\\r\\n")
        print(s.recv(100).decode().strip())
    """)
    assert over_tcp.startswith("-NOAUTH"), over_tcp
    assert as_other("cat", rs.password_file).returncode != 0
    import redis

    client = redis.Redis(host="127.0.0.1", port=rs.port, password=rs.password)  # the owner's control
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_the_clickhouse_adaptor_refuses_another_user(servers: Servers) -> None:
    ch = servers.ch
    answer = python_as_other(f"""
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", {ch.port}, timeout=5)
        c.request("POST", "/", body=b"SELECT 1")
        r = c.getresponse()
        print(r.status, r.read()[:200])
    """)
    assert not answer.startswith("200"), answer
    assert "Authentication failed" in answer
    assert as_other("cat", servers.info("clickhouse")["password_file"]).returncode != 0
    import clickhouse_connect

    client = clickhouse_connect.get_client(**ch.client_kwargs())  # the owner's control
    try:
        assert client.command("SELECT 1") == 1
    finally:
        client.close()
