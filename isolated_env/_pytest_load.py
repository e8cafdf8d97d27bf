"""The ``isolated_env_load`` fixture: a load run of N concurrent environments from inside a test,
its figures printed at the end of the pytest run (under pytest-xdist too: they travel in the report)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._load import LoadReport, Scenario

__all__ = ["LoadRunner", "isolated_env_load"]

_PROPERTY = "isolated_env_load"


class LoadRunner:
    """``await isolated_env_load.run(scenario, n=50, profile="production", database=..., redis=...)``
    opens ``n`` environments at once under the profile and runs ``scenario(env)`` in each; returns
    a :class:`~isolated_env._load.LoadReport` (also in the run's summary)."""

    def __init__(self) -> None:
        self.reports: list[LoadReport] = []

    async def run(
        self, scenario: Scenario, *, n: int = 50, profile: str = "production", setup: Scenario | None = None,
        **resources: Any,
    ) -> LoadReport:
        from ._load import run_load

        report = await run_load(scenario, n=n, profile=profile, setup=setup, resources=resources or None)
        self.reports.append(report)
        return report


@pytest.fixture
def isolated_env_load(request: pytest.FixtureRequest) -> Iterator[LoadRunner]:
    """Run N concurrent environments under a profile: ``report = await isolated_env_load.run(scenario,
    n=50, profile="production")``; the figures are printed at the end of the run."""
    runner = LoadRunner()
    yield runner
    for report in runner.reports:
        request.node.user_properties.append((_PROPERTY, f"{request.node.nodeid}: {report}"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = [value for reports in terminalreporter.stats.values() for report in reports
             for name, value in getattr(report, "user_properties", ()) if name == _PROPERTY]
    if lines:
        terminalreporter.write_sep("-", "isolated_env load runs")
        for line in dict.fromkeys(lines):  # a report's properties appear in each of its phases
            terminalreporter.write_line(str(line))
