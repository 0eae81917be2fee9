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

from batchmagic.backends.base import Phase
from batchmagic.monitor import RunState

__all__ = ["Panel", "TextPanel", "make_panel", "summary", "format_seconds"]

PANEL_MODES = ("auto", "widget", "text", "none")
_COLOURS = {
    Phase.DONE: "#2e7d32",
    Phase.FAILED: "#c62828",
    Phase.CANCELLED: "#6d4c41",
    Phase.RUNNING: "#1565c0",
}


class Panel(Protocol):
    def update(self, state: RunState) -> None: ...


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
    if state.detail and not state.finished:
        line += f" ({state.detail})"
    if state.error:
        line += f": {state.error}"
    return line


class TextPanel:
    """Prints a short line each time the phase changes (where widgets can't render)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._last: tuple[Phase, str] | None = None

    def update(self, state: RunState) -> None:
        key = (state.phase, state.detail)
        if key == self._last:
            return
        self._last = key
        stream = self._stream or sys.stderr
        stream.write(f"[azbatch] {summary(state)}\n")
        stream.flush()


class _NoPanel:
    def update(self, state: RunState) -> None:
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


def make_panel(mode: str, *, on_cancel: Callable[[], None] | None = None) -> Panel:
    """Build the panel ``mode`` asks for (auto, widget, text, none) and display it."""
    if mode == "none":
        return _NoPanel()
    if mode == "text" or (mode == "auto" and not _widgets_can_render()):
        return TextPanel()
    try:
        panel = StatusPanel(on_cancel=on_cancel)
    except ImportError:
        return TextPanel()
    from IPython.display import display

    panel.handle = display(panel.widget, display_id=True)
    return panel


class StatusPanel:
    """An ipywidgets view: run, backend, VM size, phase, time in each phase, elapsed, Cancel.

    Built without a kernel it still holds its trait values, which is how the tests read it.
    """

    def __init__(self, *, on_cancel: Callable[[], None] | None = None) -> None:
        import ipywidgets as w

        self._on_cancel = on_cancel
        self.title = w.HTML(value="<b>azbatch</b> preparing")
        self.phases = w.HTML(value="")
        self.detail = w.HTML(value="")
        self.cancel_button = w.Button(description="Cancel", button_style="warning", icon="stop")
        self.cancel_button.on_click(self._clicked)
        self.widget = _SummaryBox(
            children=[w.HBox([self.title, self.cancel_button]), self.phases, self.detail],
            layout=w.Layout(border="1px solid #ddd", padding="4px 8px", width="auto"),
        )
        self.state: RunState | None = None
        self.handle: Any = None  # the display handle, refreshed at the end so saved notebooks get the summary

    def _clicked(self, _button: Any) -> None:
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling"
        if self._on_cancel is not None:
            self._on_cancel()

    def update(self, state: RunState) -> None:
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
            if state.finished:
                self.cancel_button.disabled = True
                self.cancel_button.layout.display = "none"
        if state.finished and self.handle is not None:
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
