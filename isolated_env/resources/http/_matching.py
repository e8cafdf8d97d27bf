"""Which expectation a request matches, and a readable account of why it matches none."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from ..._errors import ConfigError
from .._inprocess import preview
from ._partial import (
    HeaderMatch,
    check_fields,
    check_headers,
    form_mismatch,
    header_mismatch,
    json_subset_mismatch,
    query_subset_mismatch,
)
from ._server import RecordedRequest

__all__ = ["NOT_GIVEN", "FieldsArg", "HeaderMatch", "HeadersArg", "QueryArg", "RequestMatcher"]


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()
"""``json=None`` means "the body is JSON null"; this means "not part of the match"."""

QueryArg = str | Mapping[str, str | Sequence[str]] | None
HeadersArg = Mapping[str, str] | None
FieldsArg = Mapping[str, str | Sequence[str]] | None


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True, default=repr).splitlines()


@dataclasses.dataclass(frozen=True)
class RequestMatcher:
    """What a request must look like: method, path (a string or a compiled regex matched in full),
    and optionally its host, exact query or a subset of it, JSON body or a subset of it, form fields,
    raw body, headers (by value, regex, presence or absence), and a predicate."""

    method: str
    path: str | re.Pattern[str]
    query: httpx.QueryParams | None = None
    json: Any = NOT_GIVEN
    body: bytes | None = None
    headers: Mapping[str, str | re.Pattern[str] | bool] = dataclasses.field(default_factory=dict)
    match: Callable[[RecordedRequest], bool] | None = None
    json_contains: Any = NOT_GIVEN
    query_contains: list[tuple[str, list[str]]] | None = None
    form: list[tuple[str, list[str]]] | None = None
    host: str | None = None

    @classmethod
    def build(
        cls,
        method: str,
        path: str | re.Pattern[str],
        *,
        query: QueryArg,
        json: Any,
        body: bytes | str | None,
        headers: HeaderMatch,
        match: Callable[[RecordedRequest], bool] | None,
        json_contains: Any = NOT_GIVEN,
        query_contains: FieldsArg = None,
        form: FieldsArg = None,
        host: str | None = None,
    ) -> RequestMatcher:
        if not isinstance(method, str) or not method.strip():
            raise ConfigError(f"expect(method={method!r}): give an HTTP method such as 'GET'")
        if isinstance(path, str) and not path.startswith("/"):
            raise ConfigError(f"expect(path={path!r}): the path must start with '/' (or be a re.Pattern)")
        bodies = [n for n, v in (("json", json), ("json_contains", json_contains)) if v is not NOT_GIVEN]
        bodies += [n for n, v in (("body", body), ("form", form)) if v is not None]
        if len(bodies) > 1:
            raise ConfigError(
                f"expect(): give one of json=, json_contains=, form= and body=, not {' and '.join(bodies)}"
            )
        if query is not None and query_contains is not None:
            raise ConfigError("expect(): give query= (the exact query) or query_contains= (a subset), not both")
        return cls(
            method=method.strip().upper(),
            path=path,
            query=None if query is None else httpx.QueryParams(query),
            json=json,
            body=body.encode() if isinstance(body, str) else body,
            headers=check_headers(headers),
            match=match,
            json_contains=json_contains,
            query_contains=check_fields("query_contains", query_contains),
            form=check_fields("form", form),
            host=host.lower() if host else None,
        )

    def describe(self) -> str:
        path = self.path if isinstance(self.path, str) else f"re({self.path.pattern!r})"
        parts = [f"{self.method} {'//' + self.host if self.host else ''}{path}"]
        if self.query is not None:
            parts.append(f"?{self.query}")
        extras = []
        if self.query_contains is not None:
            extras.append(f"query_contains={_fields(self.query_contains)}")
        if self.json_contains is not NOT_GIVEN:
            extras.append(f"json_contains={_short(self.json_contains)}")
        if self.form is not None:
            extras.append(f"form={_fields(self.form)}")
        if self.json is not NOT_GIVEN:
            extras.append(f"json={_short(self.json)}")
        if self.body is not None:
            extras.append(f"body={_short(self.body)}")
        if self.headers:
            shown = {k: v.pattern if isinstance(v, re.Pattern) else v for k, v in self.headers.items()}
            extras.append(f"headers={shown}")
        if self.match is not None:
            extras.append(f"match={getattr(self.match, '__name__', 'predicate')}")
        return "".join(parts) + (f" ({', '.join(extras)})" if extras else "")

    def mismatches(self, request: RecordedRequest) -> list[str]:
        """Why ``request`` does not match, one reason per field; empty when it matches."""
        reasons: list[str] = []
        if request.method != self.method:
            reasons.append(f"method {request.method} != {self.method}")
        if isinstance(self.path, str):
            if request.path != self.path:
                reasons.append(f"path {request.path!r} != {self.path!r}")
        elif self.path.fullmatch(request.path) is None:
            reasons.append(f"path {request.path!r} does not match {self.path.pattern!r}")
        if self.host is not None:
            host = (request.headers.get("host") or "").lower().rsplit(":", 1)[0]
            if host != self.host:
                reasons.append(f"host {host!r} != {self.host!r}")
        if self.query is not None and request.query != self.query:
            reasons.append(f"query {str(request.query)!r} != {str(self.query)!r}")
        if self.query_contains is not None:
            reasons.extend(query_subset_mismatch(request.query, self.query_contains))
        reasons.extend(header_mismatch(request.headers, self.headers))
        if self.json is not NOT_GIVEN:
            reasons.extend(self._json_mismatch(request))
        if self.json_contains is not NOT_GIVEN:
            try:
                reasons.extend(f"json body: {r}" for r in json_subset_mismatch(request.json(), self.json_contains))
            except ValueError:
                reasons.append(f"body is not JSON: {_short(request.body)}")
        if self.form is not None:
            reasons.extend(form_mismatch(request.headers.get("content-type", ""), request.body, self.form))
        if self.body is not None and request.body != self.body:
            reasons.append(f"body {_short(request.body)} != {_short(self.body)}")
        if self.match is not None and not reasons:
            try:
                ok = bool(self.match(request))
            except Exception as exc:  # the test's predicate: its error is the reason it did not match
                reasons.append(f"match predicate raised {type(exc).__name__}: {exc}")
            else:
                if not ok:
                    reasons.append(f"match predicate {getattr(self.match, '__name__', '')} returned False")
        return reasons

    def _json_mismatch(self, request: RecordedRequest) -> list[str]:
        try:
            got = request.json()
        except ValueError:
            return [f"body is not JSON: {_short(request.body)}"]
        if got == self.json:
            return []
        diff = difflib.unified_diff(
            _pretty(self.json), _pretty(got), "expected json", "received json", lineterm=""
        )
        return ["json body differs:\n" + "\n".join(list(diff)[:40])]


def _fields(fields: list[tuple[str, list[str]]]) -> str:
    return str({name: values[0] if len(values) == 1 else values for name, values in fields})


def _short(value: Any) -> str:
    """A value cut short enough to sit in a one-line reason."""
    return preview(value, 80)
