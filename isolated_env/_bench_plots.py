"""The plots and per-file sections of docs/benchmarks.md (see :mod:`isolated_env._bench`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

WANTED = ("p50_ms", "p95_ms", "_per_s", "per_test_ms", "ratio_to_bare")
"""Which leaves of a results file its section lists: medians, tails, rates and ratios."""
MAX_LINES = 30


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            label = value.get("name") or " ".join(
                str(value[k]) for k in ("runner", "kind", "source") if value.get(k)
            ) if isinstance(value, dict) else ""
            yield from _leaves(value, f"{path}[{label or index}]")
    elif isinstance(node, int | float) and not isinstance(node, bool) and path.endswith(WANTED):
        yield path, float(node)


def sections(results: dict[str, Any]) -> list[str]:
    """One section per results file: its command and its medians, tails, rates and ratios."""
    parts: list[str] = []
    for name, data in results.items():
        parts += [f"## {name}", ""]
        if isinstance(data, dict) and data.get("command"):
            parts += [f"`{data['command']}`", ""]
        leaves = list(_leaves(data))
        if not leaves:
            parts += ["(no medians, rates or ratios in this file)", ""]
            continue
        parts += ["| figure | value |", "|---|---|"]
        parts += [f"| {path} | {value:,.3f} |" for path, value in leaves[:MAX_LINES]]
        if len(leaves) > MAX_LINES:
            parts.append(f"| … {len(leaves) - MAX_LINES} more in `benchmarks/results/{name}.json` | |")
        parts.append("")
    return parts


def draw(plt: Any, results: dict[str, Any], rows: Sequence[Any], out_dir: Path) -> list[Path]:
    """Write the plots the results allow; return their paths."""
    written = []
    pairs = [(row.label, row.ours(results), row.peer(results) if row.peer else None, row.peer_name) for row in rows]
    pairs = [p for p in pairs if p[1] is not None]
    if pairs:
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(pairs) + 1.2))
        ys = range(len(pairs))
        ax.barh([y + 0.2 for y in ys], [p[1] for p in pairs], height=0.4, label="isolated_env")
        peers = [(y - 0.2, p[2]) for y, p in zip(ys, pairs, strict=True) if p[2] is not None]
        if peers:
            ax.barh([y for y, _ in peers], [v for _, v in peers], height=0.4, label="peer, same run")
        ax.set_yticks(list(ys), [p[0] for p in pairs], fontsize=8)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("ms per test (median, log scale)")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
        written.append(_save(plt, fig, out_dir / "per_test.png"))
    runners = [r for r in (results.get("runners") or {}).get("rows", ()) if not r.get("source")]
    if runners:
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(runners) + 1.2))
        labels = [f"{r['runner']} · {r['kind']}" for r in runners]
        ax.barh(labels, [r["per_test_ms"] for r in runners])
        ax.invert_yaxis()
        ax.set_xlabel("ms per test over the bare test, inside pytest")
        written.append(_save(plt, fig, out_dir / "runners.png"))
    scale = [r for r in (results.get("scale") or {}).get("rows", ()) if r.get("processes") == 1]
    if scale:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
        for profile in dict.fromkeys(r["profile"] for r in scale):
            mine = sorted((r for r in scale if r["profile"] == profile), key=lambda r: r["concurrency"])
            xs = [r["concurrency"] for r in mine]
            left.plot(xs, [r["per_test_ms"] for r in mine], marker="o", label=profile)
            right.plot(xs, [r["setup_p95_ms"] for r in mine], marker="o", label=profile)
        for ax, label in ((left, "ms of wall per test"), (right, "setup p95, ms (capacity waits included)")):
            ax.set_xscale("log")
            ax.set_xlabel("concurrent environments")
            ax.set_ylabel(label)
        left.legend(fontsize=8)
        written.append(_save(plt, fig, out_dir / "scale.png"))
    database = results.get("postgres_database") or {}
    ours = (database.get("back_to_back_empty_tests") or {}).get("tests_per_s")
    peer = ((database.get("pytest_postgresql") or {}).get("per_test") or {}).get("p50_ms")
    if ours and peer:
        fig, ax = plt.subplots(figsize=(6, 2.2))
        ax.barh(["pytest-postgresql", "isolated_env database mode"], [1000 / peer, ours])
        ax.set_xlabel("tests per second, back to back")
        written.append(_save(plt, fig, out_dir / "database_mode.png"))
    return written


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
