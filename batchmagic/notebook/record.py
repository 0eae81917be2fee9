"""A run's static record: what stays in the notebook once the run has ended.

The live panel is a widget, and widgets need a kernel and saved widget state, which JupyterLab does not
keep by default: a reopened notebook, nbconvert's HTML and a notebook viewer would show nothing of the run.
So when a run ends, the magic replaces the panel, in the same display (by its display id), with a
:class:`Record`: plain HTML with a plain-text fallback, no script, no widget. It holds the run's summary,
its phases and their timings, the lines a ``--no-wait`` run printed (a blocking run's lines are already
the cell's own output), and for a sweep the counts, the grid of tasks, the failed tasks' errors and the
results table.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchmagic.notebook.view import (
    GPUS_SHOWN,
    cost_html,
    counts_html,
    format_seconds,
    grid_html,
    outcome,
    ranks_html,
    ranks_text,
    summary,
)
from batchmagic.run.state import RunState

if TYPE_CHECKING:
    from batchmagic.run.run import Run

__all__ = ["Record", "record_of", "render"]

LOG_LIMIT = 50_000  # characters of a --no-wait run's output kept in its record (its end, if longer)
TABLE_ROWS = 60  # rows of a sweep's results table shown in the record
ERRORS_SHOWN = 20  # failed tasks whose error the record shows


@dataclass(frozen=True)
class Record:
    """The record as IPython displays it: ``text/html`` and ``text/plain``."""

    html: str
    text: str

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return {"text/html": self.html, "text/plain": self.text}

    def __repr__(self) -> str:
        return self.text


def _clip(text: str, limit: int = LOG_LIMIT) -> str:
    return text if len(text) <= limit else f"[... {len(text) - limit:,} characters before this ...]\n{text[-limit:]}"


def _failed_tasks(errors: Mapping[str, str]) -> tuple[str, list[str]]:
    """A sweep's failed tasks, the first few: as HTML, and as text lines."""
    shown = list(errors.items())[:ERRORS_SHOWN]
    more = f"<div>... and {len(errors) - len(shown)} more</div>" if len(errors) > len(shown) else ""
    items = "".join(
        f"<div><b>{html.escape(tid)}</b>: <span style='color:#c62828'>{html.escape(err)}</span></div>"
        for tid, err in shown
    )
    html_part = f"<details open><summary>failed tasks ({len(errors)})</summary>{items}{more}</details>"
    return html_part, [f"{tid}: {err}" for tid, err in shown]


def render(
    state: RunState,
    *,
    run_id: str = "",
    log: str = "",
    results: Any = None,
    errors: Mapping[str, str] | None = None,
    table_open: bool = True,
) -> Record:
    """The record of a run in ``state`` (final, usually).

    ``log`` is what a background run printed; ``results`` a sweep's DataFrame; ``errors`` its failed
    tasks' error lines, by task id; ``table_open`` shows the results table unfolded (a blocking sweep
    also returns the table as the cell's value, so its record folds it).
    """
    label, colour = outcome(state)
    where = state.backend + (f", {state.vm_size}" if state.vm_size else "")
    timings = [(span.phase.value, span.duration(state.now)) for span in state.phases if not span.phase.final]
    text = [summary(state)]
    if timings:
        text.append("phases: " + ", ".join(f"{name} {format_seconds(secs)}" for name, secs in timings))
    parts = [
        "<div class='azbatch-record' style='border:1px solid #ddd;padding:4px 8px;font-size:13px'>",
        f"<div><b>{html.escape(state.name)}</b> <span style='color:#777'>{html.escape(where)}</span> "
        f"<b class='azbatch-phase' style='color:{colour}'>{html.escape(label)}</b> "
        f"<span style='color:#777'>{format_seconds(state.elapsed)}"
        + (f" · run {html.escape(run_id)}" if run_id and run_id != state.name else "")
        + "</span></div>",
    ]
    if timings:
        parts.append(
            "<div style='color:#555'>"
            + " → ".join(f"{html.escape(name)} {format_seconds(secs)}" for name, secs in timings)
            + "</div>"
        )
    message = state.error or state.detail
    if message:
        parts.append(f"<div style='color:{colour}'>{html.escape(message)}</div>")
    if state.cost is not None:  # what it cost, estimated (Azure); the text form has it in the summary
        parts.append(f"<div>{cost_html(state)}</div>")
    if state.ranks:  # a distributed run: what each rank did, where
        parts.append(ranks_html(state))
        text.extend(ranks_text(state))
    if state.gpus:  # the GPUs' peak memory and mean utilisation: a starved GPU is seen after the kernel is gone
        gpus = [g.summary() for g in state.gpus[:GPUS_SHOWN]]
        many = len({g.task_id for g in state.gpus}) > 1
        gpus = [f"{g.task_id} {line}" if many else line for g, line in zip(state.gpus, gpus, strict=False)]
        parts.append("<div class='azbatch-gpus' style='color:#555'>" + "<br>".join(map(html.escape, gpus)) + "</div>")
        text.extend(gpus)
    if state.is_sweep:
        parts.append(counts_html(state) + grid_html(state))
        counts = ", ".join(f"{k} {state.task_counts.get(k, 0)}" for k in ("succeeded", "failed", "running", "pending"))
        text.append(f"{len(state.task_ids)} tasks: {counts}")
    if errors:
        part, lines = _failed_tasks(errors)
        parts.append(part)
        text.extend(lines)
    if results is not None and len(results):
        table = results.to_html(max_rows=TABLE_ROWS, border=0)
        parts.append(
            f"<details{' open' if table_open else ''}><summary>results ({len(results)} rows)</summary>{table}</details>"
        )
        if table_open:
            text.append(results.to_string(max_rows=TABLE_ROWS))
    if log:
        clipped = _clip(log)
        parts.append(
            "<details open><summary>output</summary><pre class='azbatch-log' style='max-height:300px;"
            f"overflow:auto;margin:0'>{html.escape(clipped)}</pre></details>"
        )
        text.append(clipped.rstrip("\n"))
    parts.append("</div>")
    return Record("".join(parts), "\n".join(text))


def record_of(run: Run, *, background: bool) -> Record:
    """The record of ``run``, as it stands: a background run's keeps what it printed; a sweep's, its table."""
    state = run.state()
    log = ""
    if background and not run.is_sweep:
        try:
            log = run.logs()
        except Exception:  # a log that can't be read costs the record its lines, not the record
            log = ""
    errors = {tid: str(err) for tid, err in run.errors.items()}
    if run.is_sweep and run.results is not None and "error" in run.results:
        failed = run.results[run.results["error"] != ""]["error"]
        errors = {str(tid): str(err) for tid, err in failed.items()}
    return render(
        state,
        run_id=run.id,
        log=log,
        results=run.results if run.is_sweep else None,
        errors=errors,
        table_open=background,
    )
