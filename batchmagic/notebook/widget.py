"""The status panel: a view of :class:`~batchmagic.run.monitor.RunState`, as a widget or as text lines.

:func:`make_panel` picks the form: an ipywidgets panel where widgets can render (a Jupyter
kernel with ipywidgets installed), short text lines otherwise (terminal IPython, scripts), or
nothing. Panels are views only: they never poll, and only ever get states handed to them. When the
run ends, :meth:`StatusPanel.finish` replaces the widget, in the same display, with the run's static
record (:mod:`batchmagic.notebook.record`), which outlives the kernel and its widget state.

What it draws is :mod:`batchmagic.notebook.view`'s (pure functions of the state); the kernel pump that
lets a blocking cell handle the panel's clicks is :mod:`batchmagic.notebook.pump`'s.
"""

from __future__ import annotations

import html
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from batchmagic.errors import BatchMagicError
from batchmagic.notebook.pump import ui_pump, widgets_can_render
from batchmagic.notebook.view import (
    AMBER,
    BROWN,
    GREEN,
    GREY,
    GRID_BUTTONS,
    RED,
    TASK_COLOURS,
    cost_html,
    counts_html,
    format_seconds,
    gpu_html,
    gpu_lines,
    grid_html,
    outcome,
    ranks_html,
    summary,
    sweep_html,
)
from batchmagic.run.monitor import LogTail
from batchmagic.run.state import LogRecord, Phase, RunState

if TYPE_CHECKING:
    from batchmagic.run.run import Run

__all__ = [
    # drawn by batchmagic.notebook.view, kept importable from here
    "AMBER",
    "GREEN",
    "RED",
    "GRID_BUTTONS",
    "TASK_COLOURS",
    "cost_html",
    "counts_html",
    "gpu_lines",
    "grid_html",
    "Panel",
    "StatusPanel",
    "TextPanel",
    "make_panel",
    "summary",
    "format_seconds",
    "outcome",
    "ui_pump",
    "TASK_COLOURS",
    "TaskLogs",
]

PANEL_MODES = ("auto", "widget", "text", "none")


class Panel(Protocol):
    def update(self, state: RunState, records: list[LogRecord] | None = None) -> None: ...

    def finish(self, record: Any) -> None:
        """Replace the live view with ``record`` (the run's static record), in the same display."""

    def discard(self) -> None:
        """The run never started (a missing setting, a value that cannot travel): leave no empty panel."""


class TextPanel:
    """Prints a short line each time the phase changes (where widgets can't render)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._last: tuple[Phase, str, int] | None = None

    def update(self, state: RunState, records: list[LogRecord] | None = None) -> None:
        # A sweep adds a line each time another tenth of its tasks is done.
        tenths = state.finished_tasks * 10 // len(state.task_ids) if state.is_sweep else 0
        key = (state.phase, state.detail, tenths)
        if key == self._last:
            return
        self._last = key
        stream = self._stream or sys.stderr
        stream.write(f"[azbatch] {summary(state)}\n")
        stream.flush()

    def finish(self, record: Any) -> None:
        """The text lines already told the story."""

    def discard(self) -> None:
        """Lines already printed stay: they said how far it got."""


class _NoPanel:
    def update(self, state: RunState, records: list[LogRecord] | None = None) -> None:
        pass

    def finish(self, record: Any) -> None:
        pass

    def discard(self) -> None:
        pass


def make_panel(
    mode: str,
    *,
    on_cancel: Callable[[], None] | None = None,
    on_pick: Callable[[str], str] | None = None,
    background: bool = False,
) -> Panel:
    """Build the panel ``mode`` asks for (auto, widget, text, none) and display it.

    ``on_pick(task_id)`` is called when a sweep's task is picked, and then on each update until that task
    has ended: it returns the task's log (and its traceback once it failed) that arrived since its last
    call. ``background`` panels are updated from a monitor thread, so they only set traits.
    """
    if mode == "none":
        return _NoPanel()
    if mode == "text" or (mode == "auto" and not widgets_can_render()):
        return _QuietPanel() if background else TextPanel()
    try:
        panel = StatusPanel(on_cancel=on_cancel, on_pick=on_pick, background=background)
    except ImportError:
        return _QuietPanel() if background else TextPanel()
    from IPython.display import display

    panel.handle = display(panel.widget, display_id=True)
    return panel


class _QuietPanel:
    """Text mode for a background run: a thread must not print, so say once where to look."""

    def __init__(self) -> None:
        self._said = False

    def update(self, state: RunState, records: list[LogRecord] | None = None) -> None:
        if not self._said:
            self._said = True
            sys.stderr.write(
                f"[azbatch] {state.name} runs in the background: _azbatch.status, _azbatch.wait(), %azbatch_status\n"
            )

    def finish(self, record: Any) -> None:
        pass

    def discard(self) -> None:
        pass


class TaskLogs:
    """A sweep panel's ``on_pick``: what a task printed since the last call, then its traceback once it has
    failed. Only picked tasks are read, so a tick's cost does not grow with the sweep."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._tails: dict[str, LogTail] = {}

    def __call__(self, task_id: str) -> str:
        tail = self._tails.setdefault(task_id, LogTail(self.run.log_key(task_id), task_id))
        text = "".join(r.text for r in tail.read(self.run.store) if r.stream in ("stdout", "stderr"))
        states = dict(zip(self.run.task_ids, self.run.task_states(), strict=False))
        if states.get(task_id) == "failed":
            error = self.run.task_error(task_id)
            text += ("" if not text or text.endswith("\n") else "\n") + error
        return text


class StatusPanel:
    """An ipywidgets view: run, backend, VM size, phase, time in each phase, elapsed, Cancel; for a
    sweep also counts, a grid of tasks, throughput, ETA and a task picker: clicking a square (or picking
    a task) shows that task's state and its log as it arrives, and its traceback if it failed.

    Built without a kernel it still holds its trait values, which is how the tests read it.
    """

    def __init__(
        self,
        *,
        on_cancel: Callable[[], None] | None = None,
        on_pick: Callable[[str], str] | None = None,
        background: bool = False,
    ) -> None:
        import ipywidgets as w

        self._w = w
        self._on_cancel = on_cancel
        self._on_pick = on_pick
        self.background = background
        self.title = w.HTML(value="<b>azbatch</b> preparing")
        self.phases = w.HTML(value="")
        self.detail = w.HTML(value="")
        self.tasks = w.HTML(value="")
        self.grid = w.Box(layout=w.Layout(display="none", flex_flow="row wrap", max_width="720px"))
        self.squares: list[Any] = []  # the grid's buttons, one per task (sweeps of up to GRID_BUTTONS tasks)
        self.cost = w.HTML(value="")  # estimated cost per hour and spend so far (Azure)
        self.gpus = w.HTML(value="")  # a sparkline of each GPU's utilisation, its memory (GPU runs)
        self.picker = w.Dropdown(options=[], description="task log", layout=w.Layout(display="none"))
        self.picker.observe(self._picked, names="value")
        self.task_title = w.HTML(value="", layout=w.Layout(display="none"))
        # Shown once it has something: a blocking single run prints into the cell itself, not here.
        self.log = w.Output(layout=w.Layout(max_height="240px", overflow="auto", display="none"))
        self.cancel_button = w.Button(description="Cancel", button_style="warning", icon="stop")
        self.cancel_button.on_click(self._clicked)
        self.widget = _SummaryBox(
            children=[w.HBox([self.title, self.cancel_button]), self.phases, self.detail, self.cost, self.gpus,
                      self.tasks, self.grid, self.picker, self.task_title, self.log],
            layout=w.Layout(border="1px solid #ddd", padding="4px 8px", width="auto"),
        )  # fmt: skip
        self.widget.add_class("azbatch-panel")
        self.state: RunState | None = None
        self.handle: Any = None  # the display handle: finish() puts the static record in its place
        self.cancelling = False
        self._shown_state = ""  # the picked task's state when its log was last read
        self._texts: dict[str, str] = {}  # what each task picked so far printed (on_pick returns what is new)
        self._ended: set[str] = set()  # tasks read to their end (with their traceback, if they failed)
        self._lock = threading.RLock()  # picks come from the kernel's thread, updates maybe from a monitor's

    # --- events from the browser ---

    def _clicked(self, _button: Any) -> None:
        self.cancelling = True
        with self.widget.hold_sync():
            self.cancel_button.disabled = True
            self.cancel_button.description = "Cancelling"
            if self.state is not None and not self.state.finished:
                self.title.value = self._title(self.state)
        if self._on_cancel is not None:
            try:
                self._on_cancel()
            except BatchMagicError as err:  # not stopped (Batch unreachable): said where the user clicked,
                self._cancel_failed(str(err))  # not in the kernel's log where a click's error goes

    def _cancel_failed(self, line: str) -> None:
        """The run could not be cancelled and goes on: Cancel may be clicked again, and ``line`` says why."""
        self.cancelling = False
        with self.widget.hold_sync():
            self.cancel_button.disabled = False
            self.cancel_button.description = "Cancel"
            if self.state is not None:
                self.title.value = self._title(self.state)
            self.detail.value = f"<span style='color:{RED}'>{html.escape(line)}</span>"

    def pick(self, task_id: str) -> None:
        """Show this task (what a click on its square does)."""
        if self.picker.value == task_id:
            self._show_task(task_id, fresh=True)
        else:
            self.picker.value = task_id  # -> _picked

    def _picked(self, change: Any) -> None:
        task_id = change["new"]
        if task_id:
            self._show_task(task_id, fresh=True)

    def _task_state(self, task_id: str) -> str:
        state = self.state
        if state is not None and state.ranks:
            return next((row.state for row in state.ranks if row.task_id == task_id), "pending")
        if state is None or task_id not in state.task_ids:
            return "pending"
        return state.task_states[state.task_ids.index(task_id)]

    def _show_task(self, task_id: str, *, fresh: bool) -> None:
        """Show the task's state and its log: all of it when ``fresh``, else what arrived since last time."""
        if self._on_pick is None:
            return
        with self._lock:
            task_state = self._task_state(task_id)
            ended = task_state in ("succeeded", "failed", "stopped")
            seen = self._texts.get(task_id, "")
            new = "" if task_id in self._ended else self._on_pick(task_id)
            if ended:
                self._ended.add(task_id)
            self._texts[task_id] = seen + new
            self._shown_state = task_state
            colour = TASK_COLOURS.get(task_state, GREY) if task_state != "pending" else GREY
            self.task_title.value = (
                f"<b>{html.escape(task_id)}</b> <b style='color:{colour}'>{html.escape(task_state)}</b>"
            )
            self.task_title.layout.display = None
            self.log.layout.display = None
            if fresh:
                self.log.outputs = ()
                new = seen + new
            if new:
                self.log.append_stdout(new)

    # --- the view ---

    def _title(self, state: RunState) -> str:
        label, colour = outcome(state)
        if self.cancelling and not state.finished:
            label, colour = "cancelling", BROWN
        where = html.escape(
            state.backend + (f" · {state.vm_size}" if state.vm_size else "") + (f" · {state.gpu}" if state.gpu else "")
        )
        return (
            f"<b>{html.escape(state.name)}</b> <span style='color:#777'>{where}</span> "
            f"<b class='azbatch-phase' style='color:{colour}'>{html.escape(label)}</b> "
            f"<span style='color:#777'>{format_seconds(state.elapsed)}</span>"
        )

    def update(self, state: RunState, records: list[LogRecord] | None = None) -> None:
        with self._lock:
            self._update(state, records or [])

    def _update(self, state: RunState, records: list[LogRecord]) -> None:
        self.state = state
        self.widget.summary = summary(state)
        _, colour = outcome(state)
        phases = " → ".join(
            f"<span style='{'font-weight:bold' if span.end is None else 'color:#555'}'>"
            f"{html.escape(span.phase.value)} {format_seconds(span.duration(state.now))}</span>"
            for span in state.phases
            if not span.phase.final
        )
        detail = html.escape(state.error or state.detail)
        with self.widget.hold_sync():
            self.title.value = self._title(state)
            self.phases.value = phases
            self.detail.value = f"<span style='color:{colour}'>{detail}</span>" if detail else ""
            self.cost.value = cost_html(state)
            self.gpus.value = gpu_html(state)
            if state.is_sweep:
                self._update_sweep(state)
            elif state.ranks:
                self._update_ranks(state)
            if state.finished:
                self.cancel_button.disabled = True
                self.cancel_button.layout.display = "none"
        picked = self.picker.value
        if state.is_sweep or (state.ranks and picked):
            # A sweep streams only the picked task's log: read on, until it has ended and been read whole.
            if picked and (self._task_state(picked) == "running" or self._task_state(picked) != self._shown_state):
                self._show_task(picked, fresh=False)
            return
        if records:
            self.log.layout.display = None
        for record in records:
            # Logs of a background run go to the panel's Output, never printed.
            if record.output is not None:  # a display: its output object, as display data
                data, metadata = record.output.get("data", {}), record.output.get("metadata", {})
                self.log.outputs += ({"output_type": "display_data", "data": data, "metadata": metadata},)
                continue
            (self.log.append_stderr if record.stream == "stderr" else self.log.append_stdout)(record.text)

    def _update_sweep(self, state: RunState) -> None:
        w = self._w
        if len(state.task_ids) <= GRID_BUTTONS:
            self.tasks.value = counts_html(state)
            if not self.squares:
                self.squares = [self._square(tid) for tid in state.task_ids]
                self.grid.children = tuple(self.squares)
                self.grid.layout.display = None
            for square, task_state in zip(self.squares, state.task_states, strict=False):
                colour = TASK_COLOURS.get(task_state, "#999")
                if square.style.button_color != colour:
                    square.style.button_color = colour
                    square.tooltip = f"{square.tooltip.split(':')[0]}: {task_state}"
        else:
            self.tasks.value = sweep_html(state)
        if len(self.picker.options) != len(state.task_ids) + 1:
            self.picker.options = [""] + list(state.task_ids)
            self.picker.layout = w.Layout(display=None)

    def _update_ranks(self, state: RunState) -> None:
        """One row per rank; the picker shows one rank's own log (none picked: the merged log)."""
        self.tasks.value = ranks_html(state)
        if len(self.picker.options) != len(state.ranks) + 1:
            self.picker.options = [""] + [row.task_id for row in state.ranks]
            self.picker.description = "rank log"
            self.picker.layout = self._w.Layout(display=None)

    def _square(self, task_id: str) -> Any:
        w = self._w
        square = w.Button(
            tooltip=f"{task_id}: pending",
            layout=w.Layout(width="14px", height="14px", min_width="0", padding="0", margin="1px"),
        )
        square.style.button_color = TASK_COLOURS["pending"]
        square.add_class("azbatch-square")
        square.on_click(lambda _b: self.pick(task_id))
        return square

    def finish(self, record: Any) -> None:
        """Put the run's static record where the widget was: a saved notebook keeps it, with no kernel and no
        widget state. A background run's record arrives from its monitor thread, by display id."""
        if self.handle is not None:
            self.handle.update(record)

    def discard(self) -> None:
        """Empty the panel's display and close its widget: a run that never started shows only its error."""
        if self.handle is not None:
            self.handle.update({"text/plain": ""}, raw=True)
        self.widget.close()


def _summary_box_class() -> type:
    import ipywidgets as w

    class SummaryBox(w.VBox):  # type: ignore[misc]
        """A VBox whose plain-text form (saved in notebooks, shown in terminals) is one line."""

        summary = ""

        def __repr__(self) -> str:
            return self.summary or "azbatch run"

        def _repr_mimebundle_(self, **kwargs: Any) -> Any:
            bundle = super()._repr_mimebundle_(**kwargs)
            if bundle is not None:
                bundle["text/plain"] = repr(self)
            return bundle

    return SummaryBox


def _SummaryBox(**kwargs: Any) -> Any:  # noqa: N802 - a lazily defined class
    global _SUMMARY_BOX
    if _SUMMARY_BOX is None:
        _SUMMARY_BOX = _summary_box_class()
    return _SUMMARY_BOX(**kwargs)


_SUMMARY_BOX: type | None = None
