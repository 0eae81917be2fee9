"""A submit whose job can never be created (every POST /jobs reset, through the emulator's --faults)
ends RunFailed in one line: what it leaves is removed, and nothing it logs on the way is a traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from batchmagic.api import Session
from batchmagic.backends.azure import calls
from batchmagic.errors import RunFailed
from tests.support.azurite import RunningAzurite
from tests.support.emulator import start_emulator
from tests.support.settings import use_azure


def test_a_job_that_cannot_be_created_fails_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    azurite: RunningAzurite,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(calls, "backoff", lambda attempt: 0.01)  # the retries, without their waits
    with start_emulator(tmp_path / "batch", extra_args=["--faults", "reset-before:1.0@POST/jobs"]) as emu:
        use_azure(monkeypatch, emu, azurite, prefix="refused")
        session = Session()
        with caplog.at_level(logging.INFO, logger="batchmagic"), pytest.raises(RunFailed) as failed:
            session.submit("y = 1", {}, backend="azure", name="refused")
        assert "\n" not in str(failed.value) and "create the job" in str(failed.value), failed.value
        assert [j.id for j in emu.client().list_jobs()] == []
    ours = [r for r in caplog.records if r.name.startswith("batchmagic")]
    tracebacks = [r.getMessage() for r in ours if r.exc_info is not None or "\n" in r.getMessage()]
    assert tracebacks == []
    (run,) = session.runs
    assert run.status == "failed" and not list(run.store.list_keys(run.prefix))  # its data is gone
