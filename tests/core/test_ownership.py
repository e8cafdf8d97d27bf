"""One owner identity (isolated_env._ownership): the label round-trips, a local owner's liveness is
read from this namespace's process table, and an owner in another machine or PID namespace is never
judged by a local pid lookup (the bug of issue 9: containers with one hostname)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from isolated_env import _ownership
from isolated_env._errors import ConfigError
from isolated_env._ownership import Owner, Scope, alive, dead, me, parse

LABEL_OF_CHILD = "from isolated_env._ownership import me; print(me().label(), flush=True)"


def test_label_and_key_round_trip() -> None:
    owner = me()
    assert owner.pid == os.getpid() and owner.pidns == os.stat("/proc/self/ns/pid").st_ino
    assert parse(owner.label(keep=True, mode="database")) == (owner, {"keep": True, "mode": "database"})
    assert parse(owner.key) == (owner, {})
    assert parse(owner.as_dict()) == (owner, {})
    assert alive(owner) is True and not dead(owner.label())


NOT_OURS = ["", "{}", "[1]", '{"host": "h", "pid": 1}', "run-x", '{"ie": 1, "pid": "x"}', b"\xff"]


@pytest.mark.parametrize("label", NOT_OURS)
def test_anything_else_is_not_ours(label: object) -> None:
    assert parse(label) is None
    assert not dead(label)  # never reaped on a guess


def test_a_dead_local_owner_is_dead() -> None:
    child = subprocess.run([sys.executable, "-c", LABEL_OF_CHILD], capture_output=True, text=True, check=True)
    parsed = parse(child.stdout.strip())
    assert parsed is not None and parsed[0].machine == me().machine
    assert alive(parsed[0]) is False and dead(child.stdout.strip())


def test_a_reused_pid_is_not_its_old_owner() -> None:
    mine = me()
    older = Owner(mine.machine, mine.pidns, mine.pid, mine.start - 1000, mine.run)
    assert alive(older) is False


def test_an_owner_on_another_machine_is_never_judged_here(monkeypatch: pytest.MonkeyPatch) -> None:
    # Same pid, same namespace, same hostname, alive here: still not ours to judge.
    mine = me()
    other = Owner("0therm4chine", mine.pidns, mine.pid, mine.start, mine.run)
    assert alive(other) is None and not dead(other.label())
    gone = Owner("0therm4chine", mine.pidns, 999_999_999, 0, "x")
    assert alive(gone) is None and not dead(gone.label())


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare as root")
def test_an_owner_in_another_pid_namespace_is_never_judged_here() -> None:
    # A container on this machine: its pid 1 is not our pid 1, and its process is gone by now.
    child = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--mount-proc", sys.executable, "-c", LABEL_OF_CHILD],
        capture_output=True, text=True, check=True,
    )
    parsed = parse(child.stdout.strip())
    assert parsed is not None
    owner = parsed[0]
    assert owner.machine == me().machine and owner.pidns != me().pidns and owner.pid == 1
    assert alive(owner) is None and not dead(child.stdout.strip())


def test_machine_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_ownership.MACHINE_ENV, "CI-Runner-7!")
    assert _ownership.machine_id() == "cirunner7"
    monkeypatch.delenv(_ownership.MACHINE_ENV)
    assert len(_ownership.machine_id()) == 16


def test_the_label_is_one_compact_json_object() -> None:
    data = json.loads(me().label(exp=12.5))
    assert set(data) == {"ie", "machine", "pidns", "pid", "start", "run", "exp"}


def test_scope_narrows() -> None:
    mine = me()
    assert Scope().covers(mine) and Scope(run=mine.run).covers(mine) and Scope(machine=mine.machine).covers(mine)
    assert not Scope(run="other").covers(mine) and not Scope(machine="other").covers(mine)
    assert Scope(run="abc").covers_name("ie_db_abc_12_3") and not Scope(run="abc").covers_name("ie_db_abcd_12_3")
    assert not Scope(machine="m").covers_name("ie_db_abc_12_3")  # no label: no machine to match


@pytest.mark.parametrize("raw", ["0", "abc", "99999"])
def test_a_bad_lease_ttl_is_a_config_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(_ownership.LEASE_TTL_ENV, raw)
    with pytest.raises(ConfigError, match="ISOLATED_ENV_LEASE_TTL"):
        _ownership.lease_ttl()


def test_lease_ttl_default_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_ownership.LEASE_TTL_ENV, raising=False)
    assert _ownership.lease_ttl() == 30
    monkeypatch.setenv(_ownership.LEASE_TTL_ENV, "2.5")
    assert _ownership.lease_ttl() == 2.5
