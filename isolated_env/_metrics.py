"""Timings and leak checks (psutil): what a resource cost and whether anything was left behind."""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from collections.abc import Mapping

import psutil

__all__ = ["LeakReport", "ProcessSnapshot", "record_setup", "setup_summary", "snapshot"]

_lock = threading.Lock()
_leases = {"reused": 0, "created": 0}
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


def lease_counts() -> dict[str, int]:
    with _lock:
        return dict(_leases)


def record_setup(kind: str, ms: float) -> None:
    with _lock:
        _setup_ms[kind].append(ms)


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


def _children(proc: psutil.Process) -> frozenset[int]:
    # Linux lists each thread's children in /proc: a few reads instead of psutil's scan of every
    # process on the machine (0.8 ms), which would dominate an environment's setup.
    try:
        pids: set[int] = set()
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(pid) for pid in f.read().split())
    except OSError:
        pids = {c.pid for c in proc.children(recursive=False)}
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.Error:
            continue
    return frozenset(alive)


def snapshot() -> ProcessSnapshot:
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
