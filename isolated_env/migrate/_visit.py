"""One file's sites: a LibCST visitor that resolves names through the file's imports and records
every mock form (see :mod:`._forms`), the test each belongs to, and each test's asserts."""

from __future__ import annotations

import dataclasses
import re

import libcst as cst

from ._catalog import classify_words, fixture_service
from ._forms import Hit, classify_call, classify_reference, param_hit
from ._resolve import Resolver
from ._walk import Handlers, attributes, walk

__all__ = ["FileScan", "Site", "TestInfo", "Unresolved", "scan_source"]

_CALL_ASSERT = re.compile(
    r"\.(called|call_count|call_args(_list)?|mock_calls|method_calls|await_count|await_args(_list)?|awaited)\b"
    r"|assert_(called|any_call|has_calls|not_called|awaited|any_await|has_awaits|not_awaited)"
)
_MOCK_METHODS = re.compile(
    r"assert_(called\w*|any_call|has_calls|not_called|awaited\w*|any_await|has_awaits|"
    r"not_awaited)"
)
_MONKEYPATCH_FACTORIES = ("pytest.MonkeyPatch", "_pytest.monkeypatch.MonkeyPatch", "pytest.MonkeyPatch.context")


@dataclasses.dataclass(frozen=True)
class Site:
    path: str
    line: int
    kind: str
    service: str
    test: str | None


@dataclasses.dataclass
class TestInfo:
    path: str
    line: int
    name: str
    call_asserts: int = 0
    state_asserts: int = 0
    sites: int = 0


@dataclasses.dataclass(frozen=True)
class Unresolved:
    path: str
    line: int
    target: str
    reason: str


@dataclasses.dataclass
class FileScan:
    path: str
    sites: list[Site] = dataclasses.field(default_factory=list)
    tests: list[TestInfo] = dataclasses.field(default_factory=list)
    unresolved: list[Unresolved] = dataclasses.field(default_factory=list)
    error: str | None = None


def dotted(expr: cst.BaseExpression) -> str | None:
    if isinstance(expr, cst.Name):
        return expr.value
    if isinstance(expr, cst.Attribute):
        base = dotted(expr.value)
        return f"{base}.{expr.attr.value}" if base else None
    return None


def bind_import(aliases: dict[str, str], node: cst.Import) -> None:
    for alias in node.names:
        name = dotted(alias.name)
        if name is None:
            continue
        if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
            aliases[alias.asname.name.value] = name
        else:
            top = name.split(".")[0]
            aliases[top] = top


def bind_import_from(aliases: dict[str, str], node: cst.ImportFrom) -> None:
    if node.relative or node.module is None or isinstance(node.names, cst.ImportStar):
        return
    module = dotted(node.module)
    for alias in node.names:
        name = dotted(alias.name)
        if module and name:
            bound = alias.asname.name if alias.asname is not None else alias.name
            if isinstance(bound, cst.Name):
                aliases[bound.value] = f"{module}.{name}"


class _Imports(cst.CSTVisitor):
    """Every name an import binds, anywhere in the file, to what it names (``m`` -> ``unittest.mock``)."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}

    def visit_Import(self, node: cst.Import) -> None:
        bind_import(self.aliases, node)

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        bind_import_from(self.aliases, node)


@dataclasses.dataclass
class _Frame:
    name: str
    test: TestInfo | None
    fixture: bool
    node: cst.FunctionDef
    injected: int = 0  # mocks the function's @patch decorators pass as its first arguments


class _Visitor:
    """One pass over a module (see :func:`._walk.walk`): imports are bound as they are met, which is
    before any use of them in code that runs."""

    def __init__(self, path: str, module: cst.Module, source: str, resolver: Resolver | None) -> None:
        self.path, self.module, self.source = path, module, source
        self.aliases: dict[str, str] = {}
        self.resolver = resolver
        self.result = FileScan(path)
        self.frames: list[_Frame] = []
        self.classes: list[str] = []
        self.monkeypatch_names = {"monkeypatch"}
        self.names: dict[int, str] = {}  # id(call) -> the name its value is bound to
        self.consumed: set[int] = set()  # calls that are part of a site already counted
        self.decorator_calls: set[int] = set()
        self.cursor = 0

    # -- Context (for _forms) --
    def qualify(self, expr: cst.BaseExpression) -> str | None:
        name = dotted(expr)
        if name is None:
            return None
        head, dot, rest = name.partition(".")
        origin = self.aliases.get(head)
        q = f"{origin}{dot}{rest}" if origin else name
        if q == "mock" or q.startswith("mock."):
            q = "unittest." + q  # the `mock` backport is unittest.mock
        return q

    def named(self, call: cst.Call) -> str | None:
        if id(call) in self.names:
            return self.names[id(call)]
        frame = self.frames[-1] if self.frames else None
        return frame.name if frame is not None and frame.test is None else None

    def target_service(self, target: str) -> str | None:
        if self.resolver is not None:
            origin = self.resolver.resolve(target).origin
            if origin != target:
                return classify_words(origin) or classify_words(target)
        return classify_words(target)

    # -- positions: sites are visited in source order, so each is searched for from the last one --
    def _line(self, snippet: str, advance: bool = True) -> int:
        first = snippet.strip().split("\n", 1)[0]
        # not inside a longer name: "aioresponses()" is not in "def test_aioresponses():"
        pattern = re.compile(("(?<![\\w.])" if first[:1].isidentifier() else "") + re.escape(first))
        found = pattern.search(self.source, self.cursor) or pattern.search(self.source)
        at = found.start() if found else self.cursor
        if advance:
            self.cursor = at + 1  # a nested site starts after this one; the next search must not find this
        return self.source.count("\n", 0, at) + 1

    def _test(self) -> str | None:
        for frame in reversed(self.frames):
            if frame.test is not None:
                return frame.test.name
        if self.frames:
            return self.frames[-1].name
        return "::".join(self.classes) or None

    def _record(self, hit: Hit, node: cst.CSTNode | str) -> None:
        line = self._line(_snippet(self.module, node))
        self.result.sites.append(Site(self.path, line, hit.kind, hit.service, self._test()))
        for frame in reversed(self.frames):
            if frame.test is not None:
                frame.test.sites += 1
                break
        if hit.target is not None and self.resolver is not None:
            resolved = self.resolver.resolve(hit.target)
            if resolved.status == "unresolved":
                self.result.unresolved.append(Unresolved(self.path, line, hit.target, resolved.reason))

    # -- structure --
    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.classes.append(node.name.value)

    def leave_ClassDef(self, node: cst.ClassDef) -> None:
        self.classes.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        name = node.name.value
        qualname = "::".join([*self.classes, name])
        in_test = any(f.test is not None for f in self.frames)
        test = None
        if name.startswith("test") and not in_test:
            test = TestInfo(self.path, self._line(f"def {name}", advance=False), qualname)
            self.result.tests.append(test)
        fixture = any(
            (self.qualify(d.decorator.func if isinstance(d.decorator, cst.Call) else d.decorator) or "").endswith(
                "fixture"
            )
            for d in node.decorators
        )
        self.frames.append(_Frame(qualname, test, fixture, node))

    def leave_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.frames.pop()

    def visit_Parameters(self, node: cst.Parameters) -> None:
        frame = self.frames[-1] if self.frames else None
        if frame is None or frame.node.params is not node or (frame.test is None and not frame.fixture):
            return  # a lambda's, or a helper's
        params = [*node.posonly_params, *node.params, *node.kwonly_params]
        if params and params[0].name.value in {"self", "cls"}:
            params = params[1:]
        for param in params[frame.injected :]:
            name = param.name.value
            hit = param_hit(name)
            if hit is None and name != frame.name and (service := fixture_service(name)) is not None:
                hit = Hit("mock-fixture", service)
            if hit is not None:
                self._record(hit, name)

    # -- names that mocks and MonkeyPatches are bound to --
    def _bind(self, targets: list[cst.BaseExpression], value: cst.BaseExpression | None) -> None:
        if not isinstance(value, cst.Call):
            return
        for target in targets:
            name = (
                target.value
                if isinstance(target, cst.Name)
                else (target.attr.value if isinstance(target, cst.Attribute) else None)
            )
            if name is not None:
                self.names[id(value)] = name
                if self.qualify(value.func) in _MONKEYPATCH_FACTORIES:
                    self.monkeypatch_names.add(name)

    def visit_Assign(self, node: cst.Assign) -> None:
        self._bind([t.target for t in node.targets], node.value)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        self._bind([node.target], node.value)

    def visit_Arg(self, node: cst.Arg) -> None:
        if node.keyword is not None and isinstance(node.value, cst.Call):
            self.names.setdefault(id(node.value), node.keyword.value)

    def visit_WithItem(self, node: cst.WithItem) -> None:
        item = node.item
        if isinstance(item, cst.Call):
            q = self.qualify(item.func) or ""
            head = q.partition(".")[0]
            if (
                node.asname is not None
                and isinstance(node.asname.name, cst.Name)
                and (q in _MONKEYPATCH_FACTORIES or (q.endswith(".context") and head in self.monkeypatch_names))
            ):
                self.monkeypatch_names.add(node.asname.name.value)
        elif (ref := self.qualify(item)) is not None and (hit := classify_reference(ref)) is not None:
            self._record(hit, item)

    def visit_Decorator(self, node: cst.Decorator) -> None:
        if isinstance(node.decorator, cst.Call):
            self.decorator_calls.add(id(node.decorator))
        elif (ref := self.qualify(node.decorator)) is not None and (hit := classify_reference(ref)) is not None:
            self._record(hit, node.decorator)

    # -- sites and asserts --
    def visit_Call(self, node: cst.Call) -> None:
        q = self.qualify(node.func)
        self._count_assert_call(node, q)
        if q is None or id(node) in self.consumed:
            return
        hit = classify_call(q, node, self, self.monkeypatch_names.__contains__)
        if hit is None:
            return
        self._record(hit, node)
        for arg in node.args:  # patch(..., new=MagicMock()) is one site
            walk(arg.value, {cst.Call: lambda call: self.consumed.add(id(call))})
        if hit.injects and id(node) in self.decorator_calls and self.frames:
            self.frames[-1].injected += 1

    def _current_test(self) -> TestInfo | None:
        return next((f.test for f in reversed(self.frames) if f.test is not None), None)

    def _count_assert_call(self, node: cst.Call, q: str | None) -> None:
        test = self._current_test()
        if test is None:
            return
        attr = node.func.attr.value if isinstance(node.func, cst.Attribute) else ""
        if _MOCK_METHODS.fullmatch(attr):
            test.call_asserts += 1
        elif q == "pytest.raises" or (attr.startswith("assert") and q and q.startswith("self.")):
            if _on_mock_calls(attributes(node)):
                test.call_asserts += 1
            else:
                test.state_asserts += 1

    def visit_Assert(self, node: cst.Assert) -> None:
        test = self._current_test()
        if test is not None:
            if _on_mock_calls(attributes(node.test)):
                test.call_asserts += 1
            else:
                test.state_asserts += 1


_TRIGGERS = (
    "mock",
    "patch",
    "fake",
    "moto",
    "responses",
    "respx",
    "vcr",
    "cassette",
    "httpserver",
    "freez",
    "time_machine",
    "sqlite",
    "call",
    "stub",
)


def scan_source(path: str, source: str, resolver: Resolver | None) -> FileScan:
    """The sites, tests and unresolved targets of one file's source."""
    lowered = source.lower()
    if not any(t in lowered for t in _TRIGGERS):
        return FileScan(path)  # no mock form can be in it: not worth a parse
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        return FileScan(path, error=f"cannot parse: {str(exc).splitlines()[0]}")
    visitor = _Visitor(path, module, source, resolver)
    enter: Handlers = {
        cst.Import: lambda n: bind_import(visitor.aliases, n),  # type: ignore[arg-type]
        cst.ImportFrom: lambda n: bind_import_from(visitor.aliases, n),  # type: ignore[arg-type]
        cst.ClassDef: visitor.visit_ClassDef,  # type: ignore[dict-item]
        cst.FunctionDef: visitor.visit_FunctionDef,  # type: ignore[dict-item]
        cst.Parameters: visitor.visit_Parameters,  # type: ignore[dict-item]
        cst.Assign: visitor.visit_Assign,  # type: ignore[dict-item]
        cst.AnnAssign: visitor.visit_AnnAssign,  # type: ignore[dict-item]
        cst.Arg: visitor.visit_Arg,  # type: ignore[dict-item]
        cst.WithItem: visitor.visit_WithItem,  # type: ignore[dict-item]
        cst.Decorator: visitor.visit_Decorator,  # type: ignore[dict-item]
        cst.Call: visitor.visit_Call,  # type: ignore[dict-item]
        cst.Assert: visitor.visit_Assert,  # type: ignore[dict-item]
    }
    leave: Handlers = {cst.ClassDef: visitor.leave_ClassDef, cst.FunctionDef: visitor.leave_FunctionDef}  # type: ignore[dict-item]
    walk(module, enter, leave)
    return visitor.result


_CALL_ATTRIBUTES = {
    "called",
    "call_count",
    "call_args",
    "call_args_list",
    "mock_calls",
    "method_calls",
    "await_count",
    "await_args",
    "await_args_list",
    "awaited",
}


def _on_mock_calls(names: set[str]) -> bool:
    return any(n in _CALL_ATTRIBUTES or _MOCK_METHODS.fullmatch(n) for n in names)


def _snippet(module: cst.Module, node: cst.CSTNode | str) -> str:
    """Text to find a site's line by: its dotted name where it has one (no code generation)."""
    if isinstance(node, str):
        return node
    if isinstance(node, cst.Call) and (name := dotted(node.func)) is not None:
        return name + "("
    if (name := dotted(node)) is not None:  # type: ignore[arg-type]
        return name
    return module.code_for_node(node)
