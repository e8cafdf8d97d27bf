"""`isolated-env bench`: the README's figures are the benchmarks' JSON, and the verb runs and renders."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from isolated_env import _bench

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "isolated_env.cli", "bench"]


def test_the_readme_table_is_the_committed_json() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(_bench.BEGIN) + len(_bench.BEGIN) : readme.index(_bench.END)].strip()
    rendered = _bench.measured_table(_bench.load(ROOT / "benchmarks" / "results"))
    assert block == rendered, (
        "README's Measured table differs from benchmarks/results: run `isolated-env bench --render-only`"
    )
    assert "not measured" not in block


def _project(tmp_path: Path, scripts: dict[str, str]) -> Path:
    bench = tmp_path / "benchmarks"
    (bench / "results").mkdir(parents=True)
    for name, body in scripts.items():
        (bench / f"bench_{name}.py").write_text(textwrap.dedent(body))
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(f"# p\n\n{_bench.BEGIN}\nold\n{_bench.END}\n\nafter\n")
    return bench


WRITES = """
    import json, pathlib, sys
    out = pathlib.Path(__file__).parent / "results" / "postgres_redis.json"
    quick = "--quick" in sys.argv
    out.write_text(json.dumps({"command": " ".join(sys.argv), "results": {
        "isolated_postgres test": {"p50_ms": 0.5 if quick else 0.25},
        "pytest-postgresql test": {"p50_ms": 50.0},
    }}))
    print("table printed")
"""


def test_it_runs_each_script_then_renders_readme_docs_and_plots(tmp_path: Path) -> None:
    bench = _project(tmp_path, {"postgres_redis": WRITES, "other": "print('ran')\n"})
    done = subprocess.run([*CLI, "postgres_redis", "--dir", str(bench), "--quick"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "== bench_postgres_redis.py" in done.stdout and "table printed" in done.stdout
    assert "ran" not in done.stdout.split("table printed")[1]  # only the named benchmark ran
    readme = (tmp_path / "README.md").read_text()
    row = ("| PostgreSQL, transaction mode (an INSERT and a SELECT) | 0.50 ms "
           "| pytest-postgresql: 50 ms (\u2248 100\u00d7 more) |")
    assert row in readme
    assert "old" not in readme and readme.endswith("\n\nafter\n")
    docs = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "![per test](benchmarks/per_test.png)" in docs
    assert "| results.isolated_postgres test.p50_ms | 0.500 |" in docs
    assert "bench_postgres_redis.py --quick` | 0 |" in docs  # the last run, with its exit status
    png = (tmp_path / "docs" / "benchmarks" / "per_test.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_a_failing_script_fails_the_verb_and_is_named(tmp_path: Path) -> None:
    bench = _project(tmp_path, {"broken": "raise SystemExit(3)\n"})
    done = subprocess.run([*CLI, "--dir", str(bench)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "bench_broken.py failed" in done.stderr
    row = "| PostgreSQL, transaction mode (an INSERT and a SELECT) | not measured | pytest-postgresql |"
    assert row in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown benchmark nope; choose from postgres_redis"),
        (["--dir", "/nonexistent/benchmarks"], "no benchmarks at /nonexistent/benchmarks"),
    ],
)
def test_bad_input_says_how_to_fix_it(tmp_path: Path, args: list[str], message: str) -> None:
    bench = _project(tmp_path, {"postgres_redis": WRITES})
    done = subprocess.run([*CLI, "--dir", str(bench), *args], capture_output=True, text=True)
    assert done.returncode == 2
    assert message in done.stderr


def test_a_readme_without_markers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(_bench.ConfigError, match="has no <!-- measured:begin -->"):
        _bench.splice("# no table\n", "x")


def test_a_broken_results_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(_bench.ConfigError, match=r"x\.json: not readable JSON"):
        _bench.load(tmp_path)


def test_rows_read_named_rows_and_sums() -> None:
    results = {
        "ws_http": {"rows": [{"name": "isolated_http (server + httpx client)", "total_p50_ms": 0.125}]},
        "postgres_database": {"warm_pool_typical_tests": {"lease": {"p50_ms": 0.2}, "release": {"p50_ms": 0.3}}},
    }
    cells = {row.label: row.cells(results) for row in _bench.ROWS}
    assert cells["HTTP server + httpx client"][1] == "0.12 ms"
    assert cells["PostgreSQL, private database from a template (lease + release)"][1] == "0.50 ms"
    assert cells["Redis, private logical database (a SET and a GET)"][1] == "not measured"
