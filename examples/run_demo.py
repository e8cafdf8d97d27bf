"""The main job: run the example service's test suite on real, embedded services and print what
each test's isolation cost. Usage: python examples/run_demo.py"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


class Timings:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}
        self.outcomes: dict[str, str] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: Any, call: Any) -> Any:
        outcome = yield
        report = outcome.get_result()
        self.rows.setdefault(item.name, {})[report.when] = report.duration * 1000
        if report.when == "call" or report.failed:
            self.outcomes[item.name] = report.outcome


def main() -> int:
    timings = Timings()
    started = time.perf_counter()
    code = pytest.main(
        ["-q", "-p", "no:cacheprovider", "--rootdir", str(HERE), "-o", "anyio_mode=auto", str(HERE / "inventory")],
        plugins=[timings],
    )
    wall = (time.perf_counter() - started) * 1000
    print(f"\n{'test':<62} {'setup ms':>9} {'call ms':>9} {'teardown ms':>12}  outcome")
    for name, row in timings.rows.items():
        print(f"{name:<62} {row.get('setup', 0):>9.2f} {row.get('call', 0):>9.2f} {row.get('teardown', 0):>12.2f}  "
              f"{timings.outcomes.get(name, '?')}")
    setups = [r.get("setup", 0) + r.get("teardown", 0) for r in list(timings.rows.values())[1:]]
    if setups:
        print(f"\n{len(timings.rows)} tests in {wall:.0f} ms (the first test also starts the embedded servers); "
              f"median setup+teardown per later test (Postgres+Redis+files, pytest's own share included): "
              f"{statistics.median(setups):.2f} ms")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
