"""The API on the local backend: live logs, cancel, Ctrl-C, phases, the ledger."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from batchmagic.api import Session
from batchmagic.errors import RunCancelled, RunFailed
from tests.support.emulator import wait_for
from tests.support.escapees import escaping_cell, kill_sleepers, sleepers


@pytest.fixture
def session(home):
    s = Session()
    yield s
    s.teardown()


def test_output_arrives_while_the_cell_runs(session):
    seen = []
    run = session.submit(
        "import sys, time\nprint('first')\nprint('oops', file=sys.stderr)\ntime.sleep(1.5)\nprint('last')",
        {},
        backend="local",
        on_update=lambda state, records: seen.extend((state.phase.value, r.stream, r.text) for r in records),
    )
    run.wait()
    texts = [(stream, text) for _, stream, text in seen if text.strip()]
    assert texts == [("stdout", "first"), ("stderr", "oops"), ("stdout", "last")]
    first_phase = next(phase for phase, _, text in seen if text == "first")
    assert first_phase == "running"  # delivered before the run ended, not at collection


def test_phases_are_recorded_in_order(session):
    run = session.submit("x = 1", {}, backend="local")
    run.wait()
    phases = [span.phase.value for span in run.state().phases]
    assert phases[:3] == ["packaging", "uploading", "queued"]
    assert phases[-2:] == ["collecting", "done"]
    assert all(span.end is not None for span in run.state().phases)


def test_cancel_stops_the_process(session):
    run = session.submit("import time\ntime.sleep(60)", {}, backend="local")
    time.sleep(0.3)
    run.cancel()
    assert run.status == "cancelled"
    with pytest.raises(RunCancelled):
        run.wait()
    process = session.backend("local")._runs[run.id].tasks["task-0"].process
    assert process.poll() is not None


def test_ctrl_c_while_waiting_cancels(session):
    run = session.submit("import time\ntime.sleep(60)", {}, backend="local")
    timer = threading.Timer(0.5, lambda: signal.raise_signal(signal.SIGINT))
    timer.start()
    with pytest.raises(RunCancelled, match="Ctrl-C"):
        run.wait()
    assert run.status == "cancelled"


def test_killed_process_is_one_line(session):
    run = session.submit("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", {}, backend="local")
    with pytest.raises(RunFailed, match="killed by SIGKILL"):
        run.wait()


def test_ledger_records_submissions(session, home):
    run = session.submit("x = 1", {}, backend="local")
    run.wait()
    events = [json.loads(line) for line in (home / "ledger.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "submitted" and events[0]["run"] == run.id
    assert events[0]["client"] == session.client_id


def test_output_of_c_code_and_subprocesses_reaches_the_log(session, home):
    """Writes straight to file descriptors 1 and 2 (a C extension's training log, a subprocess) stream too."""
    seen = []
    run = session.submit(
        "import os, subprocess\nos.write(1, b'from fd 1\\n')\nsubprocess.run(['sh', '-c', 'echo from a child >&2'])",
        {},
        backend="local",
        on_update=lambda state, records: seen.extend((r.stream, r.text) for r in records),
    )
    run.wait()
    assert ("stdout", "from fd 1\n") in seen and ("stderr", "from a child\n") in seen
    assert "from fd 1" in run.logs() and "from a child" in run.logs()
    # ...and still reach the process's own streams (Batch's stdout.txt / stderr.txt on a node).
    task_dir = home / "runs" / run.id / "task-0"
    assert "from fd 1" in (task_dir / "stdout.txt").read_text()
    assert "from a child" in (task_dir / "stderr.txt").read_text()


def test_a_local_sweep_goes_on_without_polls(session):
    """Pending tasks start as slots free up, not when someone polls."""
    run = session.submit("y = i", {}, backend="local", sweep=[{"i": i} for i in range(6)], slots_per_node=2)
    local = session.backend("local")._runs[run.id]
    wait_for(lambda: all(t.ended for t in local.tasks.values()), timeout=60)  # no run.poll() in between
    assert list(run.wait().y) == list(range(6))


def test_one_watchdog_thread_keeps_every_tasks_timeout():
    """The tasks' --timeout alarms go off in the order they are due, a cancelled one (its task ended in
    time) never; one thread keeps them all."""
    from batchmagic.backends.local import _Watchdog

    dog = _Watchdog()
    fired: list[str] = []
    done = threading.Event()
    dog.after(0.3, lambda: (fired.append("late"), done.set()))
    dog.after(0.05, lambda: fired.append("cancelled")).cancel()
    dog.after(0.1, lambda: fired.append("soon"))
    assert done.wait(10)
    assert fired == ["soon", "late"]
    assert dog._thread is not None and dog._thread.is_alive()  # noqa: SLF001 - one thread, still waiting


def test_what_a_fresh_runner_killed_outright_left_in_a_session_of_its_own_ends_too(home):
    """A fresh runner (no warm worker: none is the subreaper above it) that sits out the grace after its
    timeout's SIGTERM is killed outright: it ends nothing itself, and what its cell started in a session of
    its own goes to init. The backend ends it by the task's working directory its environment names."""
    from batchmagic.backends.local import LocalBackend

    mark = 3041
    cell = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + escaping_cell(mark, 60)
    session = Session()
    try:
        run = session.submit(cell, {}, backend=LocalBackend(home, warm=False), timeout=1)
        with pytest.raises(RunFailed, match="timeout"):
            run.wait(timeout=60)
        wait_for(lambda: not sleepers(mark), timeout=5)
    finally:
        session.teardown()
        kill_sleepers(mark)
