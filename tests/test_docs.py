"""Every fenced code block of README.md and docs/*.md runs as written, so the docs cannot lie.

One test per block, named by file and line. A ```python block is run according to what it is:

- a complete script runs as is, in a fresh interpreter whose working directory is a scratch
  directory (the run's embedded servers are shared through the inherited state directory, and
  ``examples/custom_resource/src`` is importable as if installed);
- a pytest test file (a ``test_*`` function at module level, or a class with ``test_*`` methods)
  runs in a real pytest subprocess, in a project whose ini says ``anyio_mode = auto`` (what
  docs/pytest.md asks of a user), and must pass with nothing failed, skipped or erroring;
- ``<!-- from PATH -->`` on the line before the fence: a verbatim quote of PATH, checked to still be
  in it (PATH is run by its own tests);
- ``<!-- doc-test: FLAGS -->`` on the line(s) before the fence says what a fragment needs, where a
  reader of the source sees it:
  - ``async``: top-level ``await`` and ``async with`` are allowed, as in ``python -m asyncio``;
  - ``continues``: the block runs after the previous ```python block of the same file, in the same
    interpreter (its imports and names);
  - the comment's further lines, if any, are a template the block is put into at the line
    ``# {block}`` (keeping that line's indentation): the context the fragment assumes, e.g. the
    ``async with ie.isolated_http() as http:`` it is written inside.

Blocks in other languages (``bash``, ``text``, ``toml``, ...) are not run. An unlabelled fence, an
unknown language, or a ```python block that needs a flag it lacks fails its test with the fix.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = {"python", "py"}
NOT_RUN = {"bash", "sh", "shell", "console", "text", "toml", "ini", "cfg", "yaml", "json", "sql", "diff"}
FLAGS = {"async", "continues"}
PYTEST_INI = "[pytest]\nanyio_mode = auto\nfilterwarnings =\n    error\n"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^`\s]*)[ \t]*$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    lang: str
    code: str  # dedented by the fence's indentation
    comment: str | None = None  # the HTML comment right before the fence, without <!-- -->
    previous: Block | None = None  # the file's previous python block, for `continues`

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def quote(self) -> str | None:
        match = re.fullmatch(r"\s*from (\S+)\s*", self.comment or "")
        return match[1] if match else None

    def directive(self) -> tuple[set[str], str | None]:
        """(flags, template) from ``<!-- doc-test: ... -->``."""
        match = re.fullmatch(r"\s*doc-test:(?P<flags>[^\n]*)\n?(?P<template>.*)", self.comment or "", re.S)
        if not match:
            return set(), None
        flags = set(match["flags"].split())
        if flags - FLAGS:
            pytest.fail(f"{self.id}: unknown doc-test flag(s) {sorted(flags - FLAGS)}; known: {sorted(FLAGS)}")
        template = match["template"].strip("\n")
        return flags, template or None

    def is_pytest_file(self) -> bool:
        if self.needs_await():
            return False
        for node in ast.parse(self.code, self.id).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                return True
            if isinstance(node, ast.ClassDef) and any(
                isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
                for n in node.body
            ):
                return True
        return False

    def needs_await(self) -> bool:
        """Whether the code only compiles with top-level await allowed."""
        try:
            compile(self.code, self.id, "exec", dont_inherit=True)
        except SyntaxError:
            compile(self.code, self.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
            return True
        return False

    def source(self) -> tuple[str, bool]:
        """(the code to run, with its template and padded so tracebacks name the doc's lines; async?)."""
        flags, template = self.directive()
        body = self.code
        before = 0
        if template is not None:
            lines = template.splitlines()
            at = next((i for i, x in enumerate(lines) if x.strip() == "# {block}"), None)
            if at is None:
                pytest.fail(f"{self.id}: the doc-test template has no `# {{block}}` line")
            indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
            inner = "".join(indent + x if x.strip() else x for x in body.splitlines(keepends=True))
            body = "\n".join(lines[:at]) + "\n" + inner + "\n".join(lines[at + 1 :]) + "\n"
            before = at
        padding = max(self.line - before, 0)  # the fence is line `line`; the code starts after it
        return "\n" * padding + body, "async" in flags

    def chain(self) -> list[Block]:
        """This block and, for `continues`, the blocks it continues, first first."""
        flags, _ = self.directive()
        if "continues" not in flags:
            return [self]
        if self.previous is None:
            pytest.fail(f"{self.id}: `continues`, but no python block comes before it in {self.path}")
        return [*self.previous.chain(), self]


def blocks_of(path: Path, root: Path = ROOT) -> list[Block]:
    lines = path.read_text().splitlines()
    rel = path.relative_to(root).as_posix()
    found: list[Block] = []
    previous: Block | None = None
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent = opening["indent"]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{rel}:{i + 1}: a fence that is never closed")
        body = lines[i + 1 : end]
        code = "".join((x.removeprefix(indent) if x.startswith(indent) else x.lstrip()) + "\n" for x in body)
        block = Block(rel, i + 1, opening["lang"], code, _comment_before(lines, i, indent), previous)
        found.append(block)
        if block.lang in PYTHON:
            previous = block
        i = end + 1
    return found


def _comment_before(lines: list[str], fence: int, indent: str) -> str | None:
    """The HTML comment ending on the line before ``fence``, without its ``<!--`` and ``-->`` and
    the fence's indentation."""
    if fence == 0 or not lines[fence - 1].rstrip().endswith("-->"):
        return None
    for start in range(fence - 1, -1, -1):
        if "<!--" in lines[start]:
            text = "\n".join(x.removeprefix(indent) for x in lines[start:fence])
            return text[text.index("<!--") + 4 : text.rindex("-->")].rstrip()
    return None


ALL = [block for path in DOCS for block in blocks_of(path)]


# Runs the chain's blocks in one interpreter, as `python -m asyncio` would run the async ones.
_DRIVER = """
import ast, inspect, json, sys
import anyio
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
codes = [compile(b["source"], b["filename"], "exec", dont_inherit=True,
                 flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if b["async"] else 0) for b in blocks]

async def run_async():
    for code in codes:
        done = eval(code, namespace)
        if inspect.iscoroutine(done):
            await done

if any(b["async"] for b in blocks):
    anyio.run(run_async)
else:
    for code in codes:
        exec(code, namespace)
"""


def run_script(block: Block, cwd: Path) -> None:
    chain = block.chain()
    payload = []
    for part in chain:
        if part.is_pytest_file():
            pytest.fail(f"{block.id} continues {part.id}, a pytest test file: only scripts can continue")
        source, is_async = part.source()
        if part.needs_await() and not is_async:
            pytest.fail(f"{part.id} uses await at top level: put `<!-- doc-test: async -->` on the line before it")
        payload.append({"source": source, "filename": str(ROOT / part.path), "async": is_async})
    path = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "examples" / "custom_resource" / "src"), os.environ.get("PYTHONPATH")) if p
    )
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER], input=json.dumps(payload), capture_output=True, text=True,
        cwd=cwd, env={**os.environ, "PYTHONPATH": path}, timeout=180,
    )
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout[-3000:]}{done.stderr[-5000:]}"


def run_pytest_file(block: Block, pytester: pytest.Pytester) -> None:
    if block.directive() != (set(), None):
        pytest.fail(f"{block.id} is a pytest test file: it runs as it is, without doc-test flags or a template")
    pytester.makeini(PYTEST_INI)
    pytester.makepyfile(**{f"test_{Path(block.path).stem}_{block.line}": block.code})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=300)
    outcomes = result.parseoutcomes()
    bad = {k: v for k, v in outcomes.items() if k not in {"passed", "warnings"} and v}  # warnings are errors
    assert outcomes.get("passed", 0) >= 1 and not bad, f"{block.id}: {outcomes}\n" + "\n".join(result.outlines[-80:])


# Blocks known not to run, by a line of theirs, each with the fix under way. Strict: a fixed block
# that still matches fails here until its entry is removed.
KNOWN_BROKEN = {
    'await self.database.execute("...")': "docs/pytest.md's unittest example runs no real SQL: the runner "
    "sections of that page are being rewritten (issue 13, items 2-4)",
}


def _marks(block: Block) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=why) for line, why in KNOWN_BROKEN.items() if line in block.code]


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=_marks(b)) for b in ALL])
def test_block(block: Block, pytester: pytest.Pytester) -> None:
    check(block, pytester)


def check(block: Block, pytester: pytest.Pytester) -> None:
    if block.lang in NOT_RUN:
        return  # shell commands, output samples, configuration: shown, not run
    if block.lang not in PYTHON:
        pytest.fail(
            f"{block.id}: a fence labelled {block.lang!r}: label it python (it runs) or one of {sorted(NOT_RUN)}"
            if block.lang
            else f"{block.id}: an unlabelled fence: label it python (it runs) or one of {sorted(NOT_RUN)}"
        )
    if block.quote is not None:
        source = (ROOT / block.quote).read_text()
        assert block.code in source, f"{block.id} quotes {block.quote}, which no longer says it"
    elif block.is_pytest_file():
        run_pytest_file(block, pytester)
    else:
        run_script(block, pytester.path)


# The harness itself: what it refuses, and how it reads a doc.

SAMPLE = '''\
Text.

```python
import isolated_env as ie
```

<!-- doc-test: async continues
async with ie.Environment() as env:
    # {block}
-->
```python
fs = await env.enter(ie.isolated_fs())
```

```python
await something()
```

```
no label
```
'''


def test_the_harness_reads_flags_templates_and_chains(tmp_path: Path) -> None:
    doc = tmp_path / "sample.md"
    doc.write_text(SAMPLE)
    first, wrapped, bare, unlabelled = blocks_of(doc, tmp_path)
    assert [b.line for b in (first, wrapped, bare, unlabelled)] == [3, 11, 15, 19]
    assert wrapped.directive()[0] == {"async", "continues"} and wrapped.chain() == [first, wrapped]
    source, is_async = wrapped.source()
    assert is_async
    assert source.endswith("async with ie.Environment() as env:\n    fs = await env.enter(ie.isolated_fs())\n\n")
    assert source.count("\n", 0, source.index("async with")) == 11 - 1  # `fs = ...` is on line 12, as in the doc
    assert bare.needs_await() and bare.directive() == (set(), None)
    with pytest.raises(pytest.fail.Exception, match="uses await at top level"):
        run_script(bare, tmp_path)
    with pytest.raises(pytest.fail.Exception, match="an unlabelled fence"):
        check(unlabelled, None)  # type: ignore[arg-type]
