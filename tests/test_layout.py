"""The package's shape holds: no module over 400 lines, no import cycle among its modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "isolated_env"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports_at_import_time(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports when it is imported (not inside functions, not
    under TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        nodes = [node]
        if isinstance(node, ast.If):
            nodes = [] if "TYPE_CHECKING" in ast.unparse(node.test) else node.body
        for stmt in nodes:
            if isinstance(stmt, ast.ImportFrom):
                if stmt.level:
                    base = package.split(".")[: len(package.split(".")) - stmt.level + 1]
                    target = ".".join(base + ([stmt.module] if stmt.module else []))
                else:
                    target = stmt.module or ""
                out |= {c for c in [target, *(f"{target}.{a.name}" for a in stmt.names)] if c in modules}
            elif isinstance(stmt, ast.Import):
                out |= {a.name for a in stmt.names if a.name in modules}
    out.discard(name)
    return out


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports_at_import_time(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif not state.get(nxt):
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if not state.get(name):
            visit(name, [])
    assert cycles == []
