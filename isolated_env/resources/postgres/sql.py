"""The SQL text we write and read: identifier and literal quoting, and splitting a script into
statements the way psql would (a template's SQL runs one statement at a time)."""

from __future__ import annotations

import re

__all__ = ["quote_ident", "quote_literal", "split_sql"]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# Matched in place (pattern.match(text, i)): slicing text[i:] per word made splitting quadratic.
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def split_sql(text: str) -> list[tuple[int, str]]:
    """The statements of a SQL script, each with the line it starts on, split where psql would.

    Semicolons inside quotes, dollar quotes, comments, parentheses and ``BEGIN ATOMIC … END``
    bodies do not end a statement.
    """
    out: list[tuple[int, str]] = []
    n = len(text)
    i = 0
    paren = atomic = 0
    code_at = -1  # first character of code (not comment/space) in the current statement
    words: list[str] = []
    counted_to, line = 0, 1  # newlines are counted incrementally: recounting from 0 was quadratic

    def finish(end: int) -> None:
        nonlocal code_at, words, paren, atomic, counted_to, line
        if code_at >= 0:
            line += text.count("\n", counted_to, code_at)
            counted_to = code_at
            out.append((line, text[code_at:end].strip()))
        code_at, words, paren, atomic = -1, [], 0, 0

    while i < n:
        ch = text[i]
        if ch == "-" and text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
            continue
        if ch == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        if ch == ";" and paren == 0 and atomic == 0:
            finish(i)
            i += 1
            continue
        if code_at < 0:
            code_at = i
        if ch == "'":
            before = text[i - 2] if i >= 2 else " "
            escapes = i > 0 and text[i - 1] in "eE" and not (before.isalnum() or before == "_")
            i += 1
            while i < n:
                if escapes and text[i] == "\\":
                    i += 2
                    continue
                if text[i] == "'":
                    if text.startswith("''", i):
                        i += 2
                        continue
                    break
                i += 1
            i += 1
            continue
        if ch == '"':
            end = i + 1
            while True:
                end = text.find('"', end)
                if end < 0 or not text.startswith('""', end):
                    break
                end += 2
            i = n if end < 0 else end + 1
            continue
        if ch == "$" and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = _DOLLAR_TAG.match(text, i)
            if m:
                tag = m.group(0)
                end = text.find(tag, i + len(tag))
                i = n if end < 0 else end + len(tag)
                continue
        if ch == "(":
            paren += 1
        elif ch == ")":
            paren = max(0, paren - 1)
        elif ch.isalpha() or ch == "_":
            m = _WORD.match(text, i)
            assert m is not None
            word = m.group(0).upper()
            if len(words) < 4:
                words.append(word)
            routine = words[:1] == ["CREATE"] and ("FUNCTION" in words or "PROCEDURE" in words)
            if routine and word == "BEGIN":
                atomic += 1
            elif atomic and word == "CASE":
                atomic += 1
            elif atomic and word == "END":
                atomic -= 1
            i += len(m.group(0))
            continue
        i += 1
    finish(n)
    return out
