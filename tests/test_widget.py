"""The status panel built without a kernel: its trait values and its text forms."""

from __future__ import annotations

import io

from batchmagic.notebook.widget import (
    AMBER,
    GREEN,
    GRID_BUTTONS,
    RED,
    TASK_COLOURS,
    StatusPanel,
    TextPanel,
    make_panel,
    outcome,
    summary,
)
from batchmagic.run.state import Phase, PhaseSpan, RunState


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
    assert panel.log.layout.display == "none"  # a blocking run's lines are the cell's own output, not the panel's
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


def sweep_state(states: tuple[str, ...], *, now: float = 160.0) -> RunState:
    counts: dict[str, int] = {}
    for value in states:
        counts[value] = counts.get(value, 0) + 1
    return RunState(
        run_id="s-1", name="grid", backend="local", vm_size="", phase=Phase.RUNNING,
        phases=(PhaseSpan(Phase.RUNNING, 100.0),), started=100.0, task_counts=counts,
        task_ids=tuple(f"task-{i:05d}" for i in range(len(states))), task_states=states,
        first_start=100.0, now=now,
    )  # fmt: skip


def test_sweep_panel_counts_grid_throughput_eta_and_picker():
    picked = []
    panel = StatusPanel(on_pick=lambda tid: picked.append(tid) or f"log of {tid}\n")
    states = ("succeeded", "failed", "running", "pending")
    panel.update(sweep_state(states))
    html_text = panel.tasks.value
    assert "4 tasks" in html_text and "succeeded 1" in html_text and "failed 1" in html_text
    assert "2.0 tasks/min" in html_text and "ETA 1m00s" in html_text  # 2 done in 60 s, 2 to go
    # One square per task, coloured by its state, its id and state in the tooltip.
    assert [sq.style.button_color for sq in panel.squares] == [TASK_COLOURS[s] for s in states]
    assert panel.squares[1].tooltip == "task-00001: failed" and panel.grid.layout.display is None
    assert list(panel.picker.options) == ["", "task-00000", "task-00001", "task-00002", "task-00003"]
    panel.picker.value = "task-00001"
    assert picked == ["task-00001"]
    assert panel.log.outputs[0]["text"] == "log of task-00001\n"
    assert "task-00001" in panel.task_title.value and "failed" in panel.task_title.value
    assert repr(panel.widget).endswith("2/4 tasks, 1 failed")


def test_clicking_a_square_follows_that_task_until_it_ends():
    arrived = {"task-00002": ["step 1\n", "step 2\n", "Traceback ...\nValueError: bad\n"]}
    calls = []

    def on_pick(tid):
        calls.append(tid)
        return arrived[tid].pop(0) if arrived.get(tid) else ""

    panel = StatusPanel(on_pick=on_pick)
    panel.update(sweep_state(("succeeded", "running", "running")))
    panel.squares[2].click()
    assert panel.picker.value == "task-00002" and "running" in panel.task_title.value
    panel.update(sweep_state(("succeeded", "running", "running")))  # still running: what is new is read
    assert "".join(o["text"] for o in panel.log.outputs) == "step 1\nstep 2\n"
    panel.update(sweep_state(("succeeded", "running", "failed")))  # ended: read once more, traceback and all
    assert "".join(o["text"] for o in panel.log.outputs).endswith("ValueError: bad\n")
    assert "failed" in panel.task_title.value
    count = len(calls)
    panel.update(sweep_state(("succeeded", "succeeded", "failed")))
    panel.squares[2].click()  # an ended task's log is shown again without being read again
    assert len(calls) == count and panel.log.outputs[0]["text"].startswith("step 1\n")


def test_sweep_with_failures_ends_amber_or_red_with_the_count():
    some = sweep_state(("succeeded", "failed", "succeeded"))
    some = RunState(**{**some.__dict__, "phase": Phase.DONE})
    label, colour = outcome(some)
    assert label == "done, 1 of 3 failed" and colour == AMBER
    panel = StatusPanel()
    panel.update(some)
    assert "done, 1 of 3 failed" in panel.title.value and AMBER in panel.title.value
    every = RunState(**{**some.__dict__, "task_states": ("failed",) * 3, "task_counts": {"failed": 3}})
    assert outcome(every) == ("done, 3 of 3 failed", RED)
    clean = RunState(**{**some.__dict__, "task_states": ("succeeded",) * 3, "task_counts": {"succeeded": 3}})
    assert outcome(clean) == ("done", GREEN)


def test_big_sweep_draws_its_grid_as_html_and_keeps_the_picker():
    panel = StatusPanel()
    panel.update(sweep_state(("pending",) * (GRID_BUTTONS + 1)))
    assert not panel.squares and panel.tasks.value.count("display:inline-block") == GRID_BUTTONS + 1
    assert len(panel.picker.options) == GRID_BUTTONS + 2


def test_cancel_click_says_cancelling_at_once():
    seen = []
    panel = StatusPanel(on_cancel=lambda: seen.append(panel.title.value))
    panel.update(state(Phase.RUNNING))
    panel.cancel_button.click()
    assert panel.cancel_button.description == "Cancelling" and panel.cancel_button.disabled
    assert ">cancelling<" in seen[0]  # shown before the run is asked to stop
    panel.update(state(Phase.CANCELLED))
    assert ">cancelled<" in panel.title.value and panel.cancel_button.layout.display == "none"


def test_a_cancel_that_could_not_stop_the_run_says_so_in_the_panel_and_may_be_clicked_again():
    """Run.cancel raises when Batch is unreachable: an error raised by a click would only reach the kernel's
    log, so the panel shows its line, and the run, which goes on, may be cancelled again."""
    from batchmagic.errors import RunFailed

    def refuse() -> None:
        raise RunFailed("run train-1 is not cancelled: could not reach Azure Batch to read the job: reset")

    panel = StatusPanel(on_cancel=refuse)
    panel.update(state(Phase.RUNNING))
    panel.cancel_button.click()
    assert panel.cancel_button.description == "Cancel" and not panel.cancel_button.disabled
    assert ">running<" in panel.title.value and not panel.cancelling
    assert "is not cancelled: could not reach Azure Batch" in panel.detail.value and RED in panel.detail.value


def test_finish_puts_the_record_in_the_panels_display():
    class Handle:
        def __init__(self):
            self.updates = []

        def update(self, obj):
            self.updates.append(obj)

    panel = StatusPanel()
    panel.handle = Handle()
    panel.update(state(Phase.DONE))
    assert panel.handle.updates == []  # the widget stays while the run is followed
    panel.finish("the record")
    assert panel.handle.updates == ["the record"]


def test_background_panel_appends_logs_to_its_output_and_never_prints(capsys):
    from batchmagic.run.state import LogRecord

    panel = StatusPanel(background=True)
    panel.update(state(Phase.RUNNING), [LogRecord(1.0, "stdout", "hello\n"), LogRecord(2.0, "stderr", "warn\n")])
    assert [(o["name"], o["text"]) for o in panel.log.outputs] == [("stdout", "hello\n"), ("stderr", "warn\n")]
    assert capsys.readouterr() == ("", "")


def test_text_panel_reports_sweeps_by_tenths():
    out = io.StringIO()
    panel = TextPanel(out)
    for done in range(0, 21):
        panel.update(sweep_state(("succeeded",) * done + ("pending",) * (20 - done)))
    assert len(out.getvalue().splitlines()) == 11  # 0/20, 2/20, ..., 20/20


def test_a_distributed_run_has_a_row_per_rank_a_rank_picker_and_keeps_them_in_its_record():
    from dataclasses import replace

    from batchmagic.notebook.record import render
    from batchmagic.run.state import RankRow

    rows = (
        RankRow("rank-0", "running", "tvmps_a (node 0)", "step 12 loss 0.31"),
        RankRow("rank-1", "failed", "tvmps_b (node 1)", "RuntimeError: boom"),
    )
    picked: list[str] = []
    panel = StatusPanel(on_pick=lambda tid: picked.append(tid) or f"{tid} said hello\n")
    panel.update(replace(state(Phase.RUNNING), ranks=rows))
    table = panel.tasks.value
    assert "rank 0" in table and "step 12 loss 0.31" in table and "tvmps_b (node 1)" in table
    assert TASK_COLOURS["failed"] in table
    assert list(panel.picker.options) == ["", "rank-0", "rank-1"] and panel.picker.description == "rank log"
    panel.pick("rank-1")
    assert picked == ["rank-1"] and "rank-1" in panel.task_title.value and "failed" in panel.task_title.value
    done = render(replace(state(Phase.FAILED, error="rank 1 failed"), ranks=rows))
    assert "azbatch-ranks" in done.html and "RuntimeError: boom" in done.html
    assert "rank 1: failed on tvmps_b (node 1): RuntimeError: boom" in done.text
