"""Does a string patch target name something? Answered statically: nothing is imported or run.

``patch("app.cache.redis.Redis.get")`` imports ``app.cache`` and walks attributes at run time; here
the same walk is done on source files: the scanned project's own (its root and ``src/``), then the
installed packages' (found with ``importlib.util.find_spec`` on the top-level name only, which
imports nothing). A name bound by ``import`` is followed to where it comes from, so the target's
origin is known too (``app.cache.redis`` is the ``redis`` package). Where source cannot settle it
(an extension module, ``from x import *``, a module ``__getattr__``, an inherited attribute) the
answer is "unverified", never "unresolved": only a target that certainly names nothing is reported.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
from pathlib import Path

__all__ = ["Resolution", "Resolver"]


@dataclasses.dataclass(frozen=True)
class Resolution:
    status: str  # "resolved" | "unresolved" | "unverified"
    origin: str  # the dotted name the target ends up at (through imports)
    reason: str = ""


@dataclasses.dataclass
class _Module:
    names: dict[str, str | None]  # bound name -> origin (dotted) for imports, None for local definitions
    classes: dict[str, tuple[set[str], bool]]  # class -> (attributes, has bases)
    open_ended: bool  # a star import or a module-level __getattr__: any name may exist
    package_dir: Path | None  # for a package: where its submodules are


def _module_of(path: Path, package_dir: Path | None, modname: str) -> _Module | None:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return None
    names: dict[str, str | None] = {}
    classes: dict[str, tuple[set[str], bool]] = {}
    open_ended = False
    package = modname if package_dir is not None else modname.rpartition(".")[0]

    def bind(target: ast.expr) -> None:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                names[node.id] = None

    def visit(body: list[ast.stmt]) -> None:
        nonlocal open_ended
        for stmt in body:
            if isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    if alias.asname:
                        names[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        names[top] = top
            elif isinstance(stmt, ast.ImportFrom):
                base = stmt.module or ""
                if stmt.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - stmt.level + 1] if stmt.level > 1 else parts
                    base = ".".join([*parts, *([stmt.module] if stmt.module else [])])
                for alias in stmt.names:
                    if alias.name == "*":
                        open_ended = True
                    else:
                        names[alias.asname or alias.name] = f"{base}.{alias.name}"
            elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                names[stmt.name] = None
                open_ended |= stmt.name == "__getattr__"
            elif isinstance(stmt, ast.ClassDef):
                names[stmt.name] = None
                attrs = {
                    n.name for n in stmt.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                }
                for n in stmt.body:
                    for t in (
                        n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
                    ):
                        attrs |= {x.id for x in ast.walk(t) if isinstance(x, ast.Name)}
                classes[stmt.name] = (attrs, bool(stmt.bases or stmt.keywords or stmt.decorator_list))
            elif isinstance(stmt, ast.Assign):
                for t in stmt.targets:
                    bind(t)
            elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
                bind(stmt.target)
            elif isinstance(stmt, ast.For | ast.AsyncFor):
                bind(stmt.target)
                visit(stmt.body + stmt.orelse)
            elif isinstance(stmt, ast.With | ast.AsyncWith):
                for item in stmt.items:
                    if item.optional_vars is not None:
                        bind(item.optional_vars)
                visit(stmt.body)
            elif isinstance(stmt, ast.If | ast.While):
                visit(stmt.body + stmt.orelse)
            elif isinstance(stmt, ast.Try | ast.TryStar):
                visit(stmt.body + stmt.orelse + stmt.finalbody + [s for h in stmt.handlers for s in h.body])
            elif isinstance(stmt, ast.Match):
                open_ended = True  # names bound by patterns: not worth following

    visit(tree.body)
    return _Module(names, classes, open_ended, package_dir)


class Resolver:
    """Resolves dotted names against a project's sources (``roots``) and the installed packages."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [r for r in roots if r.is_dir()]
        self._modules: dict[str, _Module | bool | None] = {}
        self._external: dict[str, Path | None] = {}

    def _locate(self, modname: str) -> tuple[Path, Path | None] | None:
        """(source file, package dir or None) of a module, without importing anything."""
        parts = modname.split(".")
        for root in self.roots:
            base = root.joinpath(*parts)
            if (base / "__init__.py").is_file():
                return base / "__init__.py", base
            if base.with_suffix(".py").is_file():
                return base.with_suffix(".py"), None
            if base.is_dir() and any(base.glob("*.py")):
                return base / "__init__.py", base  # a namespace package: no __init__, submodules only
        top = parts[0]
        if top not in self._external:
            try:
                spec = importlib.util.find_spec(top)
            except (ImportError, ValueError):
                spec = None
            if spec is None:
                self._external[top] = None
            elif spec.submodule_search_locations:
                self._external[top] = Path(next(iter(spec.submodule_search_locations)))
            else:
                self._external[top] = Path(spec.origin) if spec.origin else None
        found = self._external[top]
        if found is None:
            return None
        if found.is_dir():
            base = found.joinpath(*parts[1:])
            if (base / "__init__.py").is_file():
                return base / "__init__.py", base
            if base.with_suffix(".py").is_file():
                return base.with_suffix(".py"), None
            if len(parts) > 1 and any(found.glob(f"{'/'.join(parts[1:])}.*")):
                return base.with_suffix(".so"), None  # an extension module: exists, but no source
            return None
        return (found, None) if len(parts) == 1 else None

    def module(self, modname: str) -> _Module | bool | None:
        """The module's names; True when it exists without readable source; None when it does not exist."""
        if modname not in self._modules:
            located = self._locate(modname)
            loaded: _Module | bool | None = None
            if located is not None:
                path, package_dir = located
                if path.suffix == ".py" and path.is_file():
                    loaded = _module_of(path, package_dir, modname) or True
                elif package_dir is not None:
                    loaded = _Module({}, {}, True, package_dir)
                else:
                    loaded = True
            self._modules[modname] = loaded
        return self._modules[modname]

    def resolve(self, target: str, depth: int = 0) -> Resolution:
        parts = target.split(".")
        if depth > 8 or not all(p.isidentifier() for p in parts):
            return Resolution(
                "unresolved" if depth == 0 else "unverified",
                target,
                "not a dotted name" if depth == 0 else "too many re-exports to follow",
            )
        for cut in range(len(parts), 0, -1):
            modname = ".".join(parts[:cut])
            found = self.module(modname)
            if found is None:
                continue
            if not isinstance(found, _Module):
                return Resolution("unverified", target, f"{modname} has no Python source")
            return self._attribute(found, modname, parts[cut:], depth)
        return Resolution("unresolved", target, f"no module named {parts[0]!r} in the project or installed")

    def _attribute(self, mod: _Module, modname: str, rest: list[str], depth: int) -> Resolution:
        here = modname
        if not rest:
            return Resolution("resolved", here)
        name, *more = rest
        if name in mod.names:
            origin = mod.names[name]
            if origin is not None and origin != f"{modname}.{name}":
                followed = self.resolve(".".join([origin, *more]), depth + 1)
                return (
                    followed
                    if followed.status != "unresolved"
                    else Resolution(
                        "unresolved", followed.origin, f"{modname}.{name} is {origin}, and {followed.reason}"
                    )
                )
            if more and name in mod.classes:
                attrs, has_bases = mod.classes[name]
                if more[0] not in attrs:
                    if has_bases:
                        return Resolution("unverified", f"{here}.{'.'.join(rest)}", "may be inherited")
                    return Resolution(
                        "unresolved", f"{here}.{'.'.join(rest)}", f"class {modname}.{name} has no attribute {more[0]!r}"
                    )
            return Resolution("resolved", f"{here}.{'.'.join(rest)}")
        if mod.package_dir is not None and (
            (mod.package_dir / name).is_dir() or (mod.package_dir / f"{name}.py").is_file()
        ):
            return self.resolve(".".join([modname, *rest]), depth + 1)
        if mod.open_ended:
            return Resolution("unverified", f"{here}.{'.'.join(rest)}", f"{modname} may define names dynamically")
        return Resolution("unresolved", f"{here}.{'.'.join(rest)}", f"module {modname} has no attribute {name!r}")
