"""What a mock stands in for: the services, the words that name them, the fixtures that replace them.

A site is classified from the words of what it patches (``app.cache.redis.Redis.get``,
``spec=asyncpg.Connection``, ``setenv("DATABASE_URL")``, ``mock_redis``). A library's name is a
strong word and beats a generic one (``db``, ``cache``, ``api``); among words of equal strength the
rightmost wins, because the attribute patched is the last part of a target:
``app.cache.time.time`` patches the clock of the cache module, not Redis.
"""

from __future__ import annotations

import re

__all__ = ["MOCK_FIXTURES", "REPLACEMENTS", "SERVICES", "classify_words", "fixture_service", "words"]

SERVICES = ("postgres", "redis", "clickhouse", "http", "websocket", "filesystem", "llm", "clock", "internal")

# What replaces a mock of each service; clock and internal stay mocks.
REPLACEMENTS: dict[str, str] = {
    "postgres": "isolated_database (async, asyncpg API) or isolated_database_dsn (any driver, sync)",
    "redis": "isolated_redis (redis.asyncio API) or isolated_redis_url (redis.Redis.from_url)",
    "clickhouse": "isolated_clickhouse",
    "http": "isolated_http (a real server: expect(...) / route(host))",
    "websocket": "isolated_ws",
    "filesystem": "isolated_fs",
    "llm": "isolated_llm (budget-capped, offline by default)",
    "clock": "keep: a fake clock (time-machine, freezegun) is the right tool",
    "internal": "keep, or call the real collaborator: it is your own code",
}

_STRONG: dict[str, tuple[str, ...]] = {
    "postgres": (
        "asyncpg",
        "psycopg",
        "psycopg2",
        "postgres",
        "postgresql",
        "pg",
        "sqlalchemy",
        "sqlmodel",
        "alembic",
        "sqlite3",
        "aiosqlite",
        "sqlite",
        "tortoise",
        "peewee",
        "pgbouncer",
        "pgvector",
    ),
    "redis": ("redis", "aioredis", "fakeredis", "valkey", "rediscluster"),
    "clickhouse": ("clickhouse", "chdb", "aiochclient"),
    "http": (
        "requests",
        "httpx",
        "aiohttp",
        "urllib",
        "urllib3",
        "urlopen",
        "http",
        "https",
        "boto3",
        "botocore",
        "moto",
        "responses",
        "respx",
        "aioresponses",
        "vcr",
        "httpserver",
        "webhook",
        "webhooks",
        "grpc",
    ),
    "websocket": ("websocket", "websockets", "ws", "wss", "socketio"),
    "filesystem": (
        "open",
        "pathlib",
        "shutil",
        "tempfile",
        "aiofiles",
        "fs",
        "filesystem",
        "listdir",
        "makedirs",
        "unlink",
        "rmtree",
        "isfile",
        "isdir",
        "getcwd",
        "chdir",
        "scandir",
        "file",
        "files",
        "tmpdir",
        "fopen",
        "tmp_path",
    ),
    "llm": (
        "openai",
        "anthropic",
        "llm",
        "llms",
        "langchain",
        "litellm",
        "gpt",
        "claude",
        "completion",
        "completions",
        "chatcompletion",
        "embedding",
        "embeddings",
        "cohere",
        "gemini",
    ),
    "clock": (
        "time",
        "datetime",
        "date",
        "sleep",
        "now",
        "utcnow",
        "today",
        "monotonic",
        "perf_counter",
        "clock",
        "freezegun",
        "time_machine",
        "timestamp",
        "tz",
        "timezone",
    ),
}
_WEAK: dict[str, tuple[str, ...]] = {
    "postgres": (
        "db",
        "database",
        "databases",
        "sql",
        "orm",
        "repository",
        "repo",
        "cursor",
        "dsn",
        "sessionmaker",
        "migrations",
        "fetchrow",
        "fetchval",
        "executemany",
    ),
    "redis": ("cache", "caching", "cached", "kv", "pubsub", "throttle", "ratelimit"),
    "clickhouse": ("analytics", "olap"),
    "http": (
        "api",
        "rest",
        "endpoint",
        "download",
        "upload",
        "gateway",
        "stripe",
        "github",
        "slack",
        "webclient",
        "oauth",
    ),
    "websocket": ("socket", "realtime"),
    "filesystem": (
        "dir",
        "directory",
        "storage",
        "disk",
        "path",
        "remove",
        "rename",
        "walk",
        "exists",
        "glob",
        "mkdir",
        "home",
    ),
    "llm": ("ai", "chat", "prompt", "agent", "model_client"),
    "clock": ("timer", "schedule", "expiry", "ttl"),
}
_WORDS: dict[str, tuple[int, str]] = {}
for _weight, _table in ((1, _WEAK), (2, _STRONG)):
    for _service, _names in _table.items():
        for _name in _names:
            _WORDS[_name] = (_weight, _service)

# The original report's mock fixtures and the isolated fixtures that replace them, as a rewrite renames them.
MOCK_FIXTURES: dict[str, str] = {
    "mock_database": "isolated_database",
    "mock_db": "isolated_database",
    "mock_postgres": "isolated_database",
    "mock_redis": "isolated_redis",
    "mock_cache": "isolated_redis",
    "mock_clickhouse": "isolated_clickhouse",
    "mock_websocket": "isolated_ws",
    "mock_ws": "isolated_ws",
    "mock_http": "isolated_http",
    "mock_http_client": "isolated_http",
    "mock_fs": "isolated_fs",
    "mock_filesystem": "isolated_fs",
    "mock_file_system": "isolated_fs",
    "mock_llm": "isolated_llm",
    "mock_llm_client": "isolated_llm",
}

_LIBRARIES = tuple(w for names in _STRONG.values() for w in names if len(w) >= 5 and w.isalpha())
_SPLIT = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def words(text: str) -> list[str]:
    """The words of a dotted name, identifier or environment variable, lowercased, in order; each
    dotted part also counts whole (``time_machine``, ``perf_counter``)."""
    out: list[str] = []
    for part in re.split(r"[^A-Za-z0-9_]+", text):
        if not part:
            continue
        lowered = part.lower()
        pieces = [m.lower() for chunk in part.split("_") for m in _SPLIT.findall(chunk)]
        out.extend(pieces)
        if lowered not in pieces:
            out.append(lowered)
        # a library's name inside a CamelCase one (AsyncOpenAI, AsyncpgPool) beats its pieces ("open")
        out.extend(lib for lib in _LIBRARIES if lib in lowered and lib not in pieces and lib != lowered)
    return out


def classify_words(*texts: str | None) -> str | None:
    """The service named by the strongest, rightmost word of ``texts`` (read as one sequence), or
    None when no word names one."""
    best: tuple[int, int] = (0, -1)
    service: str | None = None
    position = 0
    for text in texts:
        if not text:
            continue
        for word in words(text):
            position += 1
            hit = _WORDS.get(word)
            if hit is not None and (hit[0], position) >= best:
                best, service = (hit[0], position), hit[1]
    return service


def fixture_service(name: str) -> str | None:
    """The service a mock fixture of this name stands in for (``mock_redis`` -> redis), or None
    when the name is not a mock fixture's."""
    if name in MOCK_FIXTURES or name.startswith(("mock_", "fake_", "stub_")):
        return classify_words(name.split("_", 1)[1]) or "internal"
    return None
