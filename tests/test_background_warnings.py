"""A background run keeps its own warnings, and only its own: what the notebook's main thread warns
meanwhile is shown there as usual (warnings.catch_warnings is process-wide: a monitor thread must not
enter it)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from batchmagic.api import Session
from tests.support.emulator import wait_for


def test_a_background_run_keeps_its_own_warnings_and_no_one_elses(home: Path, recwarn: pytest.WarningsRecorder) -> None:
    session = Session(home)
    run = session.submit("import time\ntime.sleep(2)\ny = 1", {}, backend="local", output_files=("never-written.txt",))
    run.watch_in_background()
    time.sleep(0.5)  # the monitor thread is polling
    warnings.warn("the notebook's own warning, raised while a run is watched", UserWarning, stacklevel=1)
    wait_for(lambda: run.done, timeout=120)
    assert run.status == "done", run.error
    assert not any("notebook's own" in text for text in run.warnings), run.warnings
    assert any("notebook's own" in str(w.message) for w in recwarn.list)
    # The run's own warning (raised on the monitor thread while it collected) is the run's.
    assert any("never-written.txt" in text and "matched no file" in text for text in run.warnings), run.warnings
