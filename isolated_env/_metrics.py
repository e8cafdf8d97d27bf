"""Timings and leak checks (psutil): what a resource cost and whether anything was left behind."""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import os
import sys
import threading
from collections.abc import Mapping

import psutil

__all__ = ["LeakReport", "ProcessSnapshot", "record_setup", "setup_summary", "snapshot"]

_lock = threading.Lock()
_leases = {"reused": 0, "created": 0}
_kind_leases: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"reused": 0, "created": 0})
_first_ms: dict[str, float] = {}
_served = [0]  # resources set up in this process, ever (a deque's maxlen does not cap it)
# Leases made while one resource is acquired, attributed to its kind when its setup is recorded.
_pending: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("isolated_env_leases", default=None)
_setup_ms: dict[str, collections.deque[float]] = collections.defaultdict(lambda: collections.deque(maxlen=100_000))
_teardown_ms: dict[str, collections.deque[float]] = collections.defaultdict(lambda: collections.deque(maxlen=100_000))


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted samples, linearly interpolated; 0.0 when empty."""
    if not samples:
        return 0.0
    position = q * (len(samples) - 1)
    low = int(position)
    high = min(low + 1, len(samples) - 1)
    return samples[low] + (samples[high] - samples[low]) * (position - low)


def record_lease(pool: str, *, reused: bool) -> None:
    with _lock:
        _leases["reused" if reused else "created"] += 1
    pending = _pending.get()
    if pending is None:
        pending = [0, 0]
        _pending.set(pending)
    pending[0 if reused else 1] += 1


def lease_counts() -> dict[str, int]:
    with _lock:
        return dict(_leases)


def record_setup(kind: str, ms: float) -> None:
    """One resource of ``kind`` set up in ``ms``; the first of each kind in a process (which may
    include starting its server) is kept apart from the per-test figures."""
    pending = _pending.get()
    with _lock:
        _served[0] += 1
        if kind not in _first_ms:
            _first_ms[kind] = ms
        else:
            _setup_ms[kind].append(ms)
        if pending is not None:
            counts = _kind_leases[kind]
            counts["reused"] += pending[0]
            counts["created"] += pending[1]
    if pending is not None:
        pending[0] = pending[1] = 0


def served() -> int:
    """How many resources were set up in this process (a test that used one moves it)."""
    return _served[0]


def first_setups() -> dict[str, float]:
    with _lock:
        return dict(_first_ms)


def kind_lease_counts() -> dict[str, dict[str, int]]:
    with _lock:
        return {kind: dict(counts) for kind, counts in _kind_leases.items()}


def record_teardown(kind: str, ms: float) -> None:
    with _lock:
        _teardown_ms[kind].append(ms)


@dataclasses.dataclass(frozen=True)
class TimingSummary:
    count: int
    p50_ms: float
    p95_ms: float


def setup_samples() -> dict[str, list[float]]:
    with _lock:
        return {kind: list(samples) for kind, samples in _setup_ms.items()}


def setup_summary(extra: Mapping[str, list[float]] | None = None) -> Mapping[str, TimingSummary]:
    """Setup time per resource kind over this process's life (for the pytest summary line)."""
    with _lock:
        merged = {kind: list(samples) for kind, samples in _setup_ms.items()}
    for kind, samples in (extra or {}).items():
        merged.setdefault(kind, []).extend(samples)
    items = {kind: sorted(samples) for kind, samples in merged.items() if samples}
    return {
        kind: TimingSummary(len(s), percentile(s, 0.5), percentile(s, 0.95)) for kind, s in items.items()
    }


def reset_timings() -> None:
    with _lock:
        _leases.update(reused=0, created=0)
        _kind_leases.clear()
        _first_ms.clear()
        _setup_ms.clear()
        _teardown_ms.clear()


@dataclasses.dataclass(frozen=True)
class ProcessSnapshot:
    """What this process holds at one moment: open fds, threads, live children, tasks, memory."""

    fds: int
    threads: int
    children: frozenset[int]
    tasks: int
    rss_bytes: int


def _task_count() -> int:
    try:
        import asyncio

        return len(asyncio.all_tasks())
    except RuntimeError:  # no running asyncio loop (trio, or called from sync code)
        return 0


def _children(proc: psutil.Process | None) -> frozenset[int]:
    # Linux lists each thread's children in /proc: a few reads instead of psutil's scan of every
    # process on the machine (0.8 ms), which would dominate an environment's setup.
    try:
        pids: set[int] = set()
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(pid) for pid in f.read().split())
    except OSError:
        pids = {c.pid for c in (proc or psutil.Process(os.getpid())).children(recursive=False)}
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:  # "pid (name) state …": Z is a zombie
                if f.read().rpartition(")")[2].split()[0] != "Z":
                    alive.add(pid)
            continue
        except (OSError, IndexError):
            pass
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.Error:
            continue
    return frozenset(alive)


def _linux_snapshot() -> ProcessSnapshot | None:
    # Every Environment takes two snapshots, so they must cost microseconds, not the ~0.5 ms of
    # building a psutil.Process: on Linux, /proc answers each figure in one read.
    try:
        fds = len(os.listdir("/proc/self/fd"))  # as psutil counts (with the one listdir holds)
        threads = len(os.listdir("/proc/self/task"))
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return ProcessSnapshot(
        fds=fds, threads=threads, children=_children(None), tasks=_task_count(),
        rss_bytes=rss_pages * _PAGE_SIZE,
    )


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def snapshot() -> ProcessSnapshot:
    fast = _linux_snapshot() if sys.platform.startswith("linux") else None
    if fast is not None:
        return fast
    proc = psutil.Process(os.getpid())
    with proc.oneshot():
        return ProcessSnapshot(
            fds=proc.num_fds(),
            threads=proc.num_threads(),
            children=_children(proc),
            tasks=_task_count(),
            rss_bytes=proc.memory_info().rss,
        )


@dataclasses.dataclass(frozen=True)
class LeakReport:
    """The difference between two snapshots: positive numbers are things still held."""

    fds: int
    threads: int
    children: frozenset[int]
    tasks: int
    rss_growth_bytes: int

    @classmethod
    def between(cls, before: ProcessSnapshot, after: ProcessSnapshot) -> LeakReport:
        return cls(
            fds=after.fds - before.fds,
            threads=after.threads - before.threads,
            children=after.children - before.children,
            tasks=after.tasks - before.tasks,
            rss_growth_bytes=after.rss_bytes - before.rss_bytes,
        )

    def problems(self, *, fd_slack: int = 0, thread_slack: int = 0) -> list[str]:
        """Human-readable leaks beyond the given slack (pools may legitimately keep a few fds)."""
        out = []
        if self.fds > fd_slack:
            out.append(f"{self.fds} more open file descriptors")
        if self.threads > thread_slack:
            out.append(f"{self.threads} more threads")
        if self.children:
            out.append(f"child processes still running: {sorted(self.children)}")
        if self.tasks > 0:
            out.append(f"{self.tasks} more asyncio tasks")
        return out


@dataclasses.dataclass(frozen=True)
class Figures:
    """What one process (or several merged: xdist workers) reports in the pytest summary."""

    tests: int
    samples: Mapping[str, list[float]]
    first: Mapping[str, list[float]]
    leases: Mapping[str, Mapping[str, int]]

    @classmethod
    def of_process(cls, tests: int) -> Figures:
        return cls(tests, setup_samples(), {k: [v] for k, v in first_setups().items()}, kind_lease_counts())

    def to_json(self) -> dict[str, object]:
        return {"tests": self.tests, "samples": self.samples, "first": self.first, "leases": self.leases}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Figures:
        return cls(
            int(data.get("tests", 0)),  # type: ignore[call-overload]
            dict(data.get("samples", {})),  # type: ignore[call-overload]
            dict(data.get("first", {})),  # type: ignore[call-overload]
            dict(data.get("leases", {})),  # type: ignore[call-overload]
        )

    @classmethod
    def merge(cls, parts: list[Figures]) -> Figures:
        samples: dict[str, list[float]] = collections.defaultdict(list)
        first: dict[str, list[float]] = collections.defaultdict(list)
        leases: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"reused": 0, "created": 0})
        for part in parts:
            for kind, values in part.samples.items():
                samples[kind].extend(values)
            for kind, values in part.first.items():
                first[kind].extend(values)
            for kind, counts in part.leases.items():
                for key, value in counts.items():
                    leases[kind][key] = leases[kind].get(key, 0) + value
        return cls(sum(p.tests for p in parts), dict(samples), dict(first), dict(leases))

    def summary_lines(self, kinds: set[str]) -> list[str]:
        """One header line and one row per resource kind among ``kinds``; none when nothing ran."""
        used = sorted(k for k in kinds if self.samples.get(k) or self.first.get(k))
        if not used:
            return []
        total = sum(len(self.samples.get(k, [])) + len(self.first.get(k, [])) for k in used)
        lines = [f"isolated_env: {self.tests} tests used {total} resources"]
        for kind in used:
            per_test = sorted(self.samples.get(kind, []))
            first = self.first.get(kind, [])
            counts = self.leases.get(kind, {})
            leased = counts.get("reused", 0) + counts.get("created", 0)
            ratio = f"{100 * counts.get('reused', 0) / leased:.0f}%" if leased else "n/a"
            p50 = f"{percentile(per_test, 0.5):.2f} ms" if per_test else "n/a"
            p95 = f"{percentile(per_test, 0.95):.2f} ms" if per_test else "n/a"
            lines.append(
                f"  {kind:<12} {len(per_test) + len(first):>6} set up   p50 {p50:>10}   p95 {p95:>10}   "
                f"first start {max(first):.0f} ms   pool hit ratio {ratio}"
                if first else f"  {kind:<12} {len(per_test):>6} set up   p50 {p50:>10}   p95 {p95:>10}   "
                f"pool hit ratio {ratio}"
            )
        return lines
