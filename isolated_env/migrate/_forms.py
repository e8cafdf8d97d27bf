"""Every form a mock takes, recognised by qualified name: what kind of site a call or reference is,
which service it stands in for, and the string target it patches (to be resolved).

The caller gives qualified names (``unittest.mock.patch.object``, ``fakeredis.FakeRedis``), already
resolved through the file's imports, and a :class:`Context` for the rest (how an argument reads as
a qualified name, what the mock is assigned to).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Protocol

import libcst as cst

from ._catalog import classify_words

__all__ = ["MOCKER", "Context", "Hit", "classify_call", "classify_reference", "literal", "param_hit"]

MOCKER = ("mocker", "module_mocker", "class_mocker", "package_mocker", "session_mocker")
_MOCKS = (
    "Mock",
    "MagicMock",
    "AsyncMock",
    "NonCallableMock",
    "NonCallableMagicMock",
    "PropertyMock",
    "create_autospec",
)
_PATCHES = {
    "patch": "patch",
    "patch.object": "patch.object",
    "patch.dict": "patch.dict",
    "patch.multiple": "patch.multiple",
}
_MONKEYPATCH = ("setattr", "delattr", "setitem", "delitem", "setenv", "delenv")
_SQLITE_MEMORY = re.compile(r"sqlite(\+\w+)?://(/:memory:)?(\?.*)?")
_ENGINES = (
    "sqlalchemy.create_engine",
    "sqlalchemy.engine.create_engine",
    "sqlalchemy.ext.asyncio.create_async_engine",
    "sqlmodel.create_engine",
)
_REFERENCES = {
    "responses.activate": ("responses", "http"),
    "respx.mock": ("respx", "http"),
    "pytest.mark.vcr": ("vcr", "http"),
    "pytest.mark.default_cassette": ("vcr", "http"),
}
_CALLS = {
    "responses.RequestsMock": ("responses", "http"),
    "responses.start": ("responses", "http"),
    "responses._recorder.record": ("responses", "http"),
    "respx.MockRouter": ("respx", "http"),
    "respx.Router": ("respx", "http"),
    "respx.start": ("respx", "http"),
    "aioresponses.aioresponses": ("aioresponses", "http"),
    "vcr.use_cassette": ("vcr", "http"),
    "vcr.VCR": ("vcr", "http"),
    "pytest_httpserver.HTTPServer": ("httpserver", "http"),
    "freezegun.freeze_time": ("freezegun", "clock"),
    "freezegun.api.freeze_time": ("freezegun", "clock"),
    "time_machine.travel": ("time-machine", "clock"),
}
# fixtures of the plugins, by parameter name
_PARAMS = {
    "httpserver": ("httpserver", "http"),
    "httpserver_ipv4": ("httpserver", "http"),
    "make_httpserver": ("httpserver", "http"),
    "respx_mock": ("respx", "http"),
    "freezer": ("freezegun", "clock"),
    "time_machine": ("time-machine", "clock"),
    "aioresponses": ("aioresponses", "http"),
}


@dataclasses.dataclass(frozen=True)
class Hit:
    kind: str
    service: str
    target: str | None = None  # a string target, to be resolved
    injects: bool = False  # a patch that, as a decorator, passes a mock argument


class Context(Protocol):
    def qualify(self, expr: cst.BaseExpression) -> str | None: ...
    def named(self, call: cst.Call) -> str | None: ...
    def target_service(self, target: str) -> str | None: ...


def literal(expr: cst.BaseExpression | None) -> str | None:
    if isinstance(expr, cst.SimpleString | cst.ConcatenatedString):
        value = expr.evaluated_value
        return value if isinstance(value, str) else None
    return None


def _arg(call: cst.Call, position: int, keyword: str | None = None) -> cst.BaseExpression | None:
    if keyword is not None:
        for a in call.args:
            if a.keyword is not None and a.keyword.value == keyword:
                return a.value
    positional = [a.value for a in call.args if a.keyword is None and not a.star]
    return positional[position] if position < len(positional) else None


def _keys(expr: cst.BaseExpression | None) -> list[str]:
    if isinstance(expr, cst.Dict):
        return [k for e in expr.elements if isinstance(e, cst.DictElement) and (k := literal(e.key)) is not None]
    return []


def _mapping(ctx: Context, mapping: cst.BaseExpression | None, keys: list[str]) -> str:
    """The service of entries put into ``mapping`` (os.environ by variable, sys.modules by module)."""
    where = literal(mapping) or (ctx.qualify(mapping) if mapping is not None else None) or ""
    if where in {"os.environ", "sys.modules"} or not where:
        return classify_words(*keys) or "internal"
    return classify_words(where, *keys) or "internal"


def _object(ctx: Context, obj: cst.BaseExpression | None, attr: cst.BaseExpression | None) -> str:
    return classify_words(ctx.qualify(obj) if obj is not None else None, literal(attr)) or "internal"


def _patch(form: str, call: cst.Call, ctx: Context) -> Hit:
    """unittest.mock.patch and its relatives, and mocker's."""
    kind = _PATCHES[form]
    if form == "patch":
        target = literal(_arg(call, 0, "target"))
        injects = _arg(call, 1, "new") is None
        if target is None:
            return Hit(kind, "internal", None, injects)
        return Hit(kind, ctx.target_service(target) or "internal", target, injects)
    if form == "patch.object":
        return Hit(
            kind,
            _object(ctx, _arg(call, 0, "target"), _arg(call, 1, "attribute")),
            injects=_arg(call, 2, "new") is None,
        )
    if form == "patch.dict":
        keys = _keys(_arg(call, 1, "values")) + [
            a.keyword.value
            for a in call.args
            if a.keyword is not None and a.keyword.value not in {"in_dict", "values", "clear"}
        ]
        return Hit(kind, _mapping(ctx, _arg(call, 0, "in_dict"), keys))
    names = [a.keyword.value for a in call.args if a.keyword is not None and a.keyword.value != "target"]
    first = _arg(call, 0, "target")
    target = literal(first)
    service = (
        (ctx.target_service(target) if target else None)
        or classify_words(ctx.qualify(first) if first is not None and target is None else None, *names)
        or "internal"
    )
    return Hit(kind, service, target)


def _mock(name: str, call: cst.Call, ctx: Context) -> Hit:
    spec = _arg(call, 0, "spec") or _arg(call, 99, "spec_set")  # create_autospec's first argument is its spec
    service = None
    if spec is not None:
        service = classify_words(literal(spec) or ctx.qualify(spec))
    return Hit(name, service or classify_words(ctx.named(call)) or "internal")


def _monkeypatch(method: str, call: cst.Call, ctx: Context) -> Hit:
    kind = f"monkeypatch.{method}"
    if method in {"setenv", "delenv"}:
        return Hit(kind, classify_words(literal(_arg(call, 0, "name"))) or "internal")
    if method in {"setitem", "delitem"}:
        key = literal(_arg(call, 1, "name"))
        return Hit(kind, _mapping(ctx, _arg(call, 0, "dic"), [key] if key else []))
    first = _arg(call, 0, "target")
    target = literal(first)
    if target is not None and "." in target and _arg(call, 2 if method == "setattr" else 1) is None:
        return Hit(kind, ctx.target_service(target) or "internal", target)  # the "a.b.c" form
    return Hit(kind, _object(ctx, first, _arg(call, 1, "name")))


def _sqlite_memory(q: str, call: cst.Call) -> Hit | None:
    url = literal(_arg(call, 0, "url"))
    if q in _ENGINES and url is not None and _SQLITE_MEMORY.fullmatch(url):
        return Hit("sqlite-memory", "postgres")
    if q in {"sqlite3.connect", "aiosqlite.connect"} and literal(_arg(call, 0, "database")) == ":memory:":
        return Hit("sqlite-memory", "postgres")
    return None


def classify_call(q: str, call: cst.Call, ctx: Context, monkeypatches: Callable[[str], bool]) -> Hit | None:
    """The site a call to ``q`` is, or None. ``monkeypatches(head)`` says whether a name is a
    MonkeyPatch (the fixture, or one bound from ``monkeypatch.context()``/``MonkeyPatch()``)."""
    if q.startswith("unittest.mock."):
        form = q.removeprefix("unittest.mock.")
        if form in _PATCHES:
            return _patch(form, call, ctx)
        if form in _MOCKS:
            return _mock(form, call, ctx)
        return None
    head, _, rest = q.partition(".")
    if head in MOCKER:
        if rest in _PATCHES:
            hit = _patch(rest, call, ctx)
            return dataclasses.replace(hit, kind=f"mocker.{hit.kind}", injects=False)
        if rest in _MOCKS:
            return dataclasses.replace(_mock(rest, call, ctx), kind=f"mocker.{rest}")
        if rest == "spy":
            return Hit("mocker.spy", _object(ctx, _arg(call, 0), _arg(call, 1)))
        return None
    if rest in _MONKEYPATCH and monkeypatches(head):
        return _monkeypatch(rest, call, ctx)
    if head == "fakeredis" and q.rpartition(".")[2].startswith("Fake"):
        return Hit("fakeredis", "redis")
    if head == "moto" and (q.rpartition(".")[2].startswith("mock") or q.endswith("ThreadedMotoServer")):
        return Hit("moto", "http")
    if q in _CALLS:
        return Hit(*_CALLS[q])
    if q in _REFERENCES:  # called with options: @responses.activate(registry=...), respx.mock(base_url=...)
        return Hit(*_REFERENCES[q])
    if q.endswith(".use_cassette"):  # a VCR instance of the project's own: my_vcr.use_cassette(...)
        return Hit("vcr", "http")
    return _sqlite_memory(q, call)


def classify_reference(q: str) -> Hit | None:
    """A form used without a call: ``@responses.activate``, ``@respx.mock``, ``with respx.mock:``,
    ``@mock_aws``, ``@pytest.mark.vcr``."""
    if q in _REFERENCES:
        return Hit(*_REFERENCES[q])
    if q.startswith("moto.") and q.rpartition(".")[2].startswith("mock"):
        return Hit("moto", "http")
    return None


def param_hit(name: str) -> Hit | None:
    """A test or fixture parameter that is a mock-providing plugin fixture."""
    return Hit(*_PARAMS[name]) if name in _PARAMS else None
