"""Timings and leak checks (psutil): what a resource cost and whether anything was left behind."""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping

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
CAPACITY_WAITS = "capacity waits"
CLONES = "clone waits"
TEMPLATE_BUILDS = "template builds"
SERVER_STARTS = "server starts"
CONNECTION_OPENS = "connection opens"
# Where setup time went (:func:`phase`): per phase, its own milliseconds (nested phases excluded)
# and how often it ran; ``_totals`` holds "setup" (every resource setup), "outside" (phase time
# outside any resource setup: a marker's probe) and "machinery" (a test's setup beyond them).
_phase_ms: dict[str, float] = collections.defaultdict(float)
_phase_n: dict[str, int] = collections.defaultdict(int)
_totals: dict[str, float] = collections.defaultdict(float)
# The open phase of this task: [milliseconds of the phases nested in it], or None outside any.
_frame: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("isolated_env_phase", default=None)


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


def record_phase(name: str, ms: float) -> None:
    """``ms`` of setup went to ``name`` (a capacity wait, a clone, a server start, ...); the phase
    around it, if any, does not count them again as its own."""
    frame = _frame.get()
    if frame is not None:
        frame[0] += ms
    with _lock:
        _phase_ms[name] += ms
        _phase_n[name] += 1
        if frame is None:
            _totals["outside"] += ms


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as phase ``name``, less the phases nested in it (two perf_counter calls)."""
    frame = [0.0]
    token = _frame.set(frame)
    started = time.perf_counter()
    try:
        yield
    finally:
        ms = (time.perf_counter() - started) * 1000
        _frame.reset(token)
        record_phase(name, ms - frame[0])
        if frame[0]:  # the nested phases are the enclosing phase's too (counted once, as theirs)
            outer = _frame.get()
            if outer is not None:
                outer[0] += frame[0]


@contextlib.contextmanager
def setting_up() -> Iterator[None]:
    """The frame of one resource's setup: the phases in it are not "outside" (see :func:`phase`)."""
    token = _frame.set([0.0])
    try:
        yield
    finally:
        _frame.reset(token)


def add_machinery(ms: float) -> None:
    """A test's setup took ``ms`` beyond its resources' setups (pytest and fixture machinery)."""
    with _lock:
        _totals["machinery"] += max(0.0, ms)


def accounted_ms() -> float:
    """Setup time measured so far: resources' setups and phases outside them."""
    with _lock:
        return _totals["setup"] + _totals["outside"]


def phase_totals() -> tuple[dict[str, float], dict[str, int], dict[str, float]]:
    """Per phase its milliseconds and count, and the totals (setup, outside, machinery)."""
    with _lock:
        return dict(_phase_ms), dict(_phase_n), dict(_totals)


def record_setup(kind: str, ms: float) -> None:
    """One resource of ``kind`` set up in ``ms``; the first of each kind in a process (which may
    include starting its server) is kept apart from the per-test figures."""
    pending = _pending.get()
    with _lock:
        _served[0] += 1
        _totals["setup"] += ms
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
        _phase_ms.clear()
        _phase_n.clear()
        _totals.clear()


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
    phases: Mapping[str, float] = dataclasses.field(default_factory=dict)
    phase_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    totals: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def of_process(cls, tests: int) -> Figures:
        phases, counts, totals = phase_totals()
        return cls(tests, setup_samples(), {k: [v] for k, v in first_setups().items()}, kind_lease_counts(),
                    phases, counts, totals)

    def to_json(self) -> dict[str, object]:
        return {"tests": self.tests, "samples": self.samples, "first": self.first, "leases": self.leases,
                "phases": self.phases, "phase_counts": self.phase_counts, "totals": self.totals}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Figures:
        def get(key: str) -> dict[str, object]:
            value = data.get(key, {})
            return dict(value) if isinstance(value, Mapping) else {}

        return cls(
            int(data.get("tests", 0)),  # type: ignore[call-overload]
            get("samples"), get("first"), get("leases"),  # type: ignore[arg-type]
            get("phases"), get("phase_counts"), get("totals"),  # type: ignore[arg-type]
        )

    @classmethod
    def merge(cls, parts: list[Figures]) -> Figures:
        samples: dict[str, list[float]] = collections.defaultdict(list)
        first: dict[str, list[float]] = collections.defaultdict(list)
        leases: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"reused": 0, "created": 0})
        phases: dict[str, float] = collections.defaultdict(float)
        counts: dict[str, int] = collections.defaultdict(int)
        totals: dict[str, float] = collections.defaultdict(float)
        for part in parts:
            for kind, values in part.samples.items():
                samples[kind].extend(values)
            for kind, values in part.first.items():
                first[kind].extend(values)
            for kind, lease_counts in part.leases.items():
                for key, value in lease_counts.items():
                    leases[kind][key] = leases[kind].get(key, 0) + value
            for name, ms in part.phases.items():
                phases[name] += ms
            for name, n in part.phase_counts.items():
                counts[name] += n
            for name, ms in part.totals.items():
                totals[name] += ms
        return cls(sum(p.tests for p in parts), dict(samples), dict(first), dict(leases), dict(phases),
                   dict(counts), dict(totals))

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
        from ._advice import advice

        return lines + advice(self)
