"""What the panel and the record show, as plain text and HTML: pure functions of a
:class:`~batchmagic.run.state.RunState` (and the ledger's table of runs), no widget, no kernel.

The live panel (:mod:`batchmagic.notebook.widget`), the static record (:mod:`batchmagic.notebook.record`),
``%azbatch_status`` and ``batchmagic ls`` draw with these.
"""

from __future__ import annotations

import html

from batchmagic.run.ledger import LedgerRun
from batchmagic.run.state import Phase, RunState

__all__ = [
    "AMBER",
    "BLUE",
    "BROWN",
    "GREEN",
    "GREY",
    "RED",
    "GRID_BUTTONS",
    "GRID_LIMIT",
    "TASK_COLOURS",
    "cost_html",
    "counts_html",
    "format_seconds",
    "gpu_html",
    "gpu_lines",
    "grid_html",
    "outcome",
    "ranks_html",
    "ranks_text",
    "status_lines",
    "summary",
    "sweep_html",
]

GREEN, RED, AMBER, BROWN, BLUE, GREY = "#2e7d32", "#c62828", "#e65100", "#6d4c41", "#1565c0", "#555"

_COLOURS = {Phase.DONE: GREEN, Phase.FAILED: RED, Phase.CANCELLED: BROWN, Phase.RUNNING: BLUE}

#: A distributed run's rank "stopped" (ended because another failed) is grey: the one that failed stands out.
TASK_COLOURS = {
    "pending": "#cfd8dc",
    "running": "#42a5f5",
    "succeeded": "#66bb6a",
    "failed": "#ef5350",
    "stopped": "#90a4ae",
}

GRID_LIMIT = 2000  # tasks drawn in a grid; a bigger sweep shows its counts and the first ones

GRID_BUTTONS = 400  # up to this many tasks, the live grid's squares are buttons: a click shows that task


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def outcome(state: RunState) -> tuple[str, str]:
    """The phase as words and its colour, telling the truth about a sweep's failures: a sweep that ended
    with failed tasks is amber (some failed) or red (all failed), and says how many."""
    label, colour = state.phase.value, _COLOURS.get(state.phase, GREY)
    failed = state.task_counts.get("failed", 0) if state.is_sweep else 0
    if failed and state.phase == Phase.DONE:
        colour = RED if failed == len(state.task_ids) else AMBER
        label = f"done, {failed} of {len(state.task_ids)} failed"
    return label, colour


def summary(state: RunState) -> str:
    """The one-line form: ``run-x [local, Standard_D2s_v3] running 3.2s``."""
    where = state.backend + (f", {state.vm_size}" if state.vm_size else "") + (f", {state.gpu}" if state.gpu else "")
    line = f"{state.name} [{where}] {state.phase.value} {format_seconds(state.elapsed)}"
    if state.is_sweep:
        line += f" {state.finished_tasks}/{len(state.task_ids)} tasks"
        if state.task_counts.get("failed"):
            line += f", {state.task_counts['failed']} failed"
    if state.detail and not state.finished:
        line += f" ({state.detail})"
    if state.cost is not None:
        line += f" [{state.cost.describe()}]"
    if state.error:
        line += f": {state.error}"
    return line


def cost_html(state: RunState) -> str:
    """The panel's cost line: cost per hour of what the run holds and the spend so far (empty on local)."""
    if state.cost is None:
        return ""
    colour = "#c62828" if state.cost.per_hour is None else "#555"
    return f"<span style='color:{colour}'>{html.escape(state.cost.describe())}</span>"


#: GPUs the panel draws a line for (an 8-GPU node shows all of its; a sweep's many tasks, the first few).
GPUS_SHOWN = 8


def gpu_lines(state: RunState) -> list[str]:
    """One line per GPU: its sparkline of utilisation, now, memory used of total, peak and mean utilisation."""
    many_tasks = len({g.task_id for g in state.gpus}) > 1
    lines = [(f"{g.task_id} " if many_tasks else "") + g.describe() for g in state.gpus[:GPUS_SHOWN]]
    if len(state.gpus) > GPUS_SHOWN:
        lines.append(f"... and {len(state.gpus) - GPUS_SHOWN} more GPUs")
    return lines


def gpu_html(state: RunState) -> str:
    """The panel's GPU lines, in a monospace font so the sparklines line up (empty without samples)."""
    lines = gpu_lines(state)
    if not lines:
        return ""
    body = "<br>".join(html.escape(line) for line in lines)
    return f"<div class='azbatch-gpus' style='font-family:monospace;color:#555'>{body}</div>"


def counts_html(state: RunState) -> str:
    """Counts per state, throughput and ETA, on one line."""
    counts = " · ".join(
        f"<span style='color:{TASK_COLOURS[k]}'>&#9632;</span> {k} {state.task_counts.get(k, 0)}"
        for k in ("pending", "running", "succeeded", "failed")
    )
    rate = state.throughput
    pace = f" · {rate:.1f} tasks/min" if rate else ""
    eta = state.eta
    pace += f" · ETA {format_seconds(eta)}" if eta and not state.finished else ""
    return f"<div>{len(state.task_ids)} tasks: {counts}{pace}</div>"


def grid_html(state: RunState) -> str:
    """A compact grid, one coloured square per task (its id and state in the tooltip)."""
    cells = "".join(
        f"<span title='{html.escape(tid)}: {st}' style='display:inline-block;width:9px;height:9px;margin:1px;"
        f"background:{TASK_COLOURS.get(st, '#999')}'></span>"
        for tid, st in list(zip(state.task_ids, state.task_states, strict=False))[:GRID_LIMIT]
    )
    more = f" <span style='color:#777'>(first {GRID_LIMIT})</span>" if len(state.task_ids) > GRID_LIMIT else ""
    return f"<div style='line-height:9px'>{cells}{more}</div>"


def ranks_html(state: RunState) -> str:
    """A distributed run's ranks: one row each, with its state, its node and the last line it printed."""
    rows = "".join(
        f"<tr><td>{html.escape(row.task_id.replace('-', ' '))}</td>"
        f"<td style='color:{TASK_COLOURS.get(row.state, GREY)}'>{html.escape(row.state)}</td>"
        f"<td style='color:#555'>{html.escape(row.node)}</td>"
        f"<td><code>{html.escape(row.last_line[-120:])}</code></td></tr>"
        for row in state.ranks[:GRID_LIMIT]
    )
    more = f"<div style='color:#777'>(first {GRID_LIMIT} ranks)</div>" if len(state.ranks) > GRID_LIMIT else ""
    return f"<table class='azbatch-ranks' style='font-size:12px'>{rows}</table>{more}"


def ranks_text(state: RunState) -> list[str]:
    """The ranks' rows as text lines."""
    return [
        f"{row.task_id.replace('-', ' ')}: {row.state}"
        + (f" on {row.node}" if row.node else "")
        + (f": {row.last_line}" if row.last_line else "")
        for row in state.ranks[:GRID_LIMIT]
    ]


def sweep_html(state: RunState) -> str:
    """Counts per state, throughput and ETA, and a compact grid with one coloured cell per task."""
    return counts_html(state) + grid_html(state)


def status_lines(rows: list[tuple[LedgerRun, RunState | None, str]]) -> list[str]:
    """``%azbatch_status`` and ``batchmagic ls``: a line per run of the ledger."""
    lines = []
    for entry, state, who in rows:
        if state is not None:
            phase, elapsed, vm = state.phase.value, format_seconds(state.elapsed), state.vm_size
        else:
            phase = entry.phase or ("released" if entry.released else "unknown")
            elapsed, vm = "-", entry.submitted.vm_size
        name, backend = entry.name[:40], entry.backend
        cost = f"  {state.cost.describe()}" if state is not None and state.cost is not None else ""
        lines.append(
            f"{name:<40} {backend:<6} {vm or '-':<18} {phase:<16} {elapsed:>8}  {who:<12} {entry.run_id}{cost}"
        )
    return lines
