"""What merely having isolated_env installed costs: the import of the package and of its pytest
plugin (loaded by every pytest run of a project where the package is installed), against a bare
interpreter start, in fresh processes.

    python benchmarks/bench_import.py [--runs 21]

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
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "import.json"
HEAVY = ("httpx", "websockets", "h11", "aiofiles", "tenacity", "asyncpg", "redis", "clickhouse_connect", "chdb")

CASES = {
    "bare interpreter": "pass",
    "import isolated_env": "import isolated_env",
    "import isolated_env.pytest_plugin": "import isolated_env.pytest_plugin",
    "import pytest": "import pytest",
    "pytest + isolated_env plugin": "import pytest, isolated_env.pytest_plugin",
    "first resource module (isolated_redis)": "import isolated_env as ie; ie.isolated_redis",
}


def run_once(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return (time.perf_counter() - started) * 1000


def heavy_modules(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return list(json.loads(out.strip().replace("'", '"')))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):
        for name, code in CASES.items():
            samples[name].append(run_once(code))
    bare = statistics.median(samples["bare interpreter"])
    rows = []
    for name, code in CASES.items():
        median = statistics.median(samples[name])
        rows.append({"case": name, "median_ms": round(median, 2), "over_bare_ms": round(median - bare, 2),
                     "heavy_modules": heavy_modules(code)})
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  {'median ms':>9}  {'over bare':>9}  heavy modules imported")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['median_ms']:>9.1f}  {r['over_bare_ms']:>9.1f}  "
              f"{', '.join(r['heavy_modules']) or '-'}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"python": platform.python_version(), "runs": args.runs, "rows": rows}, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
