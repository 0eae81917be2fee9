"""A run's static record, the typed results table, Cancel while a cell blocks, local sweep concurrency and
tracebacks on the notebook's own line numbers: through the real shell and the local backend."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from batchmagic import RemoteError
from batchmagic.api import Session
from batchmagic.errors import RunCancelled
from batchmagic.notebook.record import Record, record_of, render
from batchmagic.run.state import Phase, RunState
from batchmagic.run.sweep import SweepRow, results_table
from tests.support.emulator import wait_for
from tests.test_widget import state, sweep_state


def test_record_of_a_finished_run_is_html_and_text_with_phases_and_timings() -> None:
    record = render(state(Phase.DONE), run_id="r-1")
    bundle = record._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"}
    assert bundle["text/plain"].splitlines() == [
        "train-1 [azure, Standard_E32_v3] done 4.0s",
        "phases: packaging 0.5s, uploading 0.5s, running 3.0s",
    ]
    page = bundle["text/html"]
    assert "train-1" in page and ">done<" in page and "packaging 0.5s → uploading 0.5s → running 3.0s" in page
    assert "<script" not in page and "widget" not in page  # nothing that needs a kernel or widget state


def test_record_escapes_and_clips_a_background_runs_lines() -> None:
    log = "".join(f"line {i} <b>\n" for i in range(20_000))
    record = render(state(Phase.FAILED, error="ValueError: <bad>"), log=log)
    assert "&lt;bad&gt;" in record.html and "<bad>" not in record.html
    assert "line 19999 &lt;b&gt;" in record.html and "line 0 &lt;b&gt;" not in record.html  # its end, clipped
    assert "characters before this" in record.text and record.text.endswith("line 19999 <b>")


def test_sweep_record_has_counts_grid_failures_and_results() -> None:
    base = sweep_state(("succeeded", "failed", "succeeded"))
    final = RunState(**{**base.__dict__, "phase": Phase.DONE})
    table = pd.DataFrame({"lr": [0.1, 0.2, 0.3], "score": [1, None, 3]}, index=["a", "b", "c"])
    record = render(final, results=table, errors={"task-00001": "ValueError: lr too big"}, table_open=False)
    assert "done, 1 of 3 failed" in record.html and "#e65100" in record.html  # amber, with the count
    assert record.html.count("display:inline-block") == 3 and "task-00001: failed" in record.html
    assert "ValueError: lr too big" in record.html and "<details><summary>results (3 rows)" in record.html
    assert "3 tasks: succeeded 2, failed 1" in record.text and "task-00001: ValueError: lr too big" in record.text


def test_results_table_keeps_types_and_shows_times_to_the_second() -> None:
    ok = SweepRow("t0", {"a": 1}, "succeeded", 0, 100.123, 102.987, "n", {"y": 10, "flag": True, "f": 0.5})
    bad = SweepRow("t1", {"a": 2}, "failed", None, 100.5, None, "n", {}, "ValueError", "bad")
    table = results_table([ok, bad])
    assert str(table["y"].dtype) == "Int64" and table.loc["t0", "y"] == 10 and pd.isna(table.loc["t1", "y"])
    assert str(table["flag"].dtype) == "boolean" and str(table["exit_code"].dtype) == "Int64"
    assert table["f"].dtype == float and table.loc["t0", "duration"] == 2.9
    assert table.loc["t0", "started"] == pd.Timestamp(100, unit="s") and pd.isna(table.loc["t1", "ended"])
    assert "10.0" not in table.to_string() and ".123" not in table.to_string()


def test_cancel_from_between_polls_ends_the_run_cancelled(home: Path) -> None:
    """What the panel's Cancel does while a cell blocks: the click is handled inside the wait loop."""
    session = Session()
    run = session.submit("import time\nfor i in range(60):\n    time.sleep(0.5)\nx = 1", {}, backend="local")
    calls: list[float] = []
    started = time.monotonic()

    def pump() -> None:  # as the kernel's message loop would run the button's handler
        calls.append(time.monotonic())
        if time.monotonic() - started > 1.5 and not run.done:
            run.cancel()

    with pytest.raises(RunCancelled):
        run.wait(between_polls=pump)
    assert run.phase == Phase.CANCELLED and run.outputs == {}
    assert time.monotonic() - started < 10 and len(calls) > 10  # called often, not once per poll
    session.teardown()


def test_a_local_sweep_runs_as_many_tasks_at_once_as_cores(shell: Any) -> None:
    """As many as cores, one more while the warm worker forks them (the next one's hand-off overlaps)."""
    cores = os.cpu_count() or 1
    cell = "import time\nt0 = time.time()\ntime.sleep(2.5)\nt1 = time.time()"
    shell.run_cell("%config AzBatch.warm_worker = 'off'")
    shell.run_cell(f"%%azbatch --sweep i={','.join(str(i) for i in range(cores + 2))}\n" + cell)
    assert _most_at_once(shell.user_ns["_azbatch"].outputs) == cores  # not one after the other, nor more
    shell.run_cell("%config AzBatch.warm_worker = 'on'")
    shell.run_cell("%%azbatch\nx = 1")  # starts the worker: the sweep's tasks are forked, all within milliseconds
    worker = shell.user_ns["_azbatch"].backend.warm
    wait_for(lambda: worker.ready, timeout=120)
    shell.run_cell(f"%%azbatch --sweep i={','.join(str(i) for i in range(cores + 2))}\n" + cell)
    assert _most_at_once(shell.user_ns["_azbatch"].outputs) == cores + 1
    shell.run_cell("%%azbatch --sweep i=0,1 --slots-per-node 1\n" + cell)
    assert _most_at_once(shell.user_ns["_azbatch"].outputs) == 1  # --slots-per-node 1: one at a time


def _most_at_once(outputs: list[dict[str, float]]) -> int:
    """The most tasks that were running at one moment (a task runs from its t0 to its t1)."""
    return max(sum(1 for o in outputs if o["t0"] <= moment["t0"] < o["t1"]) for moment in outputs)


def test_remote_traceback_has_the_notebooks_line_numbers(shell: Any) -> None:
    with pytest.raises(RemoteError) as info:
        shell.run_cell("%%azbatch\na = 1\nb = a / 0")
    text = "".join(info.value.traceback)
    assert 'File "<azbatch-cell>", line 3, in <module>' in text and "b = a / 0" in text  # %%azbatch is line 1


def test_magic_shows_the_record_in_the_panels_display(shell: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The widget panel is replaced by the record at the end, in the same display (by its display id)."""
    import batchmagic.notebook.magics as magics
    from batchmagic.notebook.widget import StatusPanel

    shown: list[tuple[str, Any]] = []

    class Handle:
        def update(self, obj: Any) -> None:
            shown.append(("update", obj))

    def make(mode: str, **kwargs: Any) -> StatusPanel:
        panel = StatusPanel(**kwargs)
        panel.handle = Handle()
        return panel

    monkeypatch.setattr(magics, "make_panel", make)
    shell.run_cell("%%azbatch --name rec\nprint('hi')\ny = 2")
    assert len(shown) == 1 and isinstance(shown[0][1], Record)
    assert shown[0][1].text.startswith("rec [local, Standard_D2s_v3] done")
    shell.run_cell("%%azbatch --no-wait --name bg\nprint('from the background')\nz = 3")
    run = shell.user_ns["_azbatch"]
    deadline = time.monotonic() + 20
    while len(shown) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run.done and "from the background" in shown[1][1].text and "from the background" in shown[1][1].html
    assert threading.current_thread() is threading.main_thread()


def test_record_of_a_sweep_run(shell: Any) -> None:
    shell.run_cell("%%azbatch --sweep n=1,2,0\ny = 10 // n")
    run = shell.user_ns["_azbatch"]
    record = record_of(run, background=False)
    assert "done, 1 of 3 failed" in record.html and "1 failed" in record.text and "ZeroDivisionError" in record.html
    assert str(run.results["y"].dtype) == "Int64"
