"""The small OData subset the Batch list operations use: ``$filter``, ``$select`` and paging.

``$filter`` supports ``eq ne gt ge lt le``, ``and``, ``or``, ``not``, parentheses, ``startswith(prop,'x')``,
string/number/boolean/``datetime'...'`` literals and property paths such as ``executionInfo/result``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from batchmagic.emulator.errors import ApiError

__all__ = ["compile_filter", "apply_select"]

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<dt>datetime'[^']*')|(?P<num>-?\d+(?:\.\d+)?)"
    r"|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<word>[A-Za-z_][\w/.]*))"
)
_COMPARE = {"eq", "ne", "gt", "ge", "lt", "le"}

Predicate = Callable[[dict[str, Any]], bool]


def _bad(expr: str) -> ApiError:
    return ApiError(
        400,
        "InvalidQueryParameterValue",
        values=[("QueryParameterName", "$filter"), ("QueryParameterValue", expr), ("Reason", "Unsupported filter")],
    )


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise _bad(expr)
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _lookup(obj: Any, path: str) -> Any:
    for part in path.split("/"):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _instant(text: str) -> datetime | None:
    """An ISO 8601 time (any number of fraction digits, ``Z`` or an offset) as an aware datetime."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d)?)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?", text.strip())
    if not match:
        return None
    fraction = (match.group(2) or "")[:6].ljust(6, "0")
    zone = match.group(3) or "Z"
    try:
        stamp = datetime.fromisoformat(f"{match.group(1)}.{fraction}{'+00:00' if zone == 'Z' else zone}")
    except ValueError:
        return None
    return stamp.astimezone(UTC)


class _DateTime(str):
    """A ``datetime'...'`` literal: compared with a property as a point in time, not as text."""


def _compare(op: str, left: Any, right: Any) -> bool:
    if isinstance(left, _DateTime) or isinstance(right, _DateTime):
        # The service compares times, whatever digits either side writes (2026-01-22T20:27:10.9495890Z).
        left = _instant(left) if isinstance(left, str) else left
        right = _instant(right) if isinstance(right, str) else right
    elif isinstance(left, str) and isinstance(right, str):
        left, right = left.lower(), right.lower()
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if left is None or right is None:
        return False
    try:
        return bool({"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}[op])
    except TypeError:
        return False


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = _tokens(expr)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise _bad(self.expr)
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        pred = self.or_expr()
        if self.peek() is not None:
            raise _bad(self.expr)
        return pred

    def or_expr(self) -> Predicate:
        left = self.and_expr()
        while (tok := self.peek()) and tok == ("word", "or"):
            self.take()
            right = self.and_expr()
            left = (lambda a, b: lambda o: a(o) or b(o))(left, right)
        return left

    def and_expr(self) -> Predicate:
        left = self.unary()
        while (tok := self.peek()) and tok == ("word", "and"):
            self.take()
            right = self.unary()
            left = (lambda a, b: lambda o: a(o) and b(o))(left, right)
        return left

    def unary(self) -> Predicate:
        if self.peek() == ("word", "not"):
            self.take()
            inner = self.unary()
            return lambda o: not inner(o)
        if self.peek() and self.peek()[0] == "lp":  # type: ignore[index]
            self.take()
            inner = self.or_expr()
            if self.take()[0] != "rp":
                raise _bad(self.expr)
            return inner
        return self.comparison()

    def operand(self) -> Callable[[dict[str, Any]], Any]:
        kind, text = self.take()
        if kind == "str":
            value: Any = text[1:-1].replace("''", "'")
            return lambda o: value
        if kind == "dt":
            value = _DateTime(text[len("datetime'") : -1])
            return lambda o: value
        if kind == "num":
            value = float(text) if "." in text else int(text)
            return lambda o: value
        if kind == "word":
            if text in ("true", "false"):
                value = text == "true"
                return lambda o: value
            if text == "null":
                return lambda o: None
            if text in ("startswith", "endswith", "substringof") and self.peek() and self.peek()[0] == "lp":  # type: ignore[index]
                self.take()
                a = self.operand()
                if self.take()[0] != "comma":
                    raise _bad(self.expr)
                b = self.operand()
                if self.take()[0] != "rp":
                    raise _bad(self.expr)
                if text == "startswith":
                    return lambda o: str(a(o) or "").lower().startswith(str(b(o)).lower())
                if text == "endswith":
                    return lambda o: str(a(o) or "").lower().endswith(str(b(o)).lower())
                return lambda o: str(a(o)).lower() in str(b(o) or "").lower()
            path = text
            return lambda o: _lookup(o, path)
        raise _bad(self.expr)

    def comparison(self) -> Predicate:
        left = self.operand()
        tok = self.peek()
        if tok is None or tok[0] != "word" or tok[1] not in _COMPARE:
            return lambda o: bool(left(o))
        op = self.take()[1]
        right = self.operand()
        return lambda o: _compare(op, left(o), right(o))


def compile_filter(expr: str | None) -> Predicate:
    """Compile an OData ``$filter`` expression into a predicate over wire-format resource dicts.

    Raises
    ------
    ApiError
        400 ``InvalidQueryParameterValue`` when the expression is outside the supported subset.
    """
    if not expr or not expr.strip():
        return lambda o: True
    return _Parser(expr).parse()


def apply_select(resource: dict[str, Any], select: str | None) -> dict[str, Any]:
    """Keep only the top-level properties named in a ``$select`` list (``odata.*`` keys are kept)."""
    if not select:
        return resource
    wanted = {s.strip().split("/")[0] for s in select.split(",") if s.strip()}
    return {k: v for k, v in resource.items() if k in wanted or k.startswith("odata.")}
