"""Partial matchers of ``expect(...)``: a JSON subset, form fields, a query subset, header values
by regex, presence or absence. Each returns the reasons a request does not match (empty: it does)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

import httpx

from ..._errors import ConfigError
from .._inprocess import preview

__all__ = [
    "HeaderMatch",
    "check_fields",
    "check_headers",
    "form_mismatch",
    "header_mismatch",
    "json_subset_mismatch",
    "query_subset_mismatch",
]

HeaderMatch = Mapping[str, "str | re.Pattern[str] | bool"] | None
"""Header name → exact value, a ``re.Pattern`` matched in full, ``True`` (present) or ``False`` (absent)."""

_MISSING = object()


def check_headers(headers: HeaderMatch) -> dict[str, str | re.Pattern[str] | bool]:
    out: dict[str, str | re.Pattern[str] | bool] = {}
    for name, want in (headers or {}).items():
        if not isinstance(want, (str, re.Pattern, bool)):
            raise ConfigError(
                f"expect(headers={{{name!r}: {want!r}}}): give a value (str), a re.Pattern, "
                "True (present) or False (absent)"
            )
        out[name] = want
    return out


def header_mismatch(headers: httpx.Headers, want: Mapping[str, str | re.Pattern[str] | bool]) -> list[str]:
    reasons = []
    for name, spec in want.items():
        got = headers.get(name)
        if spec is True:
            if got is None:
                reasons.append(f"header {name} is missing")
        elif spec is False:
            if got is not None:
                reasons.append(f"header {name} is present ({got!r}), expected absent")
        elif isinstance(spec, re.Pattern):
            if got is None or spec.fullmatch(got) is None:
                reasons.append(f"header {name}: {got!r} does not match {spec.pattern!r}")
        elif got != spec:
            reasons.append(f"header {name}: {got!r} != {spec!r}")
    return reasons


def json_subset_mismatch(got: Any, want: Any, at: str = "$") -> list[str]:
    """Where ``got`` is not a superset of ``want``: objects may have more keys, at any depth;
    arrays must have the same length, each element a superset of the expected one."""
    if isinstance(want, Mapping):
        if not isinstance(got, Mapping):
            return [f"{at}: expected an object, got {preview(got, 60)}"]
        reasons = []
        for key, value in want.items():
            if key not in got:
                reasons.append(f"{at} has no key {key!r}")
            else:
                reasons.extend(json_subset_mismatch(got[key], value, f"{at}.{key}"))
        return reasons
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{at}: expected an array of {len(want)}, got {preview(got, 60)}"]
        pairs = enumerate(zip(got, want, strict=True))
        return [r for n, (g, w) in pairs for r in json_subset_mismatch(g, w, f"{at}[{n}]")]
    if got != want or isinstance(got, bool) != isinstance(want, bool):
        return [f"{at}: {preview(got, 60)} != {preview(want, 60)}"]
    return []


def _pairs(fields: Mapping[str, str | Sequence[str]]) -> list[tuple[str, list[str]]]:
    out = []
    for name, value in fields.items():
        values = [value] if isinstance(value, str) else list(value)
        if not all(isinstance(v, str) for v in values):
            raise ConfigError(f"field {name!r}={value!r}: give a string or a list of strings")
        out.append((name, values))
    return out


def check_fields(what: str, fields: Mapping[str, str | Sequence[str]] | None) -> list[tuple[str, list[str]]] | None:
    if fields is None:
        return None
    if not isinstance(fields, Mapping):
        raise ConfigError(f"expect({what}={fields!r}): give a dict of field name to value (or list of values)")
    return _pairs(fields)


def _subset(kind: str, got: list[tuple[str, str]], want: list[tuple[str, list[str]]]) -> list[str]:
    reasons = []
    for name, values in want:
        have = [v for k, v in got if k == name]
        if not have:
            reasons.append(f"{kind} field {name!r} is missing")
        elif have != values:
            shown: Any = values[0] if len(values) == 1 else values
            got_shown: Any = have[0] if len(have) == 1 else have
            reasons.append(f"{kind} field {name!r}: {got_shown!r} != {shown!r}")
    return reasons


def query_subset_mismatch(query: httpx.QueryParams, want: list[tuple[str, list[str]]]) -> list[str]:
    return _subset("query", list(query.multi_items()), want)


def form_mismatch(content_type: str, body: bytes, want: list[tuple[str, list[str]]]) -> list[str]:
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return [f"body is not a form (content-type {content_type!r})"]
    try:
        got = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        return [f"body is not a form: {preview(body, 80)}"]
    return _subset("form", got, want)
