"""Parameter sweeps: the grid of parameters (one task each) and the table of their results.

A sweep runs the same cell once per parameter set, each task with its parameters bound as
variables. :func:`parse_grid` reads ``--sweep name=v1,v2`` tokens (the grid is their product),
:func:`rows_from` a list of dicts or a DataFrame (``--sweep-from VAR``); :func:`results_table`
turns the tasks' outcomes into the DataFrame ``Run.results``.
"""

from __future__ import annotations

import ast
import io
import itertools
import keyword
import math
import re
import tokenize
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchmagic.errors import ConfigError
from batchmagic.settings import DEFAULT_MAX_TASKS

__all__ = [
    "parse_grid",
    "parse_values",
    "rows_from",
    "task_ids_for",
    "SweepRow",
    "results_table",
]

SCALARS = (bool, int, float, str, type(None))


#: What a sweep value may be, for the error that refuses one.
ACCEPTED = (
    "Python literals separated by commas (k=1,2,3  k=0.1,0.5  k='a b','c'), a range (k=range(21), "
    "k=range(0,20,5)) or bare words (k=rf,svm)"
)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")  # a bare word is a string: k=rf,svm, k=my-model
_RANGE_LOOKALIKE = re.compile(r"-?\d+\s*(\.\.\.?|:|-|to)\s*-?\d+")  # 0..20, 0:20, 1-5: not ranges here


def parse_values(name: str, text: str, *, limit: int = DEFAULT_MAX_TASKS) -> list[Any]:
    """The values of ``--sweep name=text``, read as Python reads them, never evaluated.

    ``text`` is a comma-separated list of Python literals (numbers, quoted strings, ``True``,
    tuples...), ``range(...)`` calls with whole-number arguments (expanded), and bare words (kept as
    strings). The shell quoting around the flag is already gone (the magic line is split with
    :mod:`shlex`), so ``k=1,2``, ``'k=1,2'`` and ``k="1,2"`` are the same two values.

    ``limit`` is the most values a ``range`` may give (``Settings.max_tasks``).

    Raises
    ------
    ConfigError
        A value that is none of these (``0..20``, ``a+b``): one line naming the accepted forms.
    """
    tree: ast.expr | None = None
    if not _has_comment(text):  # a comment would silently drop the rest
        try:
            tree = ast.parse(f"[{text}\n]", mode="eval").body
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            tree = None
    if isinstance(tree, ast.List):
        values: list[Any] = []
        for node in tree.elts:
            values.extend(_node_values(name, node, ast.get_source_segment(f"[{text}\n]", node) or "", limit))
        return values
    # Not Python as a whole (0..20, 1e, a word with a quote): each comma-separated piece on its own.
    values = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        values.append(_piece(name, piece))
    return values


def _piece(name: str, piece: str) -> Any:
    """One comma-separated piece: a literal that is the whole piece (no comment after it), or a word."""
    try:
        node = ast.parse(piece, mode="eval").body
        if ast.get_source_segment(piece, node) == piece:
            return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    return _word(name, piece)


def _has_comment(text: str) -> bool:
    try:
        return any(t.type == tokenize.COMMENT for t in tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):
        return False  # not Python: ast.parse refuses it too


def _node_values(name: str, node: ast.expr, source: str, limit: int) -> list[Any]:
    try:
        return [ast.literal_eval(node)]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        return _range(name, node, source, limit)
    if isinstance(node, ast.Name):
        return [node.id]
    return [_word(name, source.strip())]


def _range(name: str, node: ast.Call, source: str, limit: int) -> list[Any]:
    args: list[Any] = []
    for arg in node.args:
        try:
            args.append(ast.literal_eval(arg))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            args.append(None)
    if node.keywords or not 1 <= len(args) <= 3 or not all(type(a) is int for a in args):
        raise ConfigError(f"--sweep {name}={source}: range takes 1 to 3 whole numbers, like {name}=range(0,20,5)")
    steps = range(*args)
    if len(steps) > limit:
        raise ConfigError(f"--sweep {name}={source} has {len(steps):,} values, over the limit of {limit:,}")
    return list(steps)


def _word(name: str, text: str) -> str:
    if _WORD.fullmatch(text) and not keyword.iskeyword(text):
        return text
    hint = " (a range is written range(start, stop))" if _RANGE_LOOKALIKE.fullmatch(text) else ""
    raise ConfigError(f"--sweep {name}: {text!r} is not a value{hint}; give {ACCEPTED}")


def parse_grid(tokens: Sequence[str], *, limit: int = DEFAULT_MAX_TASKS) -> list[dict[str, Any]]:
    """``["lr=0.1,0.01", "depth=range(3,6)"]`` -> the product grid, one dict per task (values: see
    :func:`parse_values`); ``limit`` is the most tasks it may have (``Settings.max_tasks``).

    Raises
    ------
    ConfigError
        A token that is not ``name=v1,v2,...`` with a valid identifier and at least one value,
        or a name given twice.
    """
    axes: dict[str, list[Any]] = {}
    for token in tokens:
        name, sep, values = token.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or keyword.iskeyword(name):
            raise ConfigError(f"--sweep {token!r} is not name=v1,v2,... (name: a Python identifier)")
        if name in axes:
            raise ConfigError(f"--sweep names {name!r} twice: give all its values in one flag")
        items = parse_values(name, values, limit=limit)
        if not items:
            raise ConfigError(f"--sweep {name}= has no values: give at least one, like {name}=1,2")
        axes[name] = items
    names = list(axes)
    size = math.prod(len(values) for values in axes.values())
    if size > limit:  # before the grid is built: range(10000) x range(10000) is not a list to make
        raise ConfigError(
            f"the sweep has {size:,} tasks, over the limit of {limit:,}: narrow it, or raise BATCHMAGIC_MAX_TASKS"
        )
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def rows_from(name: str, value: Any) -> list[dict[str, Any]]:
    """The parameter sets of ``--sweep-from NAME``: a list of dicts, or a DataFrame's rows."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(value, pd.DataFrame):
        rows = value.to_dict("records")
    elif isinstance(value, list | tuple) and all(isinstance(r, Mapping) for r in value):
        rows = [dict(r) for r in value]
    else:
        raise ConfigError(
            f"--sweep-from {name}: {name} is a {type(value).__name__}, not a list of dicts or a DataFrame"
        )
    for row in rows:
        bad = [str(k) for k in row if not str(k).isidentifier() or keyword.iskeyword(str(k))]
        if bad:
            raise ConfigError(f"--sweep-from {name}: column {bad[0]!r} is not a Python identifier")
    return [{str(k): v for k, v in row.items()} for row in rows]


def task_ids_for(count: int) -> list[str]:
    """Deterministic ids, so a retried submission finds its tasks instead of adding them twice."""
    width = max(5, len(str(count - 1)))
    return [f"task-{i:0{width}d}" for i in range(count)]


@dataclass
class SweepRow:
    """What one task of a sweep produced: a row of the results table."""

    task_id: str
    params: dict[str, Any]
    state: str = "pending"
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    node: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    error_type: str = ""
    error_message: str = ""

    @property
    def duration(self) -> float | None:
        return None if self.started is None or self.ended is None else self.ended - self.started


def results_table(outcomes: list[SweepRow]) -> Any:
    """One row per task: parameters, state, exit code, duration, node, scalar outputs, error, start, end.

    Columns keep their types where a failed task leaves a gap: whole numbers stay whole (pandas' nullable
    ``Int64``), booleans stay booleans (``boolean``). Durations are in seconds to a tenth, start and end
    times to the second (UTC).
    """
    import pandas as pd

    rows = []
    outputs: dict[str, None] = {}  # the output columns, in order of first appearance
    for outcome in outcomes:
        row: dict[str, Any] = {"task_id": outcome.task_id, **outcome.params}
        duration = outcome.duration
        row.update(
            state=outcome.state,
            exit_code=outcome.exit_code,
            duration=round(duration, 1) if duration is not None else None,
            node=outcome.node,
        )
        for key, value in outcome.outputs.items():
            if isinstance(value, SCALARS) and key not in row:
                row[key] = value
                outputs.setdefault(key)
        row["error"] = f"{outcome.error_type}: {outcome.error_message}" if outcome.error_type else ""
        row["started"] = pd.Timestamp(outcome.started, unit="s").floor("s") if outcome.started else pd.NaT
        row["ended"] = pd.Timestamp(outcome.ended, unit="s").floor("s") if outcome.ended else pd.NaT
        rows.append(row)
    table = pd.DataFrame(rows).set_index("task_id")
    for column in ["exit_code", *outputs]:
        kind = _nullable_kind([row[column] for row in rows if row.get(column) is not None])
        if kind and table[column].isna().any():
            table[column] = table[column].astype(kind)
    return table


def _nullable_kind(values: list[Any]) -> str:
    """pandas' nullable dtype that keeps these values' type across gaps: ``Int64``, ``boolean``, or none."""
    if values and all(isinstance(v, bool) for v in values):
        return "boolean"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "Int64"
    return ""
