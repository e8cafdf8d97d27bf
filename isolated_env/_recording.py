"""Cassettes: HTTP interactions recorded once and replayed byte for byte, with no secret written.

A cassette is one JSON Lines file: a header (``version`` 1), then one interaction a line. Each
keeps its request (method, path, query, the headers worth keeping, the body as JSON or text) under a
match ``key``, and its response
as status, headers and the **ordered list of raw byte writes**, each with its byte ``offset`` and its
time ``at_ms`` since the request arrived, so a replay sends the same bytes in the same write
boundaries (and, asked to, at the same pace). Parsed server-sent events are stored beside the
writes, for a reader; replay never reads them.

Matching is on a canonical form of the request: method, path, sorted query, and the body as JSON
with sorted keys and the volatile fields removed (headers never take part, so ``x-stainless-*``,
user agents and request ids cannot break a match). Equal keys are answered in recorded order. A miss
is explained by a diff against the nearest recorded request.

Secrets: headers and JSON fields on a deny list are dropped as an interaction is added; then, before
the file is written, the whole cassette — headers, query strings, bodies, and every raw write,
decoded — is scanned for key shapes (``sk-``, ``sk-ant-``, ``AKIA``, JWTs) and for the exact keys
the caller names; a finding refuses the write (:class:`~isolated_env.SecretInCassette`).

Nothing here is LLM-specific: isolated_http's record/replay can use it as it is.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._errors import ConfigError, SecretInCassette

__all__ = ["SECRET_FIELDS", "SECRET_HEADERS", "Cassette", "Interaction", "canonical", "clean_headers", "scan"]

VERSION = 1
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "set-cookie",
        "x-goog-api-key",
        "openai-organization",
        "openai-project",
        "anthropic-organization-id",
    }
)
"""Request and response headers never written."""
VOLATILE_HEADER_PREFIXES = ("x-stainless-",)
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"})
SECRET_FIELDS = frozenset(
    {
        "api_key",
        "apikey",
        "api-key",
        "access_token",
        "refresh_token",
        "client_secret",
        "password",
        "secret",
        "token",
        "authorization",
    }
)
"""JSON object keys (at any depth, any case) whose values are never written."""
_KEY_SHAPES = (
    ("an OpenAI/Anthropic-style API key", re.compile(r"sk-[A-Za-z0-9_\-]{16,}")),
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a JWT", re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}")),
)


def clean_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` without secrets, volatile ones and hop-by-hop ones."""
    return [
        (k.lower(), v)
        for k, v in headers
        if k.lower() not in SECRET_HEADERS | _HOP_BY_HOP and not k.lower().startswith(VOLATILE_HEADER_PREFIXES)
    ]


def _clean_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items() if k.lower() not in SECRET_FIELDS}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


def _body(raw: bytes) -> Any:
    """A body as it is stored: parsed JSON (secret fields dropped), else text, else base64."""
    try:
        return {"json": _clean_json(json.loads(raw))} if raw else {"text": ""}
    except ValueError:
        try:
            return {"text": raw.decode()}
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(raw).decode()}


def canonical(method: str, path: str, query: str, body: bytes, volatile: Sequence[str] = ()) -> str:
    """The form a request is matched by: method, path, sorted query, the body as sorted JSON
    (minus ``volatile`` top-level fields and secret ones) or as text."""
    stored = _body(body)
    if "json" in stored and isinstance(stored["json"], dict):
        stored = {"json": {k: v for k, v in stored["json"].items() if k not in volatile}}
    pairs = "&".join(sorted(query.split("&"))) if query else ""
    return json.dumps([method.upper(), path, pairs, stored], sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def key_of(canonical_text: str) -> str:
    return hashlib.sha256(canonical_text.encode()).hexdigest()[:32]


@dataclasses.dataclass(eq=False)
class Interaction:
    """One recorded request and its response, as raw writes ``(at_ms, bytes)``."""

    key: str
    request: dict[str, Any]
    status: int
    headers: list[tuple[str, str]]
    writes: list[tuple[float, bytes]]
    canonical: str = ""
    used: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.writes)

    def events(self) -> list[dict[str, Any]]:
        """The server-sent events of the body (``event`` name and ``data``, parsed when JSON)."""
        out = []
        for frame in self.body.decode(errors="replace").split("\n\n"):
            lines = frame.split("\n")
            data = "\n".join(x[6:] for x in lines if x.startswith("data: "))
            name = next((x[7:] for x in lines if x.startswith("event: ")), None)
            if not data and name is None:
                continue
            try:
                parsed: Any = json.loads(data)
            except ValueError:
                parsed = data
            out.append({"event": name, "data": parsed})
        return out

    def to_json(self) -> dict[str, Any]:
        writes, offset = [], 0
        for at_ms, data in self.writes:
            try:
                piece: dict[str, Any] = {"text": data.decode()}
            except UnicodeDecodeError:
                piece = {"b64": base64.b64encode(data).decode()}
            writes.append({"offset": offset, "at_ms": round(at_ms, 3), **piece})
            offset += len(data)
        streamed = any(k == "content-type" and "event-stream" in v for k, v in self.headers)
        response: dict[str, Any] = {"status": self.status, "headers": [list(h) for h in self.headers], "writes": writes}
        if streamed:
            response["events"] = self.events()
        return {"key": self.key, "request": self.request, "response": response}

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> Interaction:
        response = item["response"]
        writes = [
            (float(w["at_ms"]), w["text"].encode() if "text" in w else base64.b64decode(w["b64"]))
            for w in response["writes"]
        ]
        return cls(
            key=item["key"],
            request=item["request"],
            status=int(response["status"]),
            headers=[(k, v) for k, v in response["headers"]],
            writes=writes,
        )


def make_interaction(
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    status: int,
    response_headers: Iterable[tuple[str, str]],
    writes: list[tuple[float, bytes]],
    volatile: Sequence[str] = (),
) -> Interaction:
    """An interaction ready to store: secrets and volatile headers dropped, its match key computed."""
    text = canonical(method, path, query, body, volatile)
    request = {
        "method": method.upper(),
        "path": path,
        "query": query,
        "headers": dict(clean_headers(headers)),
        **_body(body),
    }
    return Interaction(key_of(text), request, status, clean_headers(response_headers), writes, canonical=text)


def scan(text: str, known: Iterable[str] = ()) -> list[str]:
    """What in ``text`` looks like a secret: each finding named, the value never shown whole."""
    found = []
    for secret in known:
        if secret and len(secret) >= 8 and secret in text:
            found.append(f"the key {secret[:4]}… given to the recorder")
    for what, pattern in _KEY_SHAPES:
        for match in pattern.finditer(text):
            found.append(f"{what} ({match[0][:6]}…)")
    return found


class _Entry:
    """One interaction of a loaded cassette: its key read at load, the rest parsed on first use."""

    __slots__ = ("_item", "key", "line")

    def __init__(self, key: str, line: bytes | None, item: Interaction | None = None) -> None:
        self.key, self.line, self._item = key, line, item

    @property
    def item(self) -> Interaction:
        if self._item is None:
            assert self.line is not None
            self._item = Interaction.from_json(json.loads(self.line))
        return self._item


_KEY_PREFIX = b'{"key":"'


class Cassette:
    """The interactions of one file, indexed by match key; ``save()`` writes them, scanned first.

    The file is JSON Lines: a header line, then one interaction per line, each starting with its key,
    so loading reads the keys only and an interaction is parsed when it is first replayed."""

    def __init__(self, path: Path, interactions: list[Interaction]) -> None:
        self.path = path
        self.added: list[Interaction] = []
        self._entries = [_Entry(item.key, None, item) for item in interactions]
        self._index()

    def _index(self) -> None:
        self._by_key: dict[str, list[_Entry]] = {}
        self._first_unused: dict[str, int] = {}  # per key, entries before it are all used (used never reverts)
        for entry in self._entries:
            self._by_key.setdefault(entry.key, []).append(entry)

    @property
    def interactions(self) -> list[Interaction]:
        return [entry.item for entry in self._entries]

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, must_exist: bool) -> Cassette:
        where = Path(path)
        if not where.exists():
            if must_exist:
                raise ConfigError(
                    f"cassette {where} does not exist; record it first (mode='record' or "
                    "'record_missing'), or fix the path"
                )
            return cls(where, [])
        cassette = cls(where, [])
        try:
            head, *lines = where.read_bytes().split(b"\n")
            version = json.loads(head).get("version")
            if version != VERSION:
                raise ValueError(f"version {version!r}, expected {VERSION}")
            for line in lines:
                if not line:
                    continue
                if not line.startswith(_KEY_PREFIX) or line[40:41] != b'"':
                    raise ValueError(f"a line that does not start with its key: {line[:60]!r}")
                cassette._entries.append(_Entry(line[8:40].decode(), line))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cassette {where} cannot be read ({exc}); record it again") from exc
        cassette._index()
        return cassette

    def take(self, key: str) -> Interaction | None:
        """The first unused interaction recorded under ``key`` (marked used), or None; amortized
        constant time, so replaying a cassette of n identical calls is linear, not quadratic."""
        entries = self._by_key.get(key, ())
        at = self._first_unused.get(key, 0)
        while at < len(entries):
            item = entries[at].item
            at += 1
            if not item.used:
                item.used = True
                self._first_unused[key] = at
                return item
        self._first_unused[key] = at
        return None

    def nearest(self, canonical_text: str) -> str:
        """A diff of ``canonical_text`` against the closest recorded request, for a miss."""
        if not self._entries:
            return "the cassette has no interactions"

        def text(item: Interaction) -> str:
            r = item.request
            body = {k: r[k] for k in ("json", "text", "b64") if k in r}
            return json.dumps([r["method"], r["path"], r.get("query", ""), body], sort_keys=True, indent=1)

        method, path, query, body = json.loads(canonical_text)
        received = json.dumps([method, path, query, body], sort_keys=True, indent=1)
        best = max(self.interactions, key=lambda i: difflib.SequenceMatcher(None, text(i), received).ratio())
        diff = difflib.unified_diff(
            text(best).splitlines(), received.splitlines(), "recorded", "received", lineterm="", n=2
        )
        return "diff against the nearest recorded request:\n" + "\n".join(list(diff)[:60])

    def unused(self) -> list[Interaction]:
        return [item for item in self.interactions if not item.used]

    def unused_messages(self) -> list[str]:
        """One line for each interaction replay never used (what a replaying server reports at exit)."""
        return [
            f"recorded interaction {item.request['method']} {item.request['path']} "
            f"(key {item.key}) was never requested: unused in {self.path}"
            for item in self.unused()
        ]

    def add(self, item: Interaction) -> None:
        self.added.append(item)

    def save(self, *, keep_existing: bool, known_secrets: Iterable[str] = ()) -> int:
        """Write the file (the recorded interactions, after the existing ones if ``keep_existing``);
        refuse with SecretInCassette if anything in it looks like a secret. Returns how many it holds."""
        items = [*(self.interactions if keep_existing else []), *self.added]
        lines = [json.dumps({"version": VERSION, "interactions": len(items)})]
        lines += [json.dumps(item.to_json(), ensure_ascii=False, separators=(",", ":")) for item in items]
        text = "\n".join(lines) + "\n"
        decoded = "\n".join(item.body.decode(errors="replace") for item in items)  # base64 writes hide nothing
        findings = scan(text + "\n" + decoded, known_secrets)
        if findings:
            raise SecretInCassette(
                f"refused to write cassette {self.path}: it would contain {'; '.join(sorted(set(findings)))}. "
                "Nothing was written; find where the secret enters the request or response (a header or field "
                "the deny list does not know?) and keep it out"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(text)
        partial.replace(self.path)
        return len(items)
