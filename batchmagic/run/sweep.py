"""Parameter sweeps: the grid of parameters (one task each) and the table of their results.

A sweep runs the same cell once per parameter set, each task with its parameters bound as
variables. :func:`parse_grid` reads ``--sweep name=v1,v2`` tokens (the grid is their product),
:func:`rows_from` a list of dicts or a DataFrame (``--sweep-from VAR``); :func:`results_table`
turns the tasks' outcomes into the DataFrame ``Run.results``.
"""

from __future__ import annotations

import ast
import itertools
import keyword
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchmagic.errors import ConfigError

__all__ = ["parse_grid", "rows_from", "check_size", "task_ids_for", "TaskOutcome", "results_table", "max_tasks"]

SCALARS = (bool, int, float, str, type(None))


def max_tasks() -> int:
    """The most tasks a sweep may have: ``BATCHMAGIC_MAX_TASKS``, default 10,000."""
    from batchmagic.config import Settings

    return Settings.from_env().max_tasks


def _literal(text: str) -> Any:
    """A Python literal where the text parses as one (``0.1``, ``True``, ``'a'``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_grid(tokens: Sequence[str]) -> list[dict[str, Any]]:
    """``["lr=0.1,0.01", "depth=3,5"]`` -> the product grid, one dict per task.

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
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise ConfigError(f"--sweep {name}= has no values: give at least one, like {name}=1,2")
        axes[name] = [_literal(v) for v in items]
    names = list(axes)
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


def check_size(grid: list[dict[str, Any]]) -> None:
    if not grid:
        raise ConfigError("the sweep is empty: give at least one parameter set")
    limit = max_tasks()
    if len(grid) > limit:
        raise ConfigError(
            f"the sweep has {len(grid):,} tasks, over the limit of {limit:,}: narrow it, or raise BATCHMAGIC_MAX_TASKS"
        )


def task_ids_for(count: int) -> list[str]:
    """Deterministic ids, so a retried submission finds its tasks instead of adding them twice."""
    width = max(5, len(str(count - 1)))
    return [f"task-{i:0{width}d}" for i in range(count)]


@dataclass
class TaskOutcome:
    """What one task of a sweep produced."""

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


def results_table(outcomes: list[TaskOutcome]) -> Any:
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
