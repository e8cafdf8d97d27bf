"""The adaptor's guard rails: a test's user reaches its own database and nothing of another's.

Each lease of ``isolated_clickhouse`` authenticates as a user of its own (``ie_<run>_<pid>_s<k>``,
a slot of one process), with a password derived from the server's secret, so making one costs no
round trip. That user may use one database: the one its request names (``database=``), which must
be one of its own (named ``<user>_<n>``). :func:`check` reads each statement's tokens (quotes and
comments known) and refuses, with ``ACCESS_DENIED``:

- a reference to any other database: ``USE``, ``db.table``, ``DROP``/``ALTER``/``SHOW CREATE
  DATABASE``, ``SHOW TABLES FROM``, database names in ``dictGet``-style string arguments;
- ``CREATE``/``RENAME DATABASE`` (databases are made by isolated_env), ``SYSTEM``, ``KILL``,
  ``GRANT``/``REVOKE``, access entities (``CREATE USER``, ``ROLE``, ``QUOTA``, ...), ``BACKUP``/``RESTORE``;
- table functions and engines that reach other databases (``merge``, ``remote``, ``cluster``,
  ``loop``, ``Distributed``, ``Dictionary``, ...), ``INFORMATION_SCHEMA`` and the system tables
  that show other tests' queries (``system.processes``, ``system.query_log``, ...).

``system.tables``, ``system.columns``, ``system.parts`` and the other per-database system tables
are answered for the own database only (rewritten as a filtered subquery); ``SHOW DATABASES`` lists
only the own database. The default user (isolated_env itself) is not checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .protocol import EngineError, quote_literal

__all__ = ["ADMIN", "check"]

ADMIN = "default"

_TOKEN = re.compile(
    r"""(?P<blank>\s+|--[^\n]*|/\*.*?\*/)|(?P<string>'(?:[^'\\]|\\.)*')|(?P<quoted>`(?:[^`\\]|\\.)*`|"(?:[^"\\]|\\.)*")"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_$]*)|(?P<other>.)""",
    re.DOTALL,
)

# Every rule below starts from a qualified name (a dot) or one of these words; a statement with
# none of them (in its text, strings and comments included) passes unread.
_TRIGGER = re.compile(
    r"[.]|\b(?:use|databases?|show|system|kill|grant|revoke|backup|restore|users?|roles?|quotas?|policy|"
    r"profile|row|settings|set|rename|information_schema|merge|mergetree(?:index|projection|analyzeindexes)|"
    r"remote\w*|cluster\w*|loop|distributed|buffer|dict\w*|joinget\w*)\b",
    re.IGNORECASE,
)
_SAFE_SYSTEM = frozenset({
    "one", "numbers", "numbers_mt", "zeros", "zeros_mt", "settings", "merge_tree_settings", "functions",
    "formats", "data_type_families", "table_engines", "table_functions", "time_zones", "collations",
    "build_options", "contributors", "aggregate_function_combinators", "keywords", "licenses", "metrics",
    "events", "asynchronous_metrics", "errors", "warnings", "server_settings", "settings_changes", "disks",
    "storage_policies", "current_roles", "enabled_roles", "privileges", "users", "database_engines",
    "schema_inference_cache", "histogram_metrics", "dimensional_metrics",
})
# Per-database system tables, answered for the own database: the column naming the database.
_FILTERED_SYSTEM = {
    name: "database" for name in (
        "tables", "columns", "parts", "parts_columns", "detached_parts", "projection_parts",
        "projection_parts_columns", "projections", "mutations", "dictionaries", "data_skipping_indices",
        "merges", "moves", "replicas", "replication_queue", "part_log", "detached_tables",
    )
}
_FILTERED_SYSTEM["databases"] = "name"
_REFUSED_CALLS = frozenset({
    "merge", "remote", "remotesecure", "cluster", "clusterallreplicas", "loop", "mergetreeindex",
    "mergetreeprojection", "mergetreeanalyzeindexes", "dictionary", "distributed", "view_refreshes",
})
_DICT_CALLS = ("dictget", "dicthas", "dictisin", "joinget")
_ACCESS_ENTITIES = frozenset(
    {"USER", "USERS", "ROLE", "ROLES", "QUOTA", "QUOTAS", "POLICY", "PROFILE", "ROW", "SETTINGS"}
)
_REFUSED_FIRST = frozenset({"SYSTEM", "KILL", "GRANT", "REVOKE", "BACKUP", "RESTORE"})
_DATABASE_VERBS = frozenset(
    {"CREATE", "DROP", "ALTER", "ATTACH", "DETACH", "RENAME", "EXISTS", "REPLACE", "UNDROP", "TRUNCATE"}
)
_SHOW_TABLE_FIRST = frozenset({"COLUMNS", "FIELDS", "INDEX", "INDEXES", "INDICES", "KEYS"})


class _Token:
    __slots__ = ("end", "ident", "kind", "start", "text", "upper")

    def __init__(self, kind: str, text: str, start: int, end: int) -> None:
        self.kind, self.text, self.start, self.end = kind, text, start, end
        self.upper = text.upper() if kind == "word" else ""
        self.ident: str | None = text if kind == "word" else None
        if kind == "quoted":
            self.ident = re.sub(r"\\(.)", r"\1", text[1:-1])


def _tokens(sql: str) -> list[_Token]:
    out = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or "other"
        if kind != "blank":
            out.append(_Token(kind, match.group(), match.start(), match.end()))
    return out


def _denied(user: str, what: str) -> EngineError:
    return EngineError.of(
        497, "ACCESS_DENIED",
        f"{user}: Not enough privileges: {what}. isolated_clickhouse guard rails: a test's user may use only "
        "its own database (ask for a second isolated_clickhouse() to get another)",
    )


def _tableless(user: str, tokens: list[_Token]) -> None:
    """Without a database a lease user may only ``SELECT`` expressions, table functions or the
    system tables that show no database (clickhouse-connect asks ``SELECT version(), timezone()``
    so when it connects)."""
    if tokens[0].upper not in ("SELECT", "WITH"):
        raise _denied(user, f"{tokens[0].text} without a database; pass database=<its own database>")
    for i, tok in enumerate(tokens[:-1]):
        if tok.upper not in ("FROM", "JOIN"):
            continue
        nxt = tokens[i + 1]
        after = tokens[i + 2] if i + 2 < len(tokens) else None
        if (after is not None and after.text == "(") or nxt.text == "(":
            continue  # a table function (checked with the rest) or a subquery
        table = tokens[i + 3].ident if i + 3 < len(tokens) else None
        if not (nxt.ident == "system" and after is not None and after.text == "." and table in _SAFE_SYSTEM):
            raise _denied(user, "a table without a database; pass database=<its own database>")


def check(user: str, database: str | None, sql: str, known: Callable[[], frozenset[str]]) -> str:
    """The statement ``sql`` as lease user ``user`` may run it on ``database`` (rewritten where a
    system table is filtered), or an ``ACCESS_DENIED`` :class:`EngineError`.

    ``known()`` returns the names of the server's databases; it is asked only when a qualified name
    ``x.y`` could name one (``x`` may as well be a table or an alias).
    """
    if database is not None and not database.startswith(user + "_"):
        raise _denied(user, f"database {database!r} is not this user's; pass database=<its own database>")
    if database is not None and _TRIGGER.search(sql) is None:
        return sql  # nothing in it that any rule below looks at: most statements of most tests
    tokens = _tokens(sql)
    if not tokens:
        return sql
    if database is None:
        _tableless(user, tokens)
    first = tokens[0].upper
    words = [t.upper for t in tokens[:4]] + [""] * 4
    if first in _REFUSED_FIRST:
        raise _denied(user, f"{first} statements are refused")
    entity = words[1] in _ACCESS_ENTITIES or (words[1] == "OR" and words[3] in _ACCESS_ENTITIES)
    if (first in ("CREATE", "ALTER", "DROP", "ATTACH", "DETACH") and entity) or (
        first == "SET" and words[1] in ("ROLE", "DEFAULT")
    ):
        raise _denied(user, "access entities (users, roles, quotas, policies, profiles) are refused")
    if first == "CREATE" and "DATABASE" in words[1:4]:
        raise _denied(user, "CREATE DATABASE is refused (isolated_env makes each test's database)")
    if first == "RENAME" and words[1] == "DATABASE":
        raise _denied(user, "RENAME DATABASE is refused")
    if first == "SHOW" and words[1] == "DATABASES":
        if len(tokens) > 2 and tokens[2].upper != "FORMAT":
            raise _denied(user, "SHOW DATABASES takes no LIKE, LIMIT or INTO OUTFILE here")
        tail = sql[tokens[2].start:] if len(tokens) > 2 else ""
        return f"SELECT name FROM system.databases WHERE name = {quote_literal(database or '')} {tail}"

    def own(name: str, what: str) -> None:
        if database is None:
            raise _denied(user, f"{what} {name!r}: pass database=<its own database>")
        if name != database:
            raise _denied(user, f"{what} {name!r}: not this test's database")

    edits: list[tuple[int, int, str]] = []
    show_from_seen = 0
    count = len(tokens)
    for i, tok in enumerate(tokens):
        if tok.ident is None:  # every rule starts at a word or a quoted name
            continue
        nxt = tokens[i + 1] if i + 1 < count else None
        if first == "USE" and i == 1:
            own(tok.ident, "USE of")
        word = tok.upper
        if word == "DATABASE" and i > 0 and tokens[i - 1].upper in _DATABASE_VERBS:
            j = i + 1
            while j < len(tokens) and tokens[j].upper in ("IF", "NOT", "EXISTS"):
                j += 1
            if j < len(tokens) and tokens[j].ident is not None:
                own(tokens[j].ident or "", "database")
        if first == "SHOW" and word in ("FROM", "IN") and nxt is not None and nxt.ident is not None:
            show_from_seen += 1
            table_first = words[1] in _SHOW_TABLE_FIRST or words[2] in _SHOW_TABLE_FIRST
            after = tokens[i + 2] if i + 2 < len(tokens) else None
            if not (table_first and show_from_seen == 1) and not (after is not None and after.text == "."):
                own(nxt.ident or "", "SHOW ... FROM")
        if nxt is not None and nxt.text == "(" and tok.kind == "word":
            low = tok.text.lower()
            if low in _REFUSED_CALLS:
                raise _denied(user, f"{tok.text}() reaches other databases")
            if low.startswith(_DICT_CALLS):
                arg = tokens[i + 2] if i + 2 < len(tokens) else None
                if arg is not None and arg.kind == "string" and "." in arg.text:
                    own(arg.text[1:-1].split(".", 1)[0], f"{tok.text}() of")
            if low == "buffer" and i + 2 < len(tokens):
                arg = tokens[i + 2]
                name = arg.ident or (arg.text[1:-1] if arg.kind == "string" else None)
                if name is not None and (i + 3 >= len(tokens) or tokens[i + 3].text != "("):
                    own(name, "Buffer() of")
        if nxt is None or nxt.text != "." or (i > 0 and tokens[i - 1].text == "."):
            continue
        target = tokens[i + 2] if i + 2 < len(tokens) else None
        qualifier = tok.ident
        if qualifier == database:
            continue
        if qualifier.lower() == "information_schema":
            raise _denied(user, "INFORMATION_SCHEMA shows every database")
        if qualifier == "system":
            table = target.ident if target is not None else None
            if table in _SAFE_SYSTEM:
                continue
            if table in _FILTERED_SYSTEM and target is not None and database is not None:
                column = _FILTERED_SYSTEM[table]
                edits.append((tok.start, target.end,
                              f"(SELECT * FROM system.{table} WHERE {column} = {quote_literal(database)})"))
                continue
            raise _denied(user, f"system.{table} is refused (it shows other databases or other tests' queries)")
        if qualifier.startswith("ie_") or qualifier == "default" or qualifier in known():
            raise _denied(user, f"{qualifier!r}: not this test's database")
    for start, end, text in reversed(edits):
        sql = sql[:start] + text + sql[end:]
    return sql
