"""A fast walk over a LibCST tree, in source order, for read-only passes.

LibCST's visitor dispatches on every field of every node (attribute visitors, whitespace, commas);
a scan of thousands of files spends most of its time there. This walk follows only the fields that
hold code, with the field list cached per node type, and calls an ``enter``/``leave`` handler per
node type. Decorators come first for functions and classes, as they do in the source, so sites are
met in the order their lines run.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import libcst as cst

__all__ = ["Handlers", "attributes", "walk"]

Handlers = dict[type[cst.CSTNode], Callable[[cst.CSTNode], bool | None]]

_NOT_CODE = re.compile(
    r"whitespace|^lpar$|^rpar$|^comma$|leading_lines|lines_after_decorators|^semicolon$|^header$|^footer$"
    r"|^equal$|^colon$|^dot$|^star$|^operator$|^asynchronous$|^newline$|^indent$|^footer$|^lbracket$|^rbracket$"
    r"|^lbrace$|^rbrace$|^encoding$|^default_"
)
_FIELDS: dict[type, tuple[str, ...]] = {}
_IS_NODE: dict[type, bool] = {}


def _fields(kind: type) -> tuple[str, ...]:
    if kind is cst.FunctionDef:
        return ("decorators", "params", "returns", "body")
    if kind is cst.ClassDef:
        return ("decorators", "bases", "keywords", "body")
    return tuple(f.name for f in dataclasses.fields(kind) if not _NOT_CODE.search(f.name))


def _is_node(kind: type) -> bool:
    known = _IS_NODE.get(kind)
    if known is None:
        known = _IS_NODE[kind] = issubclass(kind, cst.CSTNode)
    return known


def walk(node: cst.CSTNode, enter: Handlers, leave: Handlers | None = None) -> None:
    """Call ``enter[type(node)]`` (a False return skips the node's children), walk the children,
    then ``leave[type(node)]``."""
    kind = type(node)
    handler = enter.get(kind)
    if handler is not None and handler(node) is False:
        return
    fields = _FIELDS.get(kind)
    if fields is None:
        fields = _FIELDS[kind] = _fields(kind)
    for name in fields:
        value = getattr(node, name)
        vkind = type(value)
        if vkind is tuple or vkind is list:
            for item in value:
                if _is_node(type(item)):
                    walk(item, enter, leave)
        elif _is_node(vkind):
            walk(value, enter, leave)
    if leave is not None:
        done = leave.get(kind)
        if done is not None:
            done(node)


def attributes(node: cst.CSTNode) -> set[str]:
    """The attribute names used anywhere in ``node`` (``m.assert_called`` -> {"assert_called"})."""
    found: set[str] = set()

    def attribute(n: cst.CSTNode) -> None:
        assert isinstance(n, cst.Attribute)
        found.add(n.attr.value)

    walk(node, {cst.Attribute: attribute})
    return found
