"""The warm-pool sizing policy (:mod:`isolated_env._demand`) on a clock the test moves."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from isolated_env._demand import Demand, warm_bounds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bounds_follow_integresql_between_cpus_and_four_times_cpus() -> None:
    assert warm_bounds(10, cpus=2) == (2, 10)
    assert warm_bounds(1, cpus=2) == (1, 8)
    assert warm_bounds(50, cpus=4) == (4, 50)
    assert warm_bounds(0, cpus=2) == (1, 8)


def test_idle_pool_keeps_the_low_bound() -> None:
    demand = Demand(2, 8, clock=Clock())
    assert demand.target() == 2


def test_a_burst_raises_the_target_to_its_size_and_the_window_forgets_it() -> None:
    clock = Clock()
    demand = Demand(2, 8, window=10.0, refill=0.05, clock=clock)
    for _ in range(6):  # six leases at once, two of which found nothing ready
        demand.lease()
    demand.lease(starved=True)
    assert demand.peak() == 7
    assert demand.target() == 8  # the burst, and one more for the lease that waited
    clock.now += 5.0  # an idle gap shorter than the window: ready for the next burst
    assert demand.target() == 8
    clock.now += 6.0
    assert demand.target() == 2


def test_a_steady_stream_asks_for_rate_times_refill_time() -> None:
    clock = Clock()
    demand = Demand(1, 50, refill=0.05, clock=clock)
    demand.made(0.05)
    for _ in range(200):  # 100 leases a second, each clone taking 50 ms: five leases per refill
        demand.lease()
        clock.now += 0.01
    assert demand.target() == 5
    for _ in range(50):  # clones got slower: 100 ms each
        demand.made(0.1)
    for _ in range(200):
        demand.lease()
        clock.now += 0.01
    assert demand.target() == 10


def test_leases_waiting_at_once_count_whole_however_spread_their_arrival() -> None:
    clock = Clock()
    demand = Demand(2, 8, refill=0.05, clock=clock)
    for waiting in range(1, 7):  # six leases 40 ms apart, none served: six waiting by the last
        demand.lease(starved=True, waiting=waiting)
        clock.now += 0.04
    assert demand.peak() == 6 and demand.target() == 7


def test_the_first_measured_refill_time_replaces_the_guess() -> None:
    demand = Demand(1, 8, refill=0.05, clock=Clock())
    demand.made(0.3)
    assert demand.refill == 0.3
    demand.made(0.1)
    assert abs(demand.refill - 0.26) < 1e-9


def test_the_high_bound_caps_the_target() -> None:
    clock = Clock()
    demand = Demand(1, 4, clock=clock)
    for _ in range(20):
        demand.lease(starved=True)
    assert demand.target() == 4


@given(st.lists(st.tuples(st.floats(0, 3), st.booleans()), max_size=60), st.integers(1, 6), st.integers(0, 20))
def test_target_is_always_within_bounds_and_peak_is_the_busiest_refill_time(
    steps: list[tuple[float, bool]], lo: int, extra: int
) -> None:
    clock = Clock()
    demand = Demand(lo, lo + extra, window=2.0, refill=0.5, clock=clock)
    times: list[float] = []
    for gap, starved in steps:
        clock.now += gap
        demand.lease(starved=starved)
        times.append(clock.now)
        assert lo <= demand.target() <= lo + extra
    # The window's peak, computed the slow way: at each lease still in the window, the leases
    # within one refill time before it.
    in_window = [t for t in times if t >= clock.now - 2.0]
    slow = max((sum(1 for u in times if t - 0.5 <= u <= t) for t in in_window), default=0)
    assert demand.peak() == slow
