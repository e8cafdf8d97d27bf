"""What merely having isolated_env installed costs: the import of the package and of its pytest
plugin (loaded by every pytest run of a project where the package is installed), against a bare
interpreter start, in fresh processes; and a whole pytest run of a project that never uses the
fixtures, with the plugin and with ``-p no:isolated_env``.

    python benchmarks/bench_import.py [--runs 21] [--python PATH]

``--python`` measures another interpreter (a clean venv holding only the package and pytest, as a
user's project has; the default is this one, whose venv holds every dev plugin).

Prints a table and writes benchmarks/results/import.json. Figures are medians of fresh processes,
run interleaved so that machine noise hits every row alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "import.json"
HEAVY = ("httpx", "websockets", "h11", "tenacity", "asyncpg", "redis", "clickhouse_connect", "chdb", "asyncio",
         "psutil")

CASES = {
    "bare interpreter": "pass",
    "import isolated_env": "import isolated_env",
    "import isolated_env.pytest_plugin": "import isolated_env.pytest_plugin",
    "import pytest": "import pytest",
    "pytest + isolated_env plugin": "import pytest, isolated_env.pytest_plugin",
    "first resource module (isolated_redis)": "import isolated_env as ie; ie.isolated_redis",
}


PROJECT = "def test_one():\n    assert 1\n\ndef test_two():\n    assert 2\n"
PYTEST_CASES = {
    "pytest run, project never uses the fixtures": [],
    "same run with -p no:isolated_env": ["-p", "no:isolated_env"],
}


def run_once(python: str, args: list[str], cwd: str | None = None) -> float:
    started = time.perf_counter()
    subprocess.run([python, *args], check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def heavy_modules(python: str, code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True).stdout
    return list(json.loads(out.strip().replace("'", '"')))


def plugin_import_self_ms(python: str) -> float:
    """``python -X importtime -c "import isolated_env.pytest_plugin"``: our modules' own import time
    (self, summed) once pytest is imported, median of a few runs."""
    runs = []
    for _ in range(5):
        err = subprocess.run([python, "-X", "importtime", "-c", "import pytest, isolated_env.pytest_plugin"],
                             check=True, capture_output=True, text=True).stderr
        total = 0
        for line in err.splitlines():
            parts = line.split("|")
            if line.startswith("import time:") and len(parts) == 3 and parts[2].strip().startswith("isolated_env"):
                total += int(parts[0].split(":")[1])
        runs.append(total / 1000)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    python = args.python
    # Compiled once, as pip does on install: a run should not count compiling our sources.
    subprocess.run([python, "-m", "compileall", "-q", str(Path(__file__).resolve().parents[1] / "isolated_env")],
                   check=True)
    samples: dict[str, list[float]] = {name: [] for name in [*CASES, *PYTEST_CASES]}
    with tempfile.TemporaryDirectory(prefix="bench-import-") as project:
        Path(project, "test_project.py").write_text(PROJECT)
        Path(project, "pytest.ini").write_text("[pytest]\n")
        for _ in range(args.runs):
            for name, code in CASES.items():
                samples[name].append(run_once(python, ["-c", code]))
            for name, extra in PYTEST_CASES.items():
                samples[name].append(run_once(python, ["-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
                                              cwd=project))
    bare = statistics.median(samples["bare interpreter"])
    rows = []
    for name in samples:
        median = statistics.median(samples[name])
        heavy = heavy_modules(python, CASES[name]) if name in CASES else []
        rows.append({"case": name, "median_ms": round(median, 2), "over_bare_ms": round(median - bare, 2),
                     "heavy_modules": heavy})
    plugin_cost = statistics.median(samples["pytest run, project never uses the fixtures"]) - statistics.median(
        samples["same run with -p no:isolated_env"])
    own_import = plugin_import_self_ms(python)
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  {'median ms':>9}  {'over bare':>9}  heavy modules imported")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['median_ms']:>9.1f}  {r['over_bare_ms']:>9.1f}  "
              f"{', '.join(r['heavy_modules']) or '-'}")
    print(f"\nthe plugin in a pytest run that never uses it: {plugin_cost:+.1f} ms (median of {args.runs})")
    print(f"our modules' own import time under -X importtime (self, summed): {own_import:.1f} ms")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "python": platform.python_version(), "interpreter": python, "runs": args.runs, "rows": rows,
        "plugin_in_unused_pytest_run_ms": round(plugin_cost, 2), "plugin_import_self_ms": own_import,
    }, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
