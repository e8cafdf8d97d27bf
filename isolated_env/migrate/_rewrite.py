"""``migrate rewrite``: apply the rewrites of :mod:`._edits` to test files, and keep each only if the
rewritten tests pass (pytest runs them in a subprocess: every rewritten file of a project in one run,
file by file only when that run fails); a failing one is reverted and reported.

Only test files (``test_*.py``, ``*_test.py``, ``conftest.py``) are ever written. A second run
changes nothing: what was rewritten is no longer a fake. ``@patch`` of a driver's connect in a
test that asserts on state gets a suggested diff, never an edit: what replaces it is a judgement.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper

from ._catalog import classify_words
from ._edits import Candidate, Rewriter
from ._forms import literal
from ._scan import is_test_file, project_root, test_files
from ._visit import _CALL_ASSERT, _Imports, dotted

__all__ = ["RewriteResult", "rewrite"]

_CONNECTS = {"connect", "create_pool", "Redis", "StrictRedis", "from_url", "get_client", "get_async_client", "Client"}
_FIXTURE_FOR = {"postgres": "isolated_database", "redis": "isolated_redis", "clickhouse": "isolated_clickhouse"}
_TRIGGERS = ("fakeredis", "sqlite", "mock_", "patch")


@dataclasses.dataclass(frozen=True)
class Change:
    path: str
    line: int
    kind: str
    detail: str
    note: str = ""  # why it was reverted or skipped; the suggested diff


@dataclasses.dataclass
class RewriteResult:
    kept: list[Change] = dataclasses.field(default_factory=list)
    reverted: list[Change] = dataclasses.field(default_factory=list)
    skipped: list[Change] = dataclasses.field(default_factory=list)
    suggested: list[Change] = dataclasses.field(default_factory=list)
    pending: list[Change] = dataclasses.field(default_factory=list)  # --check: what a run would try

    def summary(self) -> str:
        out: list[str] = []
        for title, changes in (
            ("would rewrite (--check: nothing changed)", self.pending),
            ("rewritten, and the rewritten tests pass", self.kept),
            ("reverted: the rewritten tests failed", self.reverted),
            ("not rewritten", self.skipped),
            ("suggested, to review and apply by hand", self.suggested),
        ):
            if not changes and title.startswith(("would", "reverted", "suggested")):
                continue
            out.append(f"{title}: {len(changes)}")
            for c in changes:
                out.append(f"  {c.path}:{c.line} {c.kind}: {c.detail}")
                out += [f"      {line}" for line in c.note.splitlines() if line.strip()]
        return "\n".join(out)


def _bound(module: cst.Module) -> set[str]:
    """Names the module binds other than by import (functions, parameters, assignments)."""
    names: set[str] = set()

    class Binder(cst.CSTVisitor):
        def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
            names.add(node.name.value)

        def visit_Param(self, node: cst.Param) -> None:
            names.add(node.name.value)

        def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
            if isinstance(node.target, cst.Name):
                names.add(node.target.value)

    module.visit(Binder())
    return names


def _used(module: cst.Module) -> set[str]:
    """Names referred to outside import statements."""
    used: set[str] = set()

    class User(cst.CSTVisitor):
        def visit_Import(self, node: cst.Import) -> bool:
            return False

        def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
            return False

        def visit_Name(self, node: cst.Name) -> None:
            used.add(node.value)

    module.visit(User())
    return used


def _fix_imports(module: cst.Module, add: list[str]) -> cst.Module:
    """Drop fakeredis imports nothing uses any more; put ``add`` where the first dropped one was
    (with its blank lines), else after the last top-level import."""
    used = _used(module)
    body: list[cst.BaseStatement] = []
    at: int | None = None
    lines: Sequence[cst.EmptyLine] = ()
    for stmt in module.body:
        if isinstance(stmt, cst.SimpleStatementLine) and all(
            isinstance(s, cst.Import | cst.ImportFrom) for s in stmt.body
        ):
            kept = [s for s in (_prune(s, used) for s in stmt.body) if s is not None]
            if not kept:
                if at is None:
                    at, lines = len(body), stmt.leading_lines
                continue
            stmt = stmt.with_changes(body=kept)
        body.append(stmt)
    if at is None:
        imports = [
            i
            for i, s in enumerate(body)
            if isinstance(s, cst.SimpleStatementLine)
            and all(isinstance(x, cst.Import | cst.ImportFrom) for x in s.body)
        ]
        at = imports[-1] + 1 if imports else 0
    new = [cst.ensure_type(cst.parse_statement(s), cst.SimpleStatementLine) for s in add]
    if new:
        new[0] = new[0].with_changes(leading_lines=lines)
    elif at < len(body) and lines:
        body[at] = body[at].with_changes(leading_lines=lines)  # keep the blank lines of what was dropped
    body[at:at] = new
    return module.with_changes(body=body)


def _prune(stmt: cst.BaseSmallStatement, used: set[str]) -> cst.BaseSmallStatement | None:
    if isinstance(stmt, cst.Import):
        names = [
            a for a in stmt.names if not ((dotted(a.name) or "").startswith("fakeredis") and _alias(a) not in used)
        ]
    elif (
        isinstance(stmt, cst.ImportFrom)
        and not isinstance(stmt.names, cst.ImportStar)
        and stmt.module is not None
        and (dotted(stmt.module) or "").startswith("fakeredis")
    ):
        names = [a for a in stmt.names if _alias(a) in used]
    else:
        return stmt
    if not names:
        return None
    names[-1] = names[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
    return stmt.with_changes(names=names)


def _alias(alias: cst.ImportAlias) -> str:
    if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
        return alias.asname.name.value
    return (dotted(alias.name) or "").split(".")[0]


def _apply(source: str, enabled: set[int] | None) -> tuple[str, list[Candidate]]:
    module = cst.parse_module(source)
    imports = _Imports()
    module.visit(imports)
    aliases = imports.aliases
    bound = _bound(module)
    sync_name = next((a for a, q in aliases.items() if q == "redis"), "redis_lib" if "redis" in bound else "redis")
    async_name = next((a for a, q in aliases.items() if q == "redis.asyncio"), "redis_asyncio")
    rewriter = Rewriter(aliases, source, enabled, (sync_name, async_name))
    new = MetadataWrapper(module).visit(rewriter)
    statements = {
        "redis": "import redis",
        "redis_lib": "import redis as redis_lib",
        "redis_asyncio": "import redis.asyncio as redis_asyncio",
    }
    add = [statements[n] for n in sorted(rewriter.imports) if n not in aliases]
    if new is not module:
        new = _fix_imports(new, add)
    return new.code, rewriter.candidates


def _suggestions(path: str, source: str) -> list[Change]:
    """@patch of a driver's connect on a test that asserts on state: the diff to isolated fixtures."""
    module = cst.parse_module(source)
    imports = _Imports()
    module.visit(imports)
    found: list[Change] = []
    wrapper = MetadataWrapper(module)
    from libcst.metadata import PositionProvider

    positions = wrapper.resolve(PositionProvider)
    for node in wrapper.module.body:
        for func in (
            [node]
            if isinstance(node, cst.FunctionDef)
            else [n for n in node.body.body if isinstance(n, cst.FunctionDef)]
            if isinstance(node, cst.ClassDef)
            else []
        ):
            change = _suggest(path, func, imports.aliases, positions[func].start.line)
            if change is not None:
                found.append(change)
    return found


def _suggest(path: str, func: cst.FunctionDef, aliases: dict[str, str], line: int) -> Change | None:
    if not func.name.value.startswith("test"):
        return None
    code = cst.Module([]).code_for_node(func)
    state = [a for a in re.findall(r"^\s*assert (.*)$", code, re.M) if not _CALL_ASSERT.search(a)]
    if not state:
        return None
    patches = []  # (index among the injecting decorators, counted from the def upwards, decorator, service)
    decorators = list(func.decorators)
    injecting = 0
    for dec in reversed(decorators):
        call = dec.decorator
        if not isinstance(call, cst.Call):
            continue
        name = dotted(call.func) or ""
        head, dot, rest = name.partition(".")
        q = (aliases.get(head, head) + dot + rest).replace("mock.patch", "unittest.mock.patch")
        if not q.endswith("mock.patch") or len([a for a in call.args if a.keyword is None]) > 1:
            continue
        target = literal(call.args[0].value) if call.args else None
        service = classify_words(target) if target else None
        if target and target.rpartition(".")[2] in _CONNECTS and service in _FIXTURE_FOR:
            patches.append((injecting, dec, service))
        injecting += 1
    if not patches:
        return None
    params = list(func.params.params)
    offset = 1 if params and params[0].name.value == "self" else 0
    drop = {offset + i for i, _, _ in patches if offset + i < len(params)}
    fixtures = [cst.Param(cst.Name(_FIXTURE_FOR[s])) for _, _, s in patches]
    new_params = [p for i, p in enumerate(params) if i not in drop] + fixtures
    new_params = [p.with_changes(comma=cst.MaybeSentinel.DEFAULT) for p in new_params]
    new = func.with_changes(
        decorators=[d for d in decorators if all(d is not p for _, p, _ in patches)],
        params=func.params.with_changes(params=new_params),
    )
    diff = "".join(
        difflib.unified_diff(
            code.splitlines(True), cst.Module([]).code_for_node(new).splitlines(True), f"a/{path}", f"b/{path}", n=1
        )
    )
    services = ", ".join(sorted({s for _, _, s in patches}))
    return Change(
        path,
        line,
        "patched-connect",
        f"{func.name.value}: @patch of a {services} driver's connect with "
        f"{len(state)} state assert(s); take {', '.join(p.name.value for p in fixtures)} and seed real "
        "data instead of return values",
        diff,
    )


def _run_pytest(targets: Sequence[Path], pytest_args: Sequence[str]) -> tuple[bool, str]:
    root = project_root(targets[0])
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, targets), *pytest_args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ.copy(),
    )
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
    return done.returncode == 0, tail


_Pending = tuple[Path, str, str, list[Change]]  # a file, its source, its rewrite and the rewrite's changes


def _target(path: Path) -> Path:
    return path.parent if path.name == "conftest.py" else path


def rewrite(paths: Sequence[str | Path], *, check: bool = False, pytest_args: Sequence[str] = ()) -> RewriteResult:
    """Rewrite the fakes under ``paths``; ``check=True`` only lists what would be tried."""
    result = RewriteResult()
    files = [f for f in test_files(Path(p) for p in paths) if is_test_file(f)]
    files.sort(key=lambda f: (f.name != "conftest.py", str(f)))  # fixtures first: tests build on them
    pending: list[_Pending] = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        if not any(t in source for t in _TRIGGERS):
            continue
        shown = path.as_posix()
        try:
            code, candidates = _apply(source, None)
        except cst.ParserSyntaxError as exc:
            result.skipped.append(Change(shown, 0, "file", f"cannot parse: {str(exc).splitlines()[0]}"))
            continue
        offered = [c for c in candidates if not c.skipped]
        result.skipped += [Change(shown, c.line, c.kind, c.detail, c.skipped) for c in candidates if c.skipped]
        result.suggested += _suggestions(shown, source)
        if not offered:
            continue
        changes = [Change(shown, c.line, c.kind, c.detail) for c in offered]
        if check:
            result.pending += changes
            continue
        pending.append((path, source, code, changes))
    by_project: dict[Path, list[_Pending]] = {}
    for item in pending:
        by_project.setdefault(project_root(_target(item[0])), []).append(item)
    for items in by_project.values():
        if not _verify_together(items, result, pytest_args):
            for path, source, code, changes in items:
                _verify(path, source, code, changes, result, pytest_args)
    return result


def _verify_together(items: list[_Pending], result: RewriteResult, pytest_args: Sequence[str]) -> bool:
    """Keep every rewrite of one project's files when their tests pass together: one pytest run
    instead of one per file. False (every file as it was) when they do not: then file by file."""
    if len(items) < 2:
        return False
    targets = sorted({_target(path) for path, *_ in items})
    # A file in a directory that is itself a target (a conftest's) runs with it, once.
    targets = [t for t in targets if not any(o != t and o in t.parents for o in targets)]
    for path, _source, code, _changes in items:
        path.write_text(code, encoding="utf-8")
    ok, _tail = _run_pytest(targets, pytest_args)
    if ok:
        for *_rest, changes in items:
            result.kept += changes
        return True
    for path, source, _code, _changes in items:
        path.write_text(source, encoding="utf-8")
    return False


def _verify(
    path: Path, source: str, code: str, changes: list[Change], result: RewriteResult, pytest_args: Sequence[str]
) -> None:
    """Keep the largest set of this file's rewrites whose tests pass: all, else each one alone."""
    target = [_target(path)]
    path.write_text(code, encoding="utf-8")
    ok, tail = _run_pytest(target, pytest_args)
    if ok:
        result.kept += changes
        return
    if len(changes) == 1:
        path.write_text(source, encoding="utf-8")
        result.reverted.append(dataclasses.replace(changes[0], note=tail))
        return
    passing: set[int] = set()
    failures: dict[int, str] = {}
    for i in range(len(changes)):
        path.write_text(_apply(source, {i})[0], encoding="utf-8")
        alone, why = _run_pytest(target, pytest_args)
        if alone:
            passing.add(i)
        else:
            failures[i] = why
    if len(passing) == len(changes):  # each passes alone, but all of them together is the first run, failed
        failures.update({i: tail for i in passing})
        passing = set()
    if passing:
        path.write_text(_apply(source, passing)[0], encoding="utf-8")
        # One rewrite alone has just passed as it is; two or more must also pass together.
        together, why = _run_pytest(target, pytest_args) if len(passing) > 1 else (True, "")
        if not together:
            failures.update({i: why for i in passing})
            passing = set()
    if not passing:
        path.write_text(source, encoding="utf-8")
    for i, change in enumerate(changes):
        if i in passing:
            result.kept.append(change)
        else:
            result.reverted.append(dataclasses.replace(change, note=failures.get(i, tail)))
