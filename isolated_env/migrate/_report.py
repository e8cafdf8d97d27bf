"""A scan as people read it (a table), as CI reads it (JSON), and as editors read it (SARIF 2.1.0)."""

from __future__ import annotations

import json
from typing import Any

from ._catalog import REPLACEMENTS, SERVICES
from ._scan import Report

__all__ = ["render", "sarif", "table"]

_TOP_FILES = 15


def _rows(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def _delta(now: int, before: dict[str, Any] | None, section: str, key: str) -> str:
    if before is None:
        return ""
    was = before.get(section, {}).get(key, 0) if section else before.get(key, 0)
    return f"{now - was:+d}" if now != was else "="


def table(report: Report, baseline: dict[str, Any] | None = None) -> str:
    totals = report.totals()
    lines = [
        f"{totals['sites']} mock sites in {totals['files_with_sites']} of {totals['files']} test files; "
        f"{totals['tests_with_sites']} of {totals['tests']} tests use one"
    ]
    extra = ["vs baseline"] if baseline is not None else []
    services = [
        [s, str(n), *([_delta(n, baseline, "by_service", s)] if extra else []), REPLACEMENTS[s]]
        for s in SERVICES
        if (n := totals["by_service"].get(s, 0)) or (baseline or {}).get("by_service", {}).get(s)
    ]
    lines += ["", *_rows(services, ["service", "sites", *extra, "replace with"])]
    kinds = [
        [k, str(n), *([_delta(n, baseline, "by_kind", k)] if extra else [])]
        for k, n in sorted(totals["by_kind"].items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    lines += ["", *_rows(kinds, ["kind", "sites", *extra])]
    files = sorted(totals["by_file"].items(), key=lambda kv: (-kv[1], kv[0]))
    lines += ["", *_rows([[f, str(n)] for f, n in files[:_TOP_FILES]], ["file", "sites"])]
    if len(files) > _TOP_FILES:
        lines.append(f"... and {len(files) - _TOP_FILES} more files (--format json lists every site)")
    only = totals["mock_only_tests"]
    lines += ["", f"tests that assert only on mocks (call asserts, no state asserts): {len(only)}"]
    lines += [f"  {t['path']}:{t['line']} {t['test']} ({t['call_asserts']} call asserts)" for t in only]
    unresolved = totals["unresolved_targets"]
    lines += ["", f"string targets that resolve to nothing (they patch nothing): {len(unresolved)}"]
    lines += [f"  {u['path']}:{u['line']} {u['target']!r}: {u['reason']}" for u in unresolved]
    lines += [f"  (resolution: {totals['resolution']})"]
    for error in totals["errors"]:
        lines.append(f"not scanned: {error['path']}: {error['error']}")
    if baseline is not None:
        lines += ["", f"sites vs baseline: {_delta(totals['sites'], baseline, '', 'sites') or '='}"]
    return "\n".join(lines)


def _location(path: str, line: int) -> dict[str, Any]:
    return {"physicalLocation": {"artifactLocation": {"uri": path}, "region": {"startLine": line}}}


def sarif(report: Report) -> dict[str, Any]:
    """SARIF 2.1.0: one rule per service (a mock of it), one for unresolved targets, one for tests
    that assert only on mocks."""
    rules: list[dict[str, Any]] = [
        {
            "id": f"mock-{s}",
            "name": f"Mock{s.title()}",
            "shortDescription": {"text": f"a mock standing in for {s}"},
            "help": {"text": f"replace with {REPLACEMENTS[s]}"},
            "defaultConfiguration": {"level": "note" if s in {"clock", "internal"} else "warning"},
        }
        for s in SERVICES
    ]
    rules += [
        {
            "id": "unresolved-target",
            "name": "UnresolvedTarget",
            "shortDescription": {"text": "a string patch target that names nothing: it patches nothing"},
            "help": {"text": "patch the name where the code under test looks it up"},
            "defaultConfiguration": {"level": "error"},
        },
        {
            "id": "mock-only-test",
            "name": "MockOnlyTest",
            "shortDescription": {"text": "a test that asserts only on mock calls, never on state"},
            "help": {"text": "assert on what the real service holds afterwards"},
            "defaultConfiguration": {"level": "warning"},
        },
    ]
    index = {r["id"]: i for i, r in enumerate(rules)}

    def result(rule: str, text: str, path: str, line: int) -> dict[str, Any]:
        return {
            "ruleId": rule,
            "ruleIndex": index[rule],
            "level": rules[index[rule]]["defaultConfiguration"]["level"],
            "message": {"text": text},
            "locations": [_location(path, line)],
        }

    results = [
        result(f"mock-{s.service}", f"{s.kind} stands in for {s.service}{f' in {s.test}' if s.test else ''}; "
               f"{REPLACEMENTS[s.service]}", s.path, s.line)
        for s in report.sites
    ]
    results += [result("unresolved-target", f"{u.target!r} resolves to nothing: {u.reason}", u.path, u.line)
                for u in report.unresolved()]
    results += [result("mock-only-test", f"{t.name} asserts only on mock calls ({t.call_asserts})", t.path, t.line)
                for t in report.mock_only_tests()]
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "isolated-env migrate scan", "rules": rules}},
                "columnKind": "utf16CodeUnits",
                "results": results,
            }
        ],
    }


def render(report: Report, fmt: str, baseline: dict[str, Any] | None = None) -> str:
    if fmt == "json":
        return json.dumps(report.as_json(), indent=2)
    if fmt == "sarif":
        return json.dumps(sarif(report), indent=2)
    return table(report, baseline)
