"""Figures a test measured (``record_property("figure", text)``) are printed in the run's summary:
a measurement to read, never an assertion. They travel in the test's report, so xdist workers'
figures are printed by the controller too."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    figures = [value for report in terminalreporter.stats.get("passed", [])
               for name, value in getattr(report, "user_properties", []) if name == "figure"]
    if figures:
        terminalreporter.write_sep("-", "measured by the compatibility matrix")
        for figure in figures:
            terminalreporter.write_line(str(figure))
