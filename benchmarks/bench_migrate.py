"""`isolated-env migrate`: scan speed on a generated tree of 5,000 test files, precision and recall of
the service classification on the labelled corpus, and the rewrite round trip on examples/mock_suite.

    python benchmarks/bench_migrate.py [--files 5000] [--runs 3] [--jobs 2] [--no-rewrite]

The tree is generated on tmpfs (seeded, so every run scans the same files): 60% are copies of the
corpus files (every mock form, dense), 25% small mock-based test files with patched services and
call asserts, 15% plain tests without mocks. The scan is timed with ``--jobs`` workers and, as the
peer in the same process, with one worker on a tenth of the tree (the ratio is per file). CPU
seconds (this process and its workers) are given beside the wall time: on a machine shared with
other work the wall time measures the neighbours too, CPU time per core what the scan itself costs.
Prints a table and writes benchmarks/results/migrate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "migrate.json"
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "migrate")]

from _labels import CORPUS, evaluate  # noqa: E402

from isolated_env.migrate import rewrite, scan  # noqa: E402

TARGETS = [
    "app.db.asyncpg.connect",
    "app.cache.redis.Redis.get",
    "app.clients.httpx.AsyncClient.post",
    "app.analytics.clickhouse_connect.get_client",
    "app.llm.openai.AsyncOpenAI",
    "app.files.open",
    "app.jobs.time.sleep",
    "app.pricing.discount_for",
    "app.ws.websockets.connect",
]

SMALL = """\
from unittest import mock
from unittest.mock import MagicMock, patch

import pytest

from app import service_{n}


@patch("{a}")
def test_calls_{n}(m):
    service_{n}.run()
    m.assert_called_once()


def test_with_{n}(mocker, monkeypatch):
    mocker.patch("{b}")
    monkeypatch.setenv("SERVICE_{n}_URL", "http://x")
    client = MagicMock()
    with mock.patch.object(service_{n}, "helper", return_value={n}):
        assert service_{n}.compute(client) == {n}


@pytest.mark.parametrize("x", [1, 2, 3])
def test_plain_{n}(x):
    assert x * {n} == {n} * x
"""

PLAIN = """\
import pytest

from app import model_{n}


def test_roundtrip_{n}():
    value = model_{n}.Model(id={n})
    assert model_{n}.Model.parse(value.dump()) == value


@pytest.mark.parametrize("n", range(5))
def test_sizes_{n}(n):
    assert len(model_{n}.chunk(list(range(n)))) <= n
"""


def generate(root: Path, count: int) -> int:
    """``count`` test files under ``root`` in packages of 100; their total number of lines."""
    rng = random.Random(5000)
    corpus = [p.read_text() for p in sorted(CORPUS.glob("*.py"))]
    lines = 0
    for i in range(count):
        pick = rng.random()
        if pick < 0.6:
            text = corpus[i % len(corpus)].replace("def test_", f"def test_{i}_")
        elif pick < 0.85:
            a, b = rng.sample(TARGETS, 2)
            text = SMALL.format(n=i, a=a, b=b)
        else:
            text = PLAIN.format(n=i)
        path = root / f"pkg_{i // 100:03d}" / f"test_gen_{i:05d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        lines += text.count("\n")
    return lines


def bench_scan(files: int, runs: int, jobs: int) -> dict[str, object]:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    tree = Path(tempfile.mkdtemp(prefix="ie-bench-migrate-", dir=base))
    try:
        lines = generate(tree, files)
        walls, cpus = [], []
        sites = 0
        for _ in range(runs):
            before = _cpu()
            started = time.perf_counter()
            report = scan([tree], jobs=jobs)
            walls.append(time.perf_counter() - started)
            cpus.append(_cpu() - before)
            sites = len(report.sites)
        peer_files = sorted(tree.rglob("test_*.py"))[: max(1, files // 10)]
        started = time.perf_counter()
        scan(peer_files, jobs=1)
        one = time.perf_counter() - started
    finally:
        shutil.rmtree(tree)
    median = statistics.median(walls)
    cpu = statistics.median(cpus)
    per_file_parallel = median / files * 1000
    per_file_one = one / len(peer_files) * 1000
    return {
        "files": files,
        "lines": lines,
        "sites": sites,
        "jobs": jobs,
        "runs": runs,
        "wall_s_median": round(median, 2),
        "wall_s_all": [round(w, 2) for w in walls],
        "ms_per_file": round(per_file_parallel, 3),
        "ms_per_file_one_worker": round(per_file_one, 3),
        "speedup_vs_one_worker": round(per_file_one / per_file_parallel, 2),
        "target_s": 60,
        "cpu_s_median": round(cpu, 1),
        "cpu_s_per_core": round(cpu / jobs, 1),
        "met": median <= 60,
        "met_on_cpu_time": cpu / jobs <= 60,
    }


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the scan's worker processes)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def bench_classification() -> dict[str, object]:
    result = evaluate()
    return {
        "labels": len(result.expected),
        "reported": len(result.reported),
        "correct": len(result.correct),
        "precision": round(result.precision, 4),
        "recall": round(result.recall, 4),
        "target": 0.95,
        "missed": sorted(map(list, result.expected - result.reported)),
        "wrong": sorted(map(list, result.reported - result.expected)),
        "met": result.precision >= 0.95 and result.recall >= 0.95,
    }


def bench_rewrite() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "mock_suite"
        shutil.copytree(ROOT / "examples" / "mock_suite", project, ignore=shutil.ignore_patterns("__pycache__"))
        before = len(scan([project / "tests"]).sites)
        started = time.perf_counter()
        result = rewrite([project / "tests"])
        took = time.perf_counter() - started
        after = len(scan([project / "tests"]).sites)
        suite = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=900,
        )
        again = rewrite([project / "tests"], check=True)
        summary = suite.stdout.strip().splitlines()[-1] if suite.stdout.strip() else suite.stderr[-200:]
    return {
        "sites_before": before,
        "sites_after": after,
        "kept": len(result.kept),
        "reverted": len(result.reverted),
        "suggested": len(result.suggested),
        "rewrite_s": round(took, 1),
        "suite_after": summary,
        "suite_passed": suite.returncode == 0,
        "second_run_pending": len(again.pending),
        "met": suite.returncode == 0 and not again.pending,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-rewrite", action="store_true", help="skip the round trip (it needs the services)")
    args = parser.parse_args()
    out: dict[str, object] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    }
    out["scan"] = s = bench_scan(args.files, args.runs, args.jobs)
    out["classification"] = c = bench_classification()
    if not args.no_rewrite:
        out["rewrite"] = bench_rewrite()
    rows = [
        (
            "scan",
            f"{s['files']} files, {s['lines']} lines, {s['sites']} sites, {s['jobs']} workers",
            f"median {s['wall_s_median']} s wall of {s['runs']} (target <= 60 s), {s['cpu_s_median']} s CPU = "
            f"{s['cpu_s_per_core']} s per core; {s['ms_per_file']} ms/file, "
            f"x{s['speedup_vs_one_worker']} vs one worker",
        ),
        (
            "classification",
            f"{c['labels']} labelled sites",
            f"precision {c['precision']:.1%}, recall {c['recall']:.1%} (target >= 95% each)",
        ),
    ]
    if "rewrite" in out:
        r = out["rewrite"]
        assert isinstance(r, dict)
        rows.append(
            (
                "rewrite round trip",
                f"examples/mock_suite: {r['sites_before']} -> {r['sites_after']} sites",
                f"{r['kept']} kept, {r['reverted']} reverted, {r['suggested']} suggested in {r['rewrite_s']} s;"
                f" suite after: {r['suite_after']}; second run pending {r['second_run_pending']}",
            )
        )
    width = max(len(r[0]) for r in rows)
    for name, what, figure in rows:
        print(f"{name:<{width}}  {what}\n{'':<{width}}  {figure}")
    print(f"(load average {out['machine']['load_avg_1m']} on {os.cpu_count()} cores)")  # type: ignore[index]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
