"""The status panel built without a kernel: its trait values and its text forms."""

from __future__ import annotations

import io

from batchmagic.backends.base import Phase
from batchmagic.monitor import PhaseSpan, RunState
from batchmagic.widget import StatusPanel, TextPanel, make_panel, summary


def state(phase: Phase, *, error: str = "", detail: str = "") -> RunState:
    spans = (
        PhaseSpan(Phase.PACKAGING, 100.0, 100.5),
        PhaseSpan(Phase.UPLOADING, 100.5, 101.0),
        PhaseSpan(Phase.RUNNING, 101.0, None if not phase.final else 104.0),
    ) + ((PhaseSpan(phase, 104.0, 104.0),) if phase.final else ())
    return RunState(
        run_id="r-1",
        name="train-1",
        backend="azure",
        vm_size="Standard_E32_v3",
        phase=phase,
        phases=spans,
        started=100.0,
        detail=detail,
        error=error,
        now=103.0,
    )


def test_summary_is_one_line():
    assert summary(state(Phase.RUNNING)) == "train-1 [azure, Standard_E32_v3] running 3.0s"
    done = summary(state(Phase.FAILED, error="quota reached"))
    assert done == "train-1 [azure, Standard_E32_v3] failed 4.0s: quota reached" and "\n" not in done


def test_widget_shows_run_backend_vm_phase_times_and_cancel():
    cancelled = []
    panel = StatusPanel(on_cancel=lambda: cancelled.append(True))
    panel.update(state(Phase.RUNNING, detail="allocating nodes (1 of 2 ready)"))
    title = panel.title.value
    for text in ("train-1", "azure", "Standard_E32_v3", "running", "3.0s"):
        assert text in title
    assert "packaging 0.5s" in panel.phases.value and "uploading 0.5s" in panel.phases.value
    assert "running 2.0s" in panel.phases.value  # time in the current phase
    assert "1 of 2 ready" in panel.detail.value
    assert repr(panel.widget) == "train-1 [azure, Standard_E32_v3] running 3.0s (allocating nodes (1 of 2 ready))"
    panel.cancel_button.click()
    assert cancelled == [True] and panel.cancel_button.disabled


def test_widget_final_state_hides_cancel_and_shows_error():
    panel = StatusPanel()
    panel.update(state(Phase.FAILED, error="AccountCoreQuotaReached: 32 cores requested, quota 10"))
    assert "failed" in panel.title.value and "quota 10" in panel.detail.value
    assert panel.cancel_button.layout.display == "none"
    assert panel.widget._repr_mimebundle_()["text/plain"].startswith("train-1 [azure")


def test_text_panel_prints_one_line_per_change():
    out = io.StringIO()
    panel = TextPanel(out)
    panel.update(state(Phase.RUNNING))
    panel.update(state(Phase.RUNNING))
    panel.update(state(Phase.DONE))
    lines = out.getvalue().splitlines()
    assert lines == [
        "[azbatch] train-1 [azure, Standard_E32_v3] running 3.0s",
        "[azbatch] train-1 [azure, Standard_E32_v3] done 4.0s",
    ]


def test_auto_panel_without_kernel_is_text_and_none_is_silent(capsys):
    assert isinstance(make_panel("auto"), TextPanel)
    assert isinstance(make_panel("text"), TextPanel)
    quiet = make_panel("none")
    quiet.update(state(Phase.DONE))
    assert capsys.readouterr() == ("", "")
