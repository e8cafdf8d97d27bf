"""What a test pays for isolated_env's fixtures under each runner a user's project may use: real
pytest runs (fresh processes) of a generated project of N tests, per fixture and runner.

    python benchmarks/bench_runners.py [--tests 200] [--repeats 3] [--runners ...] [--kinds ...]
                                       [--baseline DIR]

Runners: pytest-asyncio 1.x with its default loop scope (a new event loop per test), pytest-asyncio
1.x with a session loop, pytest-asyncio 0.23 with a loop per test, and anyio's plugin (the loop
this project's own suite runs on). Kinds: ``transaction`` (``isolated_database``), ``redis``
(``isolated_redis``), ``database`` (a user fixture entering ``isolated_postgres(mode="database")``)
and ``three`` (``isolated_database``, ``isolated_redis`` and ``isolated_fs`` together), each test running
one query per resource. ``database`` tests back to back (nothing else in the body) take databases
faster than any server makes them: that row is the clone throughput (bench_postgres_database.py's
subject), not the lease. ``database-10ms`` is the same test with 10 ms of other work in its body,
as an integration test has, measured against trivial tests with the same 10 ms: what a lease costs
with the warm pool keeping up. Targets: at most 1 ms (Redis 0.5 ms; database mode: ``database-10ms``)
over the bare test under a loop per test; ``x bare`` at most 1.3 for ``transaction`` and 1.6 for
``three`` under any runner.

The per-test cost is (time of the run's test loop - the same for a project of N trivial tests under
the same runner) / N, so pytest's and the runner's own per-test work cancel out; the test loop is
timed by a conftest hook around ``pytest_runtestloop`` (process start, import and collection are
left out; the first connection of a run is in). ``cpu ms`` is the same difference in the pytest
process's own CPU time: steadier on a busy machine, but blind to the servers' side (a backend's
start-up) and to waits. Medians over the repeats, runs interleaved so that
machine noise hits every row alike. The embedded servers are kept up for the whole benchmark
(``isolated-env up``), as in an edit-test loop. Prints a table and writes
benchmarks/results/runners.json.

``--baseline DIR`` (a checkout of an earlier version, e.g. ``git archive main | tar -x -C DIR``)
runs every cell a second time with DIR's package first on the path, interleaved with this one's,
and reports each row's baseline figures beside it: before and after, in one run on one machine.

The venvs are the ones tests/adapters/test_runners.py builds from PyPI (cached under
``$ISOLATED_ENV_RUNNERS_CACHE``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "runners.json"
TARGETS_MS = {"transaction": 1.0, "redis": 0.5, "database-10ms": 1.0}
# What a kind's per-test cost is measured against: the trivial test of the same body length.
BASELINES = {"database-10ms": "trivial-10ms"}
_BASES = set(BASELINES.values()) | {"trivial"}
# Per-test wall as a ratio to the bare test of the same runner (any runner).
TARGET_RATIOS = {"transaction": 1.3, "three": 1.6}

RUNNERS = {
    # name: (venv cell, pytest.ini body, test decorator, extra pytest arguments)
    "asyncio-function": ("1.x", "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n", "", []),
    "asyncio-session": ("1.x", "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
                        "asyncio_default_test_loop_scope = session\n", "", []),
    "asyncio-0.23-function": ("0.23", "asyncio_mode = auto\n", "", []),
    "anyio": ("1.x", "", "@pytest.mark.anyio\n", ["-p", "no:asyncio"]),
}

BODIES = {
    "trivial": ("", "pass"),
    "trivial-10ms": ("", "await anyio.sleep(0.01)"),
    "transaction": ("isolated_database", 'assert await isolated_database.fetchval("select 1") == 1'),
    "redis": ("isolated_redis", 'assert await isolated_redis.ping()'),
    "database": ("private_database", 'assert await private_database.fetchval("select 1") == 1'),
    "database-10ms": ("private_database", 'assert await private_database.fetchval("select 1") == 1\n'
                             '    await anyio.sleep(0.01)'),
    "three": ("isolated_database, isolated_redis, isolated_fs",
              'assert await isolated_database.fetchval("select 1") == 1\n    assert await isolated_redis.ping()\n'
              '    await isolated_fs.write_text("a.txt", "x")'),
}

CONFTEST = '''
import json, os, time
import pytest
import isolated_env as ie


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def private_database(isolated_env):
    return await isolated_env.enter(ie.isolated_postgres(mode="database"))


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    started, cpu = time.perf_counter(), time.process_time()
    try:
        return (yield)
    finally:
        with open(os.environ["BENCH_RUNNERS_OUT"], "w") as out:
            json.dump({"loop_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}, out)
'''


def _venv_builder():  # type: ignore[no-untyped-def]
    path = ROOT / "tests" / "adapters" / "test_runners.py"
    spec = importlib.util.spec_from_file_location("_bench_test_runners", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._venv


def _project(where: Path, runner: str, kind: str, tests: int) -> None:
    _cell, ini, mark, _args = RUNNERS[runner]
    fixture, body = BODIES[kind]
    where.mkdir(parents=True, exist_ok=True)
    (where / "pytest.ini").write_text("[pytest]\n" + ini)
    (where / "conftest.py").write_text(CONFTEST)
    source = ["import anyio", "import pytest", ""]
    for n in range(tests):
        source.append(f"{mark}async def test_{n}({fixture}):\n    {body}\n")
    (where / "test_generated.py").write_text("\n".join(source))


def _run(
    python: Path, where: Path, runner: str, env: dict[str, str], source: str | None = None
) -> tuple[float, float, float]:
    out = where / "timing.json"
    env = env | {"BENCH_RUNNERS_OUT": str(out)} | ({"PYTHONPATH": source} if source else {})
    args = [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *RUNNERS[runner][3]]
    started = time.perf_counter()
    result = subprocess.run(args, cwd=where, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{runner} run in {where} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    timing = json.loads(out.read_text())
    return timing["loop_s"], timing["cpu_s"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runners", nargs="*", default=list(RUNNERS), choices=list(RUNNERS))
    parser.add_argument("--baseline", default=None, help="a checkout of an earlier version to compare with")
    parser.add_argument("--kinds", nargs="*", default=[k for k in BODIES if k not in _BASES],
                        choices=[k for k in BODIES if k not in _BASES])
    args = parser.parse_args()
    venv = _venv_builder()
    pythons = {runner: venv(RUNNERS[runner][0]) for runner in args.runners}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    env["ISOLATED_ENV_REQUIRE"] = "1"
    kinds = ["trivial", *sorted({BASELINES[k] for k in args.kinds if k in BASELINES}), *args.kinds]
    any_python = next(iter(pythons.values()))
    subprocess.run([str(any_python), "-m", "isolated_env.cli", "up", "postgres", "redis"], env=env, check=True,
                   capture_output=True)
    sources: dict[str, str | None] = {"": None}
    if args.baseline:
        sources["baseline"] = str(Path(args.baseline).resolve())
    cells = [(r, k, s) for r in args.runners for k in kinds for s in sources]
    loop_s: dict[tuple[str, str, str], list[float]] = {cell: [] for cell in cells}
    wall_s: dict[tuple[str, str, str], list[float]] = {cell: [] for cell in cells}
    cpu_s: dict[tuple[str, str, str], list[float]] = {cell: [] for cell in cells}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-runners-") as tmp:
            for runner in args.runners:
                for kind in kinds:
                    _project(Path(tmp) / runner / kind, runner, kind, args.tests)
            for _ in range(args.repeats):
                for runner, kind, source in cells:
                    loop, cpu, wall = _run(pythons[runner], Path(tmp) / runner / kind, runner, env, sources[source])
                    loop_s[(runner, kind, source)].append(loop)
                    cpu_s[(runner, kind, source)].append(cpu)
                    wall_s[(runner, kind, source)].append(wall)
    finally:
        subprocess.run([str(any_python), "-m", "isolated_env.cli", "down", "postgres", "redis"], env=env,
                       capture_output=True)
    rows = [_row(args, runner, kind, loop_s, cpu_s, wall_s, source)
            for runner in args.runners for kind in args.kinds for source in sources]
    print(f"{'runner':<22} {'kind':<12} {'source':<8} {'per test ms':>11} {'x bare':>6} {'cpu ms':>7} {'target':>8} "
          f"{'loop s':>7} {'trivial s':>9}")
    for r in rows:
        targets = [f"{r['target_ms']:.1f}"] if r["target_ms"] is not None else []
        targets += [f"{r['target_ratio']}x"] if r["target_ratio"] is not None else []
        target = "/".join(targets) or "-"
        print(f"{r['runner']:<22} {r['kind']:<12} {r['source'] or 'this':<8} {r['per_test_ms']:>11.2f} "
              f"{r['ratio_to_bare']:>6.2f} {r['per_test_cpu_ms']:>7.2f} {target:>8} {r['loop_s']:>7.2f} "
              f"{r['trivial_loop_s']:>9.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "python": platform.python_version(), "tests": args.tests, "repeats": args.repeats,
        "load_average": [round(x, 1) for x in os.getloadavg()], "rows": rows,
    }, indent=2))
    print(f"\nwrote {RESULTS}")


def _row(args: argparse.Namespace, runner: str, kind: str, loop_s: dict[tuple[str, str, str], list[float]],
         cpu_s: dict[tuple[str, str, str], list[float]], wall_s: dict[tuple[str, str, str], list[float]],
         source: str) -> dict[str, object]:
    baseline = BASELINES.get(kind, "trivial")
    base = statistics.median(loop_s[(runner, baseline, source)])
    base_cpu = statistics.median(cpu_s[(runner, baseline, source)])
    loop = statistics.median(loop_s[(runner, kind, source)])
    cpu = statistics.median(cpu_s[(runner, kind, source)])
    return {
        "runner": runner, "kind": kind, "source": source,
        "per_test_ms": round((loop - base) / args.tests * 1000, 3),
        "per_test_cpu_ms": round((cpu - base_cpu) / args.tests * 1000, 3),
        "ratio_to_bare": round(loop / base, 2),
        "target_ms": TARGETS_MS.get(kind) if runner.endswith("function") else None,
        "target_ratio": TARGET_RATIOS.get(kind),
        "loop_s": round(loop, 3), "trivial_loop_s": round(base, 3),
        "wall_s": round(statistics.median(wall_s[(runner, kind, source)]), 3),
        "samples_s": [round(s, 3) for s in loop_s[(runner, kind, source)]],
    }


if __name__ == "__main__":
    main()
