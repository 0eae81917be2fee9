"""The status panel: a view of :class:`~batchmagic.monitor.RunState`, as a widget or as text lines.

:func:`make_panel` picks the form: an ipywidgets panel where widgets can render (a Jupyter
kernel with ipywidgets installed), short text lines otherwise (terminal IPython, scripts), or
nothing. Panels are views only: they never poll, and only ever get states handed to them.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from batchmagic.state import LogRecord, Phase, RunState

__all__ = ["Panel", "TextPanel", "make_panel", "summary", "format_seconds"]

PANEL_MODES = ("auto", "widget", "text", "none")
_COLOURS = {
    Phase.DONE: "#2e7d32",
    Phase.FAILED: "#c62828",
    Phase.CANCELLED: "#6d4c41",
    Phase.RUNNING: "#1565c0",
}


class Panel(Protocol):
    def update(self, state: RunState, records: list[LogRecord] | None = None) -> None: ...


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def summary(state: RunState) -> str:
    """The one-line form: ``run-x [local, Standard_D2s_v3] running 3.2s``."""
    where = state.backend + (f", {state.vm_size}" if state.vm_size else "")
    line = f"{state.name} [{where}] {state.phase.value} {format_seconds(state.elapsed)}"
    if state.is_sweep:
        line += f" {state.finished_tasks}/{len(state.task_ids)} tasks"
        if state.task_counts.get("failed"):
            line += f", {state.task_counts['failed']} failed"
    if state.detail and not state.finished:
        line += f" ({state.detail})"
    if state.error:
        line += f": {state.error}"
    return line


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


class _NoPanel:
    def update(self, state: RunState, records: list[LogRecord] | None = None) -> None:
        pass


def _widgets_can_render() -> bool:
    """True in a Jupyter kernel with ipywidgets (tqdm.notebook makes the same check)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def make_panel(
    mode: str,
    *,
    on_cancel: Callable[[], None] | None = None,
    on_pick: Callable[[str], str] | None = None,
    background: bool = False,
) -> Panel:
    """Build the panel ``mode`` asks for (auto, widget, text, none) and display it.

    ``on_pick(task_id)`` is called when a sweep's task is picked and returns its log so far;
    ``background`` panels are updated from a monitor thread, so they only set traits.
    """
    if mode == "none":
        return _NoPanel()
    if mode == "text" or (mode == "auto" and not _widgets_can_render()):
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


_GRID_COLOURS = {"pending": "#cfd8dc", "running": "#42a5f5", "succeeded": "#66bb6a", "failed": "#ef5350"}
_GRID_LIMIT = 2000  # cells drawn; a bigger sweep shows its counts and the first ones


def sweep_html(state: RunState) -> str:
    """Counts per state, throughput and ETA, and a compact grid with one coloured cell per task."""
    counts = " · ".join(
        f"<span style='color:{_GRID_COLOURS.get(k, '#555')}'>&#9632;</span> {k} {state.task_counts.get(k, 0)}"
        for k in ("pending", "running", "succeeded", "failed")
    )
    rate = state.throughput
    pace = f" · {rate:.1f} tasks/min" if rate else ""
    eta = state.eta
    pace += f" · ETA {format_seconds(eta)}" if eta and not state.finished else ""
    cells = "".join(
        f"<span title='{html.escape(tid)}: {st}' style='display:inline-block;width:9px;height:9px;margin:1px;"
        f"background:{_GRID_COLOURS.get(st, '#999')}'></span>"
        for tid, st in list(zip(state.task_ids, state.task_states, strict=False))[:_GRID_LIMIT]
    )
    return f"<div>{len(state.task_ids)} tasks: {counts}{pace}</div><div style='line-height:9px'>{cells}</div>"


class StatusPanel:
    """An ipywidgets view: run, backend, VM size, phase, time in each phase, elapsed, Cancel; for a
    sweep also counts, a grid of tasks, throughput, ETA and a task picker showing that task's log.

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

        self._on_cancel = on_cancel
        self._on_pick = on_pick
        self.background = background
        self.title = w.HTML(value="<b>azbatch</b> preparing")
        self.phases = w.HTML(value="")
        self.detail = w.HTML(value="")
        self.tasks = w.HTML(value="")
        self.picker = w.Dropdown(options=[], description="task log", layout=w.Layout(display="none"))
        self.picker.observe(self._picked, names="value")
        self.log = w.Output(layout=w.Layout(max_height="240px", overflow="auto"))
        self.cancel_button = w.Button(description="Cancel", button_style="warning", icon="stop")
        self.cancel_button.on_click(self._clicked)
        self.widget = _SummaryBox(
            children=[w.HBox([self.title, self.cancel_button]), self.phases, self.detail, self.tasks, self.picker,
                      self.log],
            layout=w.Layout(border="1px solid #ddd", padding="4px 8px", width="auto"),
        )  # fmt: skip
        self.state: RunState | None = None
        self.handle: Any = None  # the display handle, refreshed at the end so saved notebooks get the summary

    def _clicked(self, _button: Any) -> None:
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling"
        if self._on_cancel is not None:
            self._on_cancel()

    def _picked(self, change: Any) -> None:
        task_id = change["new"]
        if not task_id or self._on_pick is None:
            return
        self.log.outputs = ()
        self.log.append_stdout(self._on_pick(task_id))

    def update(self, state: RunState, records: list[LogRecord] | None = None) -> None:
        self.state = state
        self.widget.summary = summary(state)
        colour = _COLOURS.get(state.phase, "#555")
        where = html.escape(state.backend + (f" · {state.vm_size}" if state.vm_size else ""))
        values = {
            "title": (
                f"<b>{html.escape(state.name)}</b> <span style='color:#777'>{where}</span> "
                f"<b style='color:{colour}'>{html.escape(state.phase.value)}</b> "
                f"<span style='color:#777'>{format_seconds(state.elapsed)}</span>"
            ),
            "phases": " → ".join(
                f"<span style='{'font-weight:bold' if span.end is None else 'color:#555'}'>"
                f"{html.escape(span.phase.value)} {format_seconds(span.duration(state.now))}</span>"
                for span in state.phases
                if not span.phase.final
            ),
            "detail": html.escape(state.error or state.detail),
        }
        with self.widget.hold_sync():
            self.title.value = values["title"]
            self.phases.value = values["phases"]
            self.detail.value = f"<span style='color:{colour}'>{values['detail']}</span>" if values["detail"] else ""
            if state.is_sweep:
                self.tasks.value = sweep_html(state)
                if len(self.picker.options) != len(state.task_ids):
                    self.picker.options = [""] + list(state.task_ids)
                    self.picker.layout.display = None
            if state.finished:
                self.cancel_button.disabled = True
                self.cancel_button.layout.display = "none"
        for record in records or []:
            # Logs of a background run (or of the picked task) go to the panel's Output, never printed.
            if record.output is not None:  # a display: its output object, as display data
                data, metadata = record.output.get("data", {}), record.output.get("metadata", {})
                self.log.outputs += ({"output_type": "display_data", "data": data, "metadata": metadata},)
                continue
            (self.log.append_stderr if record.stream == "stderr" else self.log.append_stdout)(record.text)
        if state.finished and self.handle is not None and not self.background:
            self.handle.update(self.widget)


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
