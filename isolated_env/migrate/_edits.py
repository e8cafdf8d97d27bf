"""The rewrites themselves, as one LibCST transformer: only where the real API is identical.

- ``fakeredis.FakeRedis(...)`` -> ``redis.Redis.from_url(isolated_redis_url, ...)`` (and the async
  fakes -> ``redis.asyncio.Redis.from_url``), when no fakeredis-only argument is passed;
- ``create_engine("sqlite://")`` (and ``create_async_engine``) -> an engine on the test's private
  PostgreSQL database, when the file holds no SQLite-specific SQL;
- a test's ``mock_database``, ``mock_redis``, ... parameter -> ``isolated_database``,
  ``isolated_redis``, ..., when the test configures or asserts nothing on the mock itself.

Every candidate is numbered in the order it is met, so a run can enable any subset (``enabled``)
and the rest of the file stays byte for byte as it was.
"""

from __future__ import annotations

import dataclasses
import re

import libcst as cst
from libcst.metadata import PositionProvider

from ._catalog import MOCK_FIXTURES
from ._forms import literal
from ._visit import dotted

__all__ = ["SQLITE_ONLY", "Candidate", "Rewriter"]

SQLITE_ONLY = re.compile(
    r"sqlite_master|sqlite_sequence|\bpragma\b|autoincrement|insert\s+or\s+(replace|ignore)|attach\s+database"
    r"|last_insert_rowid|without\s+rowid|\browid\b|datetime\('now'\)|strftime\(",
    re.I,
)
_SQLITE_MEMORY = re.compile(r"sqlite(\+\w+)?://(/:memory:)?")
_ENGINES = {"sqlalchemy.create_engine", "sqlalchemy.engine.create_engine", "sqlalchemy.ext.asyncio.create_async_engine"}
_FAKE_SYNC = {"fakeredis.FakeRedis", "fakeredis.FakeStrictRedis"}
_FAKE_ASYNC = {"fakeredis.FakeAsyncRedis", "fakeredis.aioredis.FakeRedis", "fakeredis.aioredis.FakeStrictRedis"}
_FAKE_ONLY_ARGS = {"server", "version", "lua_modules", "connected", "server_type"}
_MOCK_USE = (
    r"\b{}\b(\.\w+)*\.(return_value|side_effect|assert_\w+|called|call_count|call_args\w*|mock_calls"
    r"|configure_mock|reset_mock|await_count|method_calls)\b"
)
_PSYCOPG = 'isolated_database_dsn.replace("postgresql://", "postgresql+psycopg://", 1)'


@dataclasses.dataclass(frozen=True)
class Candidate:
    line: int
    kind: str  # fakeredis | sqlite-memory | mock-fixture
    detail: str
    skipped: str = ""  # why it is not rewritten ("" when it is a rewrite)


@dataclasses.dataclass
class _Frame:
    name: str
    method: bool  # a method of a class: fixtures cannot be added to a unittest method
    needs: list[str] = dataclasses.field(default_factory=list)
    renames: dict[str, str] = dataclasses.field(default_factory=dict)


class Rewriter(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, aliases: dict[str, str], source: str, enabled: set[int] | None, redis_names: tuple[str, str]):
        super().__init__()
        self.aliases, self.enabled = aliases, enabled
        self.redis_names = redis_names  # what redis and redis.asyncio are imported as
        self.sqlite_sql = SQLITE_ONLY.search(source)
        self.candidates: list[Candidate] = []
        self.frames: list[_Frame] = []
        self.classes = 0
        self.imports: set[str] = set()  # modules the rewrites need imported

    def _qualify(self, expr: cst.BaseExpression) -> str | None:
        name = dotted(expr)
        if name is None:
            return None
        head, dot, rest = name.partition(".")
        origin = self.aliases.get(head)
        return f"{origin}{dot}{rest}" if origin else name

    def _offer(self, node: cst.CSTNode, kind: str, detail: str, skipped: str = "") -> bool:
        """Record a candidate; whether it is to be applied now."""
        line = self.get_metadata(PositionProvider, node).start.line
        self.candidates.append(Candidate(line, kind, detail, skipped))
        if skipped:
            return False
        index = sum(1 for c in self.candidates if not c.skipped) - 1
        return self.enabled is None or index in self.enabled

    # -- functions: where fixtures are added and parameters renamed --
    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.classes += 1

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        self.classes -= 1
        return updated_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        params = node.params.params
        method = self.classes > 0 and bool(params) and params[0].name.value == "self" and not self.frames
        frame = _Frame(node.name.value, method)
        self.frames.append(frame)
        if not node.name.value.startswith("test") or len(self.frames) > 1:
            return
        taken = {p.name.value for p in (*node.params.params, *node.params.kwonly_params)}
        body = cst.Module([]).code_for_node(node.body)
        for param in (*node.params.params, *node.params.kwonly_params):
            new = MOCK_FIXTURES.get(param.name.value)
            if new is None:
                continue
            old = param.name.value
            why = ""
            if method:
                why = "a unittest method cannot take a fixture"
            elif new in taken:
                why = f"the test already takes {new}"
            elif re.search(_MOCK_USE.format(re.escape(old)), body):
                why = f"the test configures or asserts on {old} as a mock: assert on real state instead"
            if self._offer(param, "mock-fixture", f"{old} -> {new}", why):
                frame.renames[old] = new

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        for frame in reversed(self.frames):
            if original_node.value in frame.renames:
                return updated_node.with_changes(value=frame.renames[original_node.value])
        return updated_node

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        frame = self.frames.pop()
        params = updated_node.params
        have = {p.name.value for p in (*params.params, *params.kwonly_params)}
        new = [cst.Param(cst.Name(n)) for n in dict.fromkeys(frame.needs) if n not in have]
        if not new:
            return updated_node
        plain = list(params.params)
        at = next((i for i, p in enumerate(plain) if p.default is not None), len(plain))
        plain[at:at] = new  # LibCST writes the commas between parameters that have none of their own
        return updated_node.with_changes(params=params.with_changes(params=plain))

    # -- calls: the fakes --
    def _home(self) -> str:
        """Why the current call cannot take a fixture, or "" when it can."""
        if not self.frames:
            return "at module level: no test or fixture to give the isolated service to"
        if self.frames[0].method:
            return "in a unittest method: use isolated_env.unittest.IsolatedEnvironmentTestCase"
        return ""

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        q = self._qualify(original_node.func)
        if q in _FAKE_SYNC or q in _FAKE_ASYNC:
            return self._fakeredis(original_node, updated_node, q in _FAKE_ASYNC)
        url = literal(original_node.args[0].value) if original_node.args else None
        if q in _ENGINES and url is not None and _SQLITE_MEMORY.fullmatch(url):
            return self._engine(original_node, updated_node)
        return updated_node

    def _fakeredis(self, original: cst.Call, updated: cst.Call, is_async: bool) -> cst.BaseExpression:
        target = f"{self.redis_names[1 if is_async else 0]}.Redis"
        fake_only = sorted(a.keyword.value for a in original.args if a.keyword and a.keyword.value in _FAKE_ONLY_ARGS)
        why = self._home()
        if fake_only:
            why = f"passes fakeredis-only argument(s) {', '.join(fake_only)}"
        elif any(a.keyword is None for a in original.args):
            why = "passes positional arguments: give them by name"
        if not self._offer(original, "fakeredis", f"fakeredis -> {target}.from_url(isolated_redis_url)", why):
            return updated
        self.frames[-1].needs.append("isolated_redis_url")
        self.imports.add(self.redis_names[1 if is_async else 0])
        call = cst.parse_expression(f"{target}.from_url(isolated_redis_url)")
        assert isinstance(call, cst.Call)
        return call.with_changes(args=[*call.args, *updated.args])

    def _engine(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        why = self._home()
        extra = []
        for a in original.args[1:]:
            name = a.keyword.value if a.keyword else None
            if name in {"echo", "future"}:
                extra.append(a)
            elif name == "poolclass" and (dotted(a.value) or "").endswith("StaticPool"):
                continue  # SQLite's way to share one in-memory database; PostgreSQL needs no such thing
            elif name == "connect_args" and literal_keys(a.value) == {"check_same_thread"}:
                continue  # an sqlite3-only connection argument
            else:
                why = why or f"passes {name or 'a positional argument'}, which may be SQLite's own"
        if self.sqlite_sql is not None:
            why = why or f"the file holds SQLite-specific SQL ({self.sqlite_sql[0]!r})"
        if not self._offer(original, "sqlite-memory", "in-memory SQLite -> isolated_database_dsn (psycopg)", why):
            return updated
        self.frames[-1].needs.append("isolated_database_dsn")
        url = cst.Arg(cst.parse_expression(_PSYCOPG))
        args = [url, *(a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in extra)]
        return updated.with_changes(args=args)


def literal_keys(expr: cst.BaseExpression) -> set[str] | None:
    if not isinstance(expr, cst.Dict):
        return None
    keys = {literal(e.key) for e in expr.elements if isinstance(e, cst.DictElement)}
    return None if None in keys else {k for k in keys if k is not None}
