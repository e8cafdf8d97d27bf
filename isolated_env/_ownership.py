"""One owner identity for everything isolated_env leaves anywhere: who made it, in one label format.

An owner is a process: the machine it runs on (a digest of ``/etc/machine-id`` and the kernel's
boot id, or ``ISOLATED_ENV_MACHINE_ID``), its PID namespace (the inode of ``/proc/self/ns/pid``), its
pid and start time there, and the run it belongs to. Every label (a PostgreSQL database comment, a
ClickHouse database comment, a Redis lease value, a scratch directory's name) is :meth:`Owner.label`,
read back by :func:`parse`.

Whether an owner is alive is judged locally only for an owner in this machine *and* PID namespace
(:func:`alive`): a pid means nothing in another namespace (two containers with the same hostname
each have a pid 7), so for any other owner the answer is None, and only its server-side lease says
whether what it made may go.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any

import psutil

from ._config import run_id

__all__ = ["LEASE_TTL_ENV", "MACHINE_ENV", "Owner", "Scope", "alive", "dead", "lease_ttl", "me", "parse"]

MACHINE_ENV = "ISOLATED_ENV_MACHINE_ID"
"""Overrides the machine identity (tests simulating a fleet on one host; hosts with no stable id)."""

_TOKEN = re.compile(r"^([0-9a-z]{1,16})\.(\d+)\.(\d+)\.(\d+)\.([0-9a-z]{1,16})$")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def machine_id() -> str:
    """This machine and boot, as 16 hex digits: stable for every process of the boot, different on
    another machine (or container image cloned with the same ``/etc/machine-id``: the boot id differs)."""
    override = os.environ.get(MACHINE_ENV, "").strip().lower()
    if override:
        cleaned = "".join(ch for ch in override if ch.isalnum())[:16]
        if cleaned:
            return cleaned
    raw = _read("/etc/machine-id") + "/" + _read("/proc/sys/kernel/random/boot_id")
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def pid_namespace() -> int:
    """The inode of this process's PID namespace (0 where there is no ``/proc``)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


@dataclasses.dataclass(frozen=True)
class Owner:
    """A process that owns resources, as another process (anywhere) can read it back."""

    machine: str
    pidns: int
    pid: int
    start: int  # process start time, in centiseconds since the epoch (as psutil reads /proc)
    run: str

    def label(self, **extra: Any) -> str:
        """The one label format: compact JSON, with ``extra`` fields (``keep``, ``mode``, ...)."""
        return json.dumps({"ie": 1, **dataclasses.asdict(self), **extra}, separators=(",", ":"))

    def as_dict(self, **extra: Any) -> dict[str, Any]:
        return {"ie": 1, **dataclasses.asdict(self), **extra}

    @property
    def key(self) -> str:
        """A short string naming this owner, fit for a file name: ``machine.pidns.pid.start.run``
        (the run last; names are made of ``[0-9a-z.]``)."""
        return f"{self.machine}.{self.pidns}.{self.pid}.{self.start}.{self.run}"

    @property
    def local(self) -> bool:
        """Whether this owner lives in this machine and PID namespace (its pid can be looked up here)."""
        mine = me()
        return self.machine == mine.machine and self.pidns == mine.pidns


_me: dict[tuple[int, str], Owner] = {}


def me() -> Owner:
    """This process (per pid and run id: a forked child is an owner of its own)."""
    pid = os.getpid()
    run = run_id()
    found = _me.get((pid, run))
    if found is None:
        found = _me[(pid, run)] = Owner(machine_id(), pid_namespace(), pid, _start_time(pid), run)
    return found


def _start_time(pid: int) -> int:
    try:
        return round(psutil.Process(pid).create_time() * 100)
    except psutil.Error:
        return 0


def parse(label: Any) -> tuple[Owner, dict[str, Any]] | None:
    """The owner in ``label`` (a label string, its dict, or an owner key) and the label's other
    fields; None for anything that is not one of ours."""
    if isinstance(label, bytes):
        label = label.decode(errors="replace")
    if isinstance(label, str):
        match = _TOKEN.match(label)
        if match:
            ns, pid, start = (int(g) for g in match.group(2, 3, 4))
            return Owner(match.group(1), ns, pid, start, match.group(5)), {}
        try:
            label = json.loads(label)
        except ValueError:
            return None
    if not isinstance(label, dict) or label.get("ie") != 1:
        return None
    try:
        owner = Owner(
            str(label["machine"]), int(label["pidns"]), int(label["pid"]), int(label["start"]), str(label["run"])
        )
    except (KeyError, TypeError, ValueError):
        return None
    fields = {k: v for k, v in label.items() if k not in {"ie", *Owner.__dataclass_fields__}}
    return owner, fields


def alive(owner: Owner) -> bool | None:
    """True/False for an owner in this machine and PID namespace; None for any other (only its
    lease can tell)."""
    if not owner.local:
        return None
    try:
        proc = psutil.Process(owner.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(round(proc.create_time() * 100) - owner.start) <= 5
    except psutil.Error:
        return False


def dead(label: Any) -> bool:
    """True only for a label of ours whose owner is provably dead (local, and gone)."""
    parsed = parse(label)
    return parsed is not None and alive(parsed[0]) is False


LEASE_TTL_ENV = "ISOLATED_ENV_LEASE_TTL"
_DEFAULT_TTL = 30.0


_good_ttl = _DEFAULT_TTL  # the last ISOLATED_ENV_LEASE_TTL that parsed


def lease_ttl(*, strict: bool = True) -> float:
    """``ISOLATED_ENV_LEASE_TTL``: seconds a server-side lease lives without a heartbeat (default 30;
    the heartbeat beats every third of it). A bad value is a ConfigError; the heartbeat threads read
    it with ``strict=False`` and keep the last good value instead, so a bad setting for a while
    (reported where leases are taken) never stops the renewal of the leases already held."""
    global _good_ttl
    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    if not raw:
        _good_ttl = _DEFAULT_TTL
        return _DEFAULT_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not 0.5 <= ttl <= 3600:
        if not strict:
            return _good_ttl
        from ._errors import ConfigError

        raise ConfigError(
            f"{LEASE_TTL_ENV}={raw!r} is not a number of seconds between 0.5 and 3600; "
            f"set it to e.g. {_DEFAULT_TTL:g}, or unset it"
        )
    _good_ttl = ttl
    return ttl


@dataclasses.dataclass(frozen=True)
class Scope:
    """What a prune may look at: everything (the default), one run (``prune --run ID``), or what this
    machine's runs made (``prune --mine``). It narrows what is removed, never widens it: a live lease
    is never touched, whatever the scope."""

    run: str | None = None
    machine: str | None = None

    def covers(self, owner: Owner) -> bool:
        return (self.run is None or owner.run == self.run) and (self.machine is None or owner.machine == self.machine)

    def covers_name(self, name: str) -> bool:
        """For a resource with no label yet: its name carries the run id (``ie_db_<run>_...``)."""
        return self.machine is None and (self.run is None or f"_{self.run}_" in name)
