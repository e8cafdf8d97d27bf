"""``isolated-env bench``: run the benchmarks, then render their JSON into docs and the README.

The benchmark scripts live in a checkout's ``benchmarks/`` (each prints its table and writes
``benchmarks/results/<name>.json``). This module runs them, then turns the JSON into
``docs/benchmarks.md`` with PNG plots (matplotlib, the ``bench`` extra) and into the README's
"Measured" table between its ``<!-- measured:begin -->`` / ``<!-- measured:end -->`` markers, so the
figures a reader sees are the figures the scripts wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ConfigError, MissingDependencyError

BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"
Results = dict[str, Any]


def _get(results: Results, path: str) -> float | None:
    """``results["a.json"]["b"]["c"]`` for ``"a:b.c"``; a row name in ``rows`` for ``"a:rows[name].field"``."""
    name, _, keys = path.partition(":")
    node: Any = results.get(name)
    for key in keys.split("."):
        if node is None:
            return None
        if key.startswith("rows[") and isinstance(node, dict):
            wanted = key[5:-1]
            node = next((row for row in node.get("rows", ()) if row.get("name") == wanted), None)
        elif isinstance(node, dict):
            node = node.get(key)
        else:
            return None
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _sum(*paths: str) -> Callable[[Results], float | None]:
    def total(results: Results) -> float | None:
        values = [_get(results, path) for path in paths]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    return total


@dataclass(frozen=True)
class Row:
    """One line of the README's table: what is measured, our figure and the peer's, from the JSON."""

    label: str
    ours: Callable[[Results], float | None]
    peer_name: str = ""
    peer: Callable[[Results], float | None] | None = None

    def cells(self, results: Results) -> tuple[str, str, str]:
        ours = self.ours(results)
        peer = self.peer(results) if self.peer is not None else None
        if peer is None or not self.peer_name:
            versus = self.peer_name or "—"
        elif ours:
            versus = f"{self.peer_name}: {_ms(peer)} (\u2248 {peer / ours:,.0f}\u00d7 more)"
        else:
            versus = f"{self.peer_name}: {_ms(peer)}"
        return self.label, _ms(ours), versus


def _ms(value: float | None) -> str:
    if value is None:
        return "not measured"
    if value >= 10:
        return f"{value:,.0f} ms"
    return f"{value:.2f} ms" if value < 1 else f"{value:.1f} ms"


def _field(path: str) -> Callable[[Results], float | None]:
    return lambda results: _get(results, path)


ROWS = (
    Row("PostgreSQL, transaction mode (an INSERT and a SELECT)",
        _field("postgres_redis:results.isolated_postgres test.p50_ms"),
        "pytest-postgresql", _field("postgres_redis:results.pytest-postgresql test.p50_ms")),
    Row("PostgreSQL, private database from a template (lease + release)",
        _sum("postgres_database:warm_pool_typical_tests.lease.p50_ms",
             "postgres_database:warm_pool_typical_tests.release.p50_ms"),
        "pytest-postgresql", _field("postgres_database:pytest_postgresql.per_test.p50_ms")),
    Row("Redis, private logical database (a SET and a GET)",
        _field("postgres_redis:results.isolated_redis test.p50_ms"),
        "pytest-redis", _field("postgres_redis:results.pytest-redis test.p50_ms")),
    Row("ClickHouse, private database (chdb engine over HTTP)",
        _field("clickhouse:lease_plus_release_ms.p50_ms")),
    Row("WebSocket server + connected client",
        _field("ws_http:rows[isolated_ws (server + connected client)].total_p50_ms"), "the original report: 200 ms"),
    Row("HTTP server + httpx client", _field("ws_http:rows[isolated_http (server + httpx client)].total_p50_ms")),
    Row("PostgreSQL + Redis + WS + HTTP + directory together",
        _field("ws_http:rows[comprehensive Environment (pg+redis+ws+http+fs)].total_p50_ms"),
        "the original report: 500 ms"),
)


def load(results_dir: Path) -> Results:
    """Every ``*.json`` of a results directory, by file stem."""
    found: Results = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            found[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not readable JSON ({exc}); run its benchmark again") from exc
    return found


def measured_table(results: Results) -> str:
    """The README's "Measured" table, from the results."""
    lines = ["| per test (setup, its queries, teardown), median | isolated_env | peer, same run |", "|---|---|---|"]
    lines += ["| " + " | ".join(row.cells(results)) + " |" for row in ROWS]
    return "\n".join(lines)


def splice(text: str, block: str, *, where: str = "README.md") -> str:
    """``text`` with what lies between the measured markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ConfigError(f"{where} has no {BEGIN} … {END} markers: put them around its Measured table")
    return text[: start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def scripts(bench_dir: Path, only: Sequence[str] = ()) -> list[Path]:
    """The benchmark scripts to run: all of ``bench_*.py``, or those named in ``only``."""
    if not bench_dir.is_dir():
        raise ConfigError(
            f"no benchmarks at {bench_dir}: `isolated-env bench` runs the benchmarks/ of an isolated_env "
            "checkout; run it from the checkout or give --dir"
        )
    every = {p.stem.removeprefix("bench_"): p for p in sorted(bench_dir.glob("bench_*.py"))}
    unknown = [name for name in only if name not in every]
    if unknown:
        raise ConfigError(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(every)}")
    return [every[name] for name in only] if only else list(every.values())


def run(chosen: Sequence[Path], *, python: str = sys.executable, quick: bool = False) -> list[dict[str, Any]]:
    """Run each script in its own process (its output passes through); what ran, how long, how it ended."""
    ran = []
    for script in chosen:
        command = [python, str(script), *(["--quick"] if quick and _takes_quick(script) else [])]
        print(f"== {script.name}", flush=True)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        code = subprocess.run(command, check=False).returncode
        ran.append({"script": script.name, "command": " ".join(command[1:]), "exit": code,
                    "seconds": round(time.perf_counter() - start, 1), "load_average": round(load_before, 2)})
    return ran


def _takes_quick(script: Path) -> bool:
    return "--quick" in script.read_text()


def plots(results: Results, out_dir: Path) -> list[Path]:
    """PNG plots of the results (needs matplotlib: ``pip install 'isolated-env[bench]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "bench", "isolated-env bench") from exc
    from ._bench_plots import draw

    out_dir.mkdir(parents=True, exist_ok=True)
    return draw(plt, results, ROWS, out_dir)


def report(results: Results, images: Sequence[Path], docs_path: Path, ran: Sequence[dict[str, Any]] = ()) -> str:
    """docs/benchmarks.md: the measured table, the plots, and what each results file holds."""
    from ._bench_plots import sections

    parts = [
        "# Benchmarks",
        "",
        "<!-- generated by `isolated-env bench`; edit isolated_env/_bench.py, not this file -->",
        "",
        "Medians on this project's 2-core machine, each against its peer in the same process. "
        "`isolated-env bench` (or `make bench`) runs `benchmarks/bench_*.py`, each of which prints its "
        "table and writes `benchmarks/results/<name>.json`; this page and the README's table are rendered "
        "from that JSON.",
        "",
        measured_table(results),
        "",
    ]
    for image in images:
        parts += [f"![{image.stem.replace('_', ' ')}]({os.path.relpath(image, docs_path.parent)})", ""]
    parts += sections(results)
    if ran:
        parts += ["## Last run", "", "| script | exit | seconds | load average at start |", "|---|---|---|---|"]
        parts += [f"| `{r['command']}` | {r['exit']} | {r['seconds']} | {r['load_average']} |" for r in ran]
        parts.append("")
    return "\n".join(parts)


def main(*, bench_dir: Path, only: Sequence[str], render_only: bool, quick: bool,
         readme: Path, docs: Path) -> int:
    """The CLI verb: run (unless ``render_only``), then render; non-zero when a script failed."""
    ran = [] if render_only else run(scripts(bench_dir, only), quick=quick)
    results = load(bench_dir / "results")
    images = plots(results, docs.parent / "benchmarks")
    docs.write_text(report(results, images, docs, ran))
    if readme.exists():
        readme.write_text(splice(readme.read_text(), measured_table(results), where=str(readme)))
    print(f"wrote {docs}, {len(images)} plots and the table in {readme}")
    failed = [r["script"] for r in ran if r["exit"] != 0]
    if failed:
        print(f"isolated-env bench: {', '.join(failed)} failed", file=sys.stderr)
    return 1 if failed else 0
