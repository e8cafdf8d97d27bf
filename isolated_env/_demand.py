"""How many instances a warm pool keeps ready: as many as observed demand needs, within a bound
(IntegreSQL keeps between NumCPU and 4 x NumCPU ready; :func:`warm_bounds` says ours).

Demand is the most leases seen within one refill time (how long making one instance takes, as
measured), or waiting at once for an instance, over a sliding window. That many ready instances
means the next lease of a burst that size, or of a steady stream at that rate (Little's law:
rate x refill time), finds one ready instead of waiting for one being made; a lease that did wait
in the window asks for one more. Past the window the demand is forgotten and the target falls
back towards the low bound: a pool does not keep instances ready, each costing a copy of its
template, for a burst long over.

Each step is O(1) amortised (a monotonic deque gives the window's maximum), so recording a lease
and reading the target cost a few deque operations.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable

__all__ = ["Demand", "warm_bounds"]


def warm_bounds(capacity: int, cpus: int | None = None) -> tuple[int, int]:
    """The low and high bound of a warm pool's target for pools of ``capacity`` concurrent leases:
    at least min(capacity, CPUs) ready, at most max(capacity, 4 x CPUs)."""
    cpus = max(1, cpus or os.cpu_count() or 1)
    lo = max(1, min(capacity, cpus))
    return lo, max(lo, capacity, 4 * cpus)


class Demand:
    """Observed demand for ready instances, and the target it sets within ``[lo, hi]``.

    ``clock`` is a monotonic clock in seconds (``time.monotonic``); ``refill`` the first guess of
    how long making an instance takes, replaced by a moving average of :meth:`made`'s figures.
    """

    def __init__(self, lo: int, hi: int, *, window: float = 10.0, refill: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lo = max(1, lo)
        self.hi = max(self.lo, hi)
        self.window = window
        self.refill = refill
        self._measured = False
        self._clock = clock
        self._recent: collections.deque[float] = collections.deque()  # leases within one refill time
        # (time, leases within one refill time then): times rising, counts falling, so the first
        # entry left after the window's expired ones are dropped is the window's peak.
        self._peaks: collections.deque[tuple[float, int]] = collections.deque()
        self._starved: collections.deque[float] = collections.deque()

    def lease(self, *, starved: bool = False, waiting: int = 0) -> None:
        """A lease was made; ``starved`` when it found no ready instance and waited for one, with
        ``waiting`` leases (itself included) waiting then: a burst spread over more than one
        refill time still counts whole while none of it has been served."""
        now = self._clock()
        recent = self._recent
        recent.append(now)
        while recent[0] < now - self.refill:
            recent.popleft()
        burst = max(len(recent), waiting)
        while self._peaks and self._peaks[-1][1] <= burst:
            self._peaks.pop()
        self._peaks.append((now, burst))
        if starved:
            self._starved.append(now)

    def made(self, seconds: float) -> None:
        """Making one instance took ``seconds`` (the refill time: the first measure replaces the
        guess, later ones are averaged in)."""
        average = 0.8 * self.refill + 0.2 * seconds if self._measured else seconds
        self._measured = True
        self.refill = min(5.0, max(0.005, average))

    def peak(self) -> int:
        """The most leases seen within one refill time in the window (0 when none)."""
        cutoff = self._clock() - self.window
        while self._peaks and self._peaks[0][0] < cutoff:
            self._peaks.popleft()
        while self._starved and self._starved[0] < cutoff:
            self._starved.popleft()
        return self._peaks[0][1] if self._peaks else 0

    def target(self) -> int:
        """How many instances to keep ready now."""
        peak = self.peak()
        return min(self.hi, max(self.lo, peak + (1 if self._starved else 0)))
