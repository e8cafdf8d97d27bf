"""The summary's breakdown of setup time and its one recommendation, from figures as the plugin
merges them (the causes provoked for real are in tests/adapters/test_summary_advice.py)."""

from __future__ import annotations

import json

import pytest

from isolated_env import _metrics
from isolated_env._advice import advice, breakdown, recommendation
from isolated_env._metrics import CAPACITY_WAITS, CLONES, CONNECTION_OPENS, SERVER_STARTS, TEMPLATE_BUILDS, Figures


def figures(phases: dict[str, float], counts: dict[str, int] | None = None, setup: float = 1000.0,
            machinery: float = 0.0) -> Figures:
    return Figures(1, {}, {}, {}, phases, counts or dict.fromkeys(phases, 1), {"setup": setup, "machinery": machinery})


@pytest.mark.parametrize(("phase", "words"), [
    (CAPACITY_WAITS, "raise the capacity"),
    (CLONES, "use transaction mode"),
    (SERVER_STARTS, "isolated-env up"),
])
def test_the_dominant_cause_names_its_change(phase: str, words: str) -> None:
    advised = recommendation(figures({phase: 600.0, CONNECTION_OPENS: 100.0}))
    assert advised is not None and words in advised and "600 ms, 60% of setup" in advised.split(": ", 1)[1]


def test_one_template_build_is_not_advice_several_are() -> None:
    assert recommendation(figures({TEMPLATE_BUILDS: 700.0})) is None
    advised = recommendation(figures({TEMPLATE_BUILDS: 700.0}, {TEMPLATE_BUILDS: 3}))
    assert advised is not None and "pin the template's version" in advised
    assert "3 template builds took 700 ms" in advised


def test_nothing_dominant_recommends_nothing() -> None:
    assert recommendation(figures({CAPACITY_WAITS: 150.0, CLONES: 150.0, SERVER_STARTS: 150.0})) is None
    assert len(advice(figures({CAPACITY_WAITS: 150.0}))) == 1  # where time went, and no advice line


def test_shares_add_up_with_machinery_and_other() -> None:
    total, parts = breakdown(figures({CLONES: 300.0}, setup=1000.0, machinery=250.0))
    assert total == 1250.0
    assert dict(parts) == {CLONES: 300.0, "fixture machinery": 250.0, "other": 700.0}
    line = advice(figures({CLONES: 300.0}, setup=1000.0, machinery=250.0))[0]
    assert line == ("isolated_env: setup took 1250 ms: clone waits 300 ms (24%), fixture machinery 250 ms (20%), "
                    "other 700 ms (56%)")


def test_workers_figures_merge_through_json() -> None:
    a = figures({CAPACITY_WAITS: 100.0}, setup=400.0)
    b = figures({CAPACITY_WAITS: 300.0, SERVER_STARTS: 50.0}, setup=600.0)
    merged = Figures.merge([Figures.from_json(json.loads(json.dumps(part.to_json()))) for part in (a, b)])
    assert merged.phases == {CAPACITY_WAITS: 400.0, SERVER_STARTS: 50.0}
    assert merged.phase_counts == {CAPACITY_WAITS: 2, SERVER_STARTS: 1}
    assert merged.totals["setup"] == 1000.0


def test_nested_phases_are_counted_once() -> None:
    _metrics.reset_timings()
    with _metrics.setting_up(), _metrics.phase(CONNECTION_OPENS):
        _metrics.record_phase(CLONES, 5.0)
        with _metrics.phase(SERVER_STARTS):
            _metrics.record_phase(CAPACITY_WAITS, 2.0)
    phases, counts, totals = _metrics.phase_totals()
    _metrics.reset_timings()
    assert phases[CLONES] == 5.0 and phases[CAPACITY_WAITS] == 2.0
    assert phases[SERVER_STARTS] < 1.0 and phases[CONNECTION_OPENS] < 1.0  # their own time, not the nested
    assert counts == dict.fromkeys(phases, 1)
    assert totals.get("outside", 0.0) == 0.0  # all of it inside a resource's setup
