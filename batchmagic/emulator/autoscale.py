"""A standalone evaluator of the Batch autoscale formula language (the subset Azure's docs use).

A formula is statements separated by ``;`` (the last may omit it), with ``//`` and ``/* */``
comments. A statement assigns an expression to a variable (``$TargetDedicatedNodes = ...``,
``$mine = ...`` or ``mine = ...``) or is a bare expression (``stop()``).

Supported, as the documentation describes them:

- Service variables: read-write ``$TargetDedicatedNodes`` (alias ``$TargetDedicated``),
  ``$TargetLowPriorityNodes`` (``$TargetLowPriority``), ``$NodeDeallocationOption`` (``requeue``,
  ``terminate``, ``taskcompletion``, ``retaineddata``); read-only doubles ``$CurrentDedicatedNodes``
  (``$CurrentDedicated``), ``$CurrentLowPriorityNodes``; sampled metrics ``$PendingTasks``,
  ``$ActiveTasks``, ``$RunningTasks``, ``$SucceededTasks``, ``$FailedTasks``, ``$CPUPercent``,
  ``$SampleNodeCount``, ``$PreemptedNodeCount`` and the resource metrics (``$MemoryBytes``...,
  always 0 here) with ``GetSample(count)``, ``GetSample(interval|timestamp[, percent])``,
  ``GetSample(start, end[, percent])``, ``GetSamplePercent(start[, end])``, ``GetSamplePeriod()``,
  ``Count()``, ``HistoryBeginTime()``.
- Types double, doubleVec, string, timestamp (``.year .month .day .weekday .hour .minute .second``;
  weekday 0 is Sunday) and timeinterval (``TimeInterval_Zero``, ``_100ns``, ``_Microsecond``,
  ``_Millisecond``, ``_Second``, ``_Minute``, ``_Hour``, ``_Day``, ``_Week``, ``_Year``), with the
  documented operations: ``+ - * /`` (element-wise on vectors), comparisons, ``&& || !``, unary ``-``
  and ``cond ? a : b`` (nonzero is true).
- Functions over doubleVecLists (any mix of doubles and vectors): ``avg len max min sum norm range
  std var median``, ``percentile(v, p)``, ``val(v, i)``, ``lg ln log abs ceil floor round``,
  ``rand()``, ``stop()``, ``time([string])`` (W3C-DTF or RFC 1123).

A metric gets a sample every 30 s of the emulator's clock (:class:`MetricHistory`); samples are
available to formulas at once (the service's are about a minute late). Targets are truncated to
whole nodes and floored at 0. Errors come back as the service reports them in
``autoScaleRun.error``: ``InsufficientSampleData`` when a ``GetSample`` percentage is not met,
``FormulaEvaluationFailed`` for anything else that fails at run time (an undefined variable, a
type mismatch), each with a ``Message`` value that names the line and column. A formula that does
not parse raises :class:`FormulaSyntaxError` (the service's 400 ``AutoScalingFormulaSyntaxError``).

Examples
--------
In [1]: f = compile_formula("$TargetDedicatedNodes = max(0, min($PendingTasks.GetSample(1), 4));")

In [2]: h = MetricHistory(); h.record(now, {"PendingTasks": 7})

In [3]: run = evaluate(f, now=now, history=h, pool=PoolFigures())

In [4]: run.results
Out[4]: '$TargetDedicatedNodes=4;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue'
"""

from __future__ import annotations

import math
import random
import re
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = [
    "FormulaSyntaxError",
    "Formula",
    "compile_formula",
    "evaluate",
    "MetricHistory",
    "PoolFigures",
    "AutoScaleOutcome",
    "SAMPLE_PERIOD",
    "METRICS",
    "DEALLOCATION_OPTIONS",
    "MAX_FORMULA_LENGTH",
    "MAX_STATEMENTS",
]

#: Seconds between two metric samples, as on the service.
SAMPLE_PERIOD = 30.0
#: The service's limits on a formula: 8 KB and 100 statements.
MAX_FORMULA_LENGTH = 8192
MAX_STATEMENTS = 100
#: The sampled metrics a formula can read (without their ``$``).
METRICS = (
    "PendingTasks", "ActiveTasks", "RunningTasks", "SucceededTasks", "FailedTasks", "CPUPercent",
    "SampleNodeCount", "PreemptedNodeCount", "WallClockSeconds", "MemoryBytes", "DiskBytes", "DiskReadBytes",
    "DiskWriteBytes", "DiskReadOps", "DiskWriteOps", "NetworkInBytes", "NetworkOutBytes",
)  # fmt: skip
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")

_ALIASES = {
    "$TargetDedicated": "$TargetDedicatedNodes",
    "$TargetLowPriority": "$TargetLowPriorityNodes",
    "$CurrentDedicated": "$CurrentDedicatedNodes",
    "$CurrentLowPriority": "$CurrentLowPriorityNodes",
}
_READ_WRITE = ("$TargetDedicatedNodes", "$TargetLowPriorityNodes", "$NodeDeallocationOption")
_READ_ONLY = ("$CurrentDedicatedNodes", "$CurrentLowPriorityNodes")
_INTERVALS = {
    "TimeInterval_Zero": 0.0,
    "TimeInterval_100ns": 1e-7,
    "TimeInterval_Microsecond": 1e-6,
    "TimeInterval_Millisecond": 1e-3,
    "TimeInterval_Second": 1.0,
    "TimeInterval_Minute": 60.0,
    "TimeInterval_Hour": 3600.0,
    "TimeInterval_Day": 86400.0,
    "TimeInterval_Week": 7 * 86400.0,
    "TimeInterval_Year": 365 * 86400.0,
}


# ---------------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Vec:
    """A doubleVec."""

    items: tuple[float, ...]


@dataclass(frozen=True)
class Timestamp:
    """A timestamp (epoch seconds, UTC)."""

    t: float


@dataclass(frozen=True)
class Interval:
    """A timeinterval (seconds)."""

    s: float


@dataclass(frozen=True)
class Metric:
    """A sampled service variable such as ``$PendingTasks`` (an object with methods, not a value)."""

    name: str


Value = float | Vec | Timestamp | Interval | str | Metric


def _fmt_double(v: float) -> str:
    if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return format(v, ".15g")


def _fmt(value: Value) -> str:
    """A value as the service writes it in ``autoScaleRun.results``."""
    if isinstance(value, float):
        return _fmt_double(value)
    if isinstance(value, Vec):
        return "[" + ",".join(_fmt_double(x) for x in value.items) + "]"
    if isinstance(value, Timestamp):
        return datetime.fromtimestamp(value.t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, Interval):
        # .NET TimeSpan text: [-][d.]hh:mm:ss[.fffffff], in whole 100 ns ticks.
        ticks = round(abs(value.s) * 1e7)
        seconds, fraction = divmod(ticks, 10_000_000)
        days, seconds = divmod(seconds, 86400)
        hours, seconds = divmod(seconds, 3600)
        minutes, seconds = divmod(seconds, 60)
        text = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
        if fraction:
            text += f".{fraction:07d}"
        if days:
            text = f"{days}.{text}"
        return ("-" if value.s < 0 else "") + text
    if isinstance(value, Metric):
        return "$" + value.name
    return value


def _type_name(value: Value) -> str:
    return {
        float: "double",
        Vec: "doubleVec",
        Timestamp: "timestamp",
        Interval: "timeinterval",
        str: "string",
        Metric: "metric",
    }[type(value)]


# ---------------------------------------------------------------------------------------------- errors
class FormulaSyntaxError(Exception):
    """A formula that does not parse (the service answers 400 ``AutoScalingFormulaSyntaxError``).

    Attributes
    ----------
    line, col : int
        Where, 1-based.
    detail : str
        ``"Line L, Col C: ..."``, the text the service puts in the error's ``Message`` value.
    """

    code = "AutoScalingFormulaSyntaxError"

    def __init__(self, line: int, col: int, what: str) -> None:
        self.line, self.col = line, col
        self.detail = f"Line {line}, Col {col}: {what}"
        super().__init__(self.detail)


class _EvalError(Exception):
    def __init__(self, code: str, message: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.message, self.detail = code, message, detail


class _Stop(Exception):
    pass


# ---------------------------------------------------------------------------------------------- lexer
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<str>"[^"\n]*")
  | (?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:(),.=;])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    line: int
    col: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    line, line_start = 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FormulaSyntaxError(line, pos - line_start + 1, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group(), line, pos - line_start + 1))
        chunk = m.group()
        if "\n" in chunk:
            line += chunk.count("\n")
            line_start = pos + chunk.rindex("\n") + 1
        pos = m.end()
    out.append(_Tok("end", "", line, pos - line_start + 1))
    return out


# ---------------------------------------------------------------------------------------------- AST
@dataclass
class _Env:
    now: float
    history: MetricHistory
    vars: dict[str, Value]
    assigned: list[str]


class _Node:
    line = 0
    col = 0

    def at(self, tok: _Tok) -> _Node:
        self.line, self.col = tok.line, tok.col
        return self

    def fail(self, what: str) -> _EvalError:
        return _EvalError(
            "FormulaEvaluationFailed",
            "Autoscale formula evaluation failed",
            f"Line {self.line}, Col {self.col}: {what}",
        )

    def eval(self, env: _Env) -> Value:
        raise NotImplementedError


class _Const(_Node):
    def __init__(self, value: Value) -> None:
        self.value = value

    def eval(self, env: _Env) -> Value:
        return self.value


class _Var(_Node):
    def __init__(self, name: str) -> None:
        self.name = _ALIASES.get(name, name)

    def eval(self, env: _Env) -> Value:
        if self.name in env.vars:
            return env.vars[self.name]
        if self.name.startswith("$") and self.name[1:] in METRICS:
            return Metric(self.name[1:])
        if self.name in _INTERVALS:
            return Interval(_INTERVALS[self.name])
        if self.name in DEALLOCATION_OPTIONS:
            return self.name
        raise self.fail(f"Undefined symbol: {self.name}")


class _Unary(_Node):
    def __init__(self, op: str, operand: _Node) -> None:
        self.op, self.operand = op, operand

    def eval(self, env: _Env) -> Value:
        v = self.operand.eval(env)
        if self.op == "-":
            if isinstance(v, float):
                return -v
            if isinstance(v, Interval):
                return Interval(-v.s)
            if isinstance(v, Vec):
                return Vec(tuple(-x for x in v.items))
        elif isinstance(v, float):
            return 0.0 if v else 1.0
        raise self.fail(f"Operator {self.op} is not defined for {_type_name(v)}")


_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "%": lambda a, b: math.fmod(a, b),
}


class _Binary(_Node):
    def __init__(self, op: str, left: _Node, right: _Node) -> None:
        self.op, self.left, self.right = op, left, right

    def eval(self, env: _Env) -> Value:
        op = self.op
        a = self.left.eval(env)
        if op in ("&&", "||"):
            if not isinstance(a, float):
                raise self.fail(f"Operator {op} is not defined for {_type_name(a)}")
            if (op == "&&" and not a) or (op == "||" and a):
                return 1.0 if a else 0.0
            b = self.right.eval(env)
            if not isinstance(b, float):
                raise self.fail(f"Operator {op} is not defined for {_type_name(b)}")
            return 1.0 if b else 0.0
        b = self.right.eval(env)
        try:
            return self._apply(op, a, b)
        except ZeroDivisionError:
            raise self.fail("Division by zero") from None

    def _apply(self, op: str, a: Value, b: Value) -> Value:
        if op in _CMP:
            for kind in (float, str, Timestamp, Interval):
                if isinstance(a, kind) and isinstance(b, kind):
                    ka = a.t if isinstance(a, Timestamp) else a.s if isinstance(a, Interval) else a
                    kb = b.t if isinstance(b, Timestamp) else b.s if isinstance(b, Interval) else b
                    return 1.0 if _CMP[op](ka, kb) else 0.0
        else:
            fn = _ARITH[op]
            if isinstance(a, float) and isinstance(b, float):
                return fn(a, b)
            if isinstance(a, Vec) and isinstance(b, float):
                return Vec(tuple(fn(x, b) for x in a.items))
            if isinstance(a, float) and isinstance(b, Vec):
                return Vec(tuple(fn(a, x) for x in b.items))
            if isinstance(a, Vec) and isinstance(b, Vec):
                if len(a.items) != len(b.items):
                    raise self.fail("Vectors of different lengths")
                return Vec(tuple(fn(x, y) for x, y in zip(a.items, b.items, strict=True)))
            if op == "*" and isinstance(a, float) and isinstance(b, Interval):
                return Interval(a * b.s)
            if op in "*/" and isinstance(a, Interval) and isinstance(b, float):
                return Interval(fn(a.s, b))
            if op in "+-" and isinstance(a, Interval) and isinstance(b, Interval):
                return Interval(fn(a.s, b.s))
            if op == "+" and isinstance(a, Interval) and isinstance(b, Timestamp):
                return Timestamp(a.s + b.t)
            if op in "+-" and isinstance(a, Timestamp) and isinstance(b, Interval):
                return Timestamp(fn(a.t, b.s))
            if op == "-" and isinstance(a, Timestamp) and isinstance(b, Timestamp):
                return Interval(a.t - b.t)
        raise self.fail(f"Operator {op} is not defined for {_type_name(a)} and {_type_name(b)}")


class _Ternary(_Node):
    def __init__(self, cond: _Node, yes: _Node, no: _Node) -> None:
        self.cond, self.yes, self.no = cond, yes, no

    def eval(self, env: _Env) -> Value:
        c = self.cond.eval(env)
        if not isinstance(c, float):
            raise self.fail(f"A condition must be a double, not {_type_name(c)}")
        return self.yes.eval(env) if c else self.no.eval(env)


class _Member(_Node):
    def __init__(self, target: _Node, name: str) -> None:
        self.target, self.name = target, name

    def eval(self, env: _Env) -> Value:
        v = self.target.eval(env)
        if not isinstance(v, Timestamp):
            raise self.fail(f"{_type_name(v)} has no member {self.name}")
        d = datetime.fromtimestamp(v.t, UTC)
        members = {
            "year": d.year,
            "month": d.month,
            "day": d.day,
            "weekday": d.isoweekday() % 7,
            "hour": d.hour,
            "minute": d.minute,
            "second": d.second,
        }
        if self.name not in members:
            raise self.fail(f"timestamp has no member {self.name}")
        return float(members[self.name])


_METHODS = ("GetSample", "GetSamplePercent", "GetSamplePeriod", "Count", "HistoryBeginTime")


class _Method(_Node):
    def __init__(self, target: _Node, name: str, args: list[_Node]) -> None:
        self.target, self.name, self.args = target, name, args

    def eval(self, env: _Env) -> Value:
        metric = self.target.eval(env)
        if not isinstance(metric, Metric):
            raise self.fail(f"{_type_name(metric)} has no method {self.name}")
        args = [a.eval(env) for a in self.args]
        history = env.history
        samples = history.samples(metric.name)
        if self.name == "Count":
            return float(len(samples))
        if self.name == "GetSamplePeriod":
            return Interval(history.period)
        if self.name == "HistoryBeginTime":
            if not samples:
                raise self._insufficient(metric, 100.0, 0.0)
            return Timestamp(samples[0][0])
        if self.name == "GetSamplePercent":
            if len(args) not in (1, 2):
                raise self.fail("GetSamplePercent takes a start and an optional end")
            start, end = self._window(env, args[0], args[1] if len(args) == 2 else None)
            return history.percent(metric.name, start, end)
        # GetSample
        if len(args) == 1 and isinstance(args[0], float):
            n = int(args[0])
            if n < 1:
                raise self.fail("GetSample needs a count of at least 1")
            if not samples:
                raise self._insufficient(metric, 100.0, 0.0)
            return Vec(tuple(v for _, v in samples[-n:]))
        if not 1 <= len(args) <= 3:
            raise self.fail("GetSample takes (count), (start[, percent]) or (start, end[, percent])")
        percent: float | None = None
        end_arg: Value | None = None
        rest = args[1:]
        if rest and isinstance(rest[-1], float):
            percent = rest[-1]
            rest = rest[:-1]
        if rest:
            end_arg = rest[0]
        if len(rest) > 1:
            raise self.fail("GetSample takes at most three arguments")
        start, end = self._window(env, args[0], end_arg)
        got = history.percent(metric.name, start, end)
        if percent is not None and got < percent:
            raise self._insufficient(metric, percent, got)
        return Vec(tuple(v for t, v in samples if start <= t <= end))

    def _window(self, env: _Env, first: Value, second: Value | None) -> tuple[float, float]:
        """(oldest, newest) epoch times of a look-back window given as intervals ago or timestamps."""

        def when(v: Value) -> float:
            if isinstance(v, Interval):
                return env.now - v.s
            if isinstance(v, Timestamp):
                return v.t
            raise self.fail(f"A sample window is given by timeintervals or timestamps, not {_type_name(v)}")

        a = when(first)
        b = env.now if second is None else when(second)
        return (min(a, b), max(a, b))

    def _insufficient(self, metric: Metric, wanted: float, got: float) -> _EvalError:
        return _EvalError(
            "InsufficientSampleData",
            "Autoscale evaluation failed due to insufficient sample data",
            f"Line {self.line}, Col {self.col}: Insufficient data from data set: ${metric.name} "
            f"wanted {_fmt_double(wanted)}%, received {_fmt_double(math.floor(got))}%",
        )


def _flatten(node: _Node, args: list[Value]) -> list[float]:
    out: list[float] = []
    for v in args:
        if isinstance(v, float):
            out.append(v)
        elif isinstance(v, Vec):
            out.extend(v.items)
        else:
            raise node.fail(f"Expected a double or a doubleVec, not {_type_name(v)}")
    return out


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = max(0.0, min(100.0, p)) / 100 * (len(ordered) - 1)
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


_LIST_FUNCS: dict[str, Callable[[list[float]], float]] = {
    "avg": lambda xs: sum(xs) / len(xs),
    "len": lambda xs: float(len(xs)),
    "max": max,
    "min": min,
    "sum": lambda xs: float(sum(xs)),
    "norm": lambda xs: math.sqrt(sum(x * x for x in xs)),
    "range": lambda xs: max(xs) - min(xs),
    "std": lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0,
    "var": lambda xs: statistics.variance(xs) if len(xs) > 1 else 0.0,
    "median": lambda xs: float(statistics.median(xs)),
}
_SCALAR_FUNCS: dict[str, Callable[[float], float]] = {
    "lg": math.log2,
    "ln": math.log,
    "log": math.log10,
    "abs": abs,
    "ceil": lambda x: float(math.ceil(x)),
    "floor": lambda x: float(math.floor(x)),
    "round": lambda x: float(math.floor(x + 0.5)),
}
_FUNCTIONS = set(_LIST_FUNCS) | set(_SCALAR_FUNCS) | {"percentile", "val", "rand", "stop", "time"}


class _Call(_Node):
    def __init__(self, name: str, args: list[_Node]) -> None:
        self.name, self.args = name, args

    def eval(self, env: _Env) -> Value:
        name = self.name
        if name == "stop":
            raise _Stop()
        if name == "rand":
            return random.random()
        args = [a.eval(env) for a in self.args]
        if name == "time":
            if not args:
                return Timestamp(env.now)
            if len(args) != 1 or not isinstance(args[0], str):
                raise self.fail("time takes one string")
            return Timestamp(self._parse_time(args[0]))
        if name in _SCALAR_FUNCS:
            fn = _SCALAR_FUNCS[name]
            if len(args) == 1 and isinstance(args[0], float):
                return self._math(fn, args[0])
            return Vec(tuple(self._math(fn, x) for x in _flatten(self, args)))
        if name in ("percentile", "val"):
            if len(args) != 2 or not isinstance(args[1], float):
                raise self.fail(f"{name} takes a doubleVec and a double")
            values = _flatten(self, [args[0]])
            if not values:
                raise self.fail(f"{name} of an empty vector")
            if name == "percentile":
                return _percentile(values, args[1])
            i = int(args[1])
            if not 0 <= i < len(values):
                raise self.fail(f"Index {i} is out of range")
            return values[i]
        values = _flatten(self, args)
        if not values and name != "len":
            raise self.fail(f"{name} of an empty list")
        return float(_LIST_FUNCS[name](values))

    def _math(self, fn: Callable[[float], float], x: float) -> float:
        try:
            return float(fn(x))
        except ValueError:
            raise self.fail(f"{self.name}({_fmt_double(x)}) is not defined") from None

    def _parse_time(self, text: str) -> float:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        except ValueError:
            pass
        try:
            return parsedate_to_datetime(text).timestamp()
        except (TypeError, ValueError):
            raise self.fail(f"Cannot parse the time {text!r} (W3C-DTF or RFC 1123)") from None


@dataclass
class _Statement:
    target: str | None
    expr: _Node
    line: int
    col: int


# ---------------------------------------------------------------------------------------------- parser
class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self, offset: int = 0) -> _Tok:
        return self.toks[min(self.i + offset, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i = min(self.i + 1, len(self.toks) - 1)
        return tok

    def expect(self, text: str) -> _Tok:
        tok = self.take()
        if tok.text != text or tok.kind not in ("op",):
            raise FormulaSyntaxError(tok.line, tok.col, f"expected '{text}' but found {self._show(tok)}")
        return tok

    @staticmethod
    def _show(tok: _Tok) -> str:
        return "the end of the formula" if tok.kind == "end" else f"'{tok.text}'"

    def statements(self) -> list[_Statement]:
        out: list[_Statement] = []
        while self.peek().kind != "end":
            if self.peek().text == ";":
                self.take()
                continue
            tok = self.peek()
            target: str | None = None
            if tok.kind == "name" and self.peek(1).text == "=":
                self.take()
                self.take()
                target = _ALIASES.get(tok.text, tok.text)
                if target in _READ_ONLY or (target.startswith("$") and target[1:] in METRICS):
                    raise FormulaSyntaxError(tok.line, tok.col, f"{tok.text} is read-only")
                if target in _INTERVALS or target in _FUNCTIONS:
                    raise FormulaSyntaxError(tok.line, tok.col, f"{tok.text} is a reserved name")
            expr = self.ternary()
            out.append(_Statement(target, expr, tok.line, tok.col))
            nxt = self.peek()
            if nxt.kind != "end":
                if nxt.text != ";":
                    raise FormulaSyntaxError(nxt.line, nxt.col, f"expected ';' but found {self._show(nxt)}")
                self.take()
        if len(out) > MAX_STATEMENTS:
            raise FormulaSyntaxError(1, 1, f"a formula holds at most {MAX_STATEMENTS} statements")
        return out

    def ternary(self) -> _Node:
        cond = self.binary(0)
        tok = self.peek()
        if tok.text == "?" and tok.kind == "op":
            self.take()
            yes = self.ternary()
            self.expect(":")
            no = self.ternary()
            return _Ternary(cond, yes, no).at(tok)
        return cond

    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("||",),
        ("&&",),
        ("==", "!="),
        ("<", "<=", ">", ">="),
        ("+", "-"),
        ("*", "/", "%"),
    )

    def binary(self, level: int) -> _Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek().kind == "op" and self.peek().text in self._LEVELS[level]:
            tok = self.take()
            right = self.binary(level + 1)
            left = _Binary(tok.text, left, right).at(tok)
        return left

    def unary(self) -> _Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("-", "!", "+"):
            self.take()
            operand = self.unary()
            return operand if tok.text == "+" else _Unary(tok.text, operand).at(tok)
        return self.postfix(self.primary())

    def postfix(self, node: _Node) -> _Node:
        while self.peek().text == "." and self.peek().kind == "op":
            dot = self.take()
            name = self.take()
            if name.kind != "name":
                raise FormulaSyntaxError(name.line, name.col, f"expected a name after '.' but found {self._show(name)}")
            if self.peek().text == "(":
                if name.text not in _METHODS:
                    raise FormulaSyntaxError(name.line, name.col, f"unknown method {name.text}")
                node = _Method(node, name.text, self.arguments()).at(dot)
            else:
                node = _Member(node, name.text).at(name)
        return node

    def arguments(self) -> list[_Node]:
        self.expect("(")
        args: list[_Node] = []
        if self.peek().text != ")":
            args.append(self.ternary())
            while self.peek().text == ",":
                self.take()
                args.append(self.ternary())
        self.expect(")")
        return args

    def primary(self) -> _Node:
        tok = self.take()
        if tok.kind == "num":
            return _Const(float(tok.text)).at(tok)
        if tok.kind == "str":
            return _Const(tok.text[1:-1]).at(tok)
        if tok.kind == "name":
            if self.peek().text == "(" and self.peek().kind == "op":
                if tok.text not in _FUNCTIONS:
                    raise FormulaSyntaxError(tok.line, tok.col, f"unknown function {tok.text}")
                return _Call(tok.text, self.arguments()).at(tok)
            return _Var(tok.text).at(tok)
        if tok.text == "(":
            node = self.ternary()
            self.expect(")")
            return node
        raise FormulaSyntaxError(tok.line, tok.col, f"unexpected {self._show(tok)}")


# ---------------------------------------------------------------------------------------------- API
@dataclass(frozen=True)
class Formula:
    """A parsed formula; evaluate it with :func:`evaluate`."""

    text: str
    statements: tuple[_Statement, ...]


def compile_formula(text: str) -> Formula:
    """Parse ``text``; raise :class:`FormulaSyntaxError` when it is not a valid formula.

    Raises
    ------
    FormulaSyntaxError
        On a syntax error, an unknown function or method, an assignment to a read-only variable, or a
        formula longer than 8 KB or of more than 100 statements.
    """
    if len(text.encode()) > MAX_FORMULA_LENGTH:
        raise FormulaSyntaxError(1, 1, f"a formula is at most {MAX_FORMULA_LENGTH} bytes")
    statements = _Parser(text).statements()
    if not statements:
        raise FormulaSyntaxError(1, 1, "the formula is empty")
    return Formula(text, tuple(statements))


class MetricHistory:
    """The metric samples of one pool, one every :data:`SAMPLE_PERIOD` seconds of the emulator's clock.

    Parameters
    ----------
    period : float
        Seconds between samples.
    keep : float
        How much history to keep, in seconds (default: a day).
    """

    def __init__(self, period: float = SAMPLE_PERIOD, keep: float = 86400.0) -> None:
        self.period = period
        self._keep = max(1, int(keep / period))
        self._samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=self._keep)

    def due(self, now: float) -> bool:
        """Whether a sample should be taken at ``now`` (none yet, or a period since the last one)."""
        return not self._samples or now - self._samples[-1][0] >= self.period

    def record(self, now: float, values: dict[str, float]) -> None:
        """Add a sample of the metrics in ``values`` (metric name without ``$``); others are 0."""
        self._samples.append((now, {name: float(values.get(name, 0.0)) for name in METRICS}))

    def samples(self, metric: str) -> list[tuple[float, float]]:
        """``(time, value)`` of every kept sample of ``metric``, oldest first."""
        return [(t, values[metric]) for t, values in self._samples]

    def percent(self, metric: str, start: float, end: float) -> float:
        """Percentage of the samples expected in ``[start, end]`` that are available (at most 100)."""
        expected = math.floor((end - start) / self.period)
        if expected <= 0:
            return 100.0
        have = sum(1 for t, _ in self._samples if start <= t <= end)
        return min(100.0, 100.0 * have / expected)

    def to_list(self) -> list[list[Any]]:
        """A JSON-ready copy, for ``--state``."""
        return [[t, values] for t, values in self._samples]

    @classmethod
    def from_list(cls, items: Iterable[list[Any]], period: float = SAMPLE_PERIOD) -> MetricHistory:
        """The inverse of :meth:`to_list`."""
        history = cls(period)
        for t, values in items:
            history.record(float(t), {k: float(v) for k, v in dict(values).items()})
        return history


@dataclass(frozen=True)
class PoolFigures:
    """What a formula reads from its pool besides the metrics: targets and current node counts."""

    target_dedicated: int = 0
    target_low_priority: int = 0
    current_dedicated: int = 0
    current_low_priority: int = 0


@dataclass
class AutoScaleOutcome:
    """The result of one evaluation: the service's ``AutoScaleRun`` plus the targets to apply."""

    timestamp: float
    results: str
    target_dedicated: int
    target_low_priority: int
    deallocation: str
    error: dict[str, Any] | None = None
    variables: dict[str, str] = field(default_factory=dict)

    def to_wire(self, iso: Callable[[float], str]) -> dict[str, Any]:
        """The ``autoScaleRun`` JSON object; ``iso`` formats the timestamp as the emulator does elsewhere."""
        out: dict[str, Any] = {"timestamp": iso(self.timestamp), "results": self.results}
        if self.error is not None:
            out["error"] = self.error
        return out


def evaluate(formula: Formula, *, now: float, history: MetricHistory, pool: PoolFigures) -> AutoScaleOutcome:
    """Evaluate ``formula`` at emulated time ``now`` against a pool's metric ``history`` and figures.

    Never raises for a run-time failure: the outcome's ``error`` holds it as the service reports it
    (``code``, ``message``, ``values``), and its targets are the pool's current ones.
    """
    env = _Env(
        now=now,
        history=history,
        vars={
            "$TargetDedicatedNodes": float(pool.target_dedicated),
            "$TargetLowPriorityNodes": float(pool.target_low_priority),
            "$NodeDeallocationOption": "requeue",
            "$CurrentDedicatedNodes": float(pool.current_dedicated),
            "$CurrentLowPriorityNodes": float(pool.current_low_priority),
        },
        assigned=[],
    )
    error: dict[str, Any] | None = None
    try:
        for st in formula.statements:
            value = st.expr.eval(env)
            if st.target is None:
                continue
            if isinstance(value, Metric):
                raise st.expr.fail(f"${value.name} is a sampled metric: read it with GetSample")
            if st.target in ("$TargetDedicatedNodes", "$TargetLowPriorityNodes") and not isinstance(value, float):
                raise st.expr.fail(f"{st.target} must be a double, not {_type_name(value)}")
            if st.target == "$NodeDeallocationOption" and value not in DEALLOCATION_OPTIONS:
                raise st.expr.fail(
                    f"$NodeDeallocationOption must be one of {', '.join(DEALLOCATION_OPTIONS)}, not {_fmt(value)}"
                )
            env.vars[st.target] = value
            if st.target not in env.assigned:
                env.assigned.append(st.target)
    except _Stop:
        pass
    except _EvalError as err:
        error = {"code": err.code, "message": err.message, "values": [{"name": "Message", "value": err.detail}]}

    def target(name: str, current: int) -> int:
        value = env.vars[name]
        if error is not None or not isinstance(value, float) or not math.isfinite(value):
            return current
        return max(0, int(value))

    dedicated = target("$TargetDedicatedNodes", pool.target_dedicated)
    low = target("$TargetLowPriorityNodes", pool.target_low_priority)
    option = str(env.vars["$NodeDeallocationOption"])
    shown = {
        "$TargetDedicatedNodes": str(dedicated),
        "$TargetLowPriorityNodes": str(low),
        "$NodeDeallocationOption": option,
    }
    user = {name: _fmt(env.vars[name]) for name in sorted(env.assigned, key=str.lower) if name not in _READ_WRITE}
    results = ";".join(f"{k}={v}" for k, v in {**shown, **user}.items())
    return AutoScaleOutcome(
        timestamp=now,
        results=results,
        target_dedicated=dedicated,
        target_low_priority=low,
        deallocation=option,
        error=error,
        variables={**shown, **user},
    )
