"""Lines as fast as here: between two polls of Batch, a run reads its log (a ranged read of the log blob),
at once again while lines arrive and backing off while the cell is quiet; the runner appends every 0.25 s
on Blob Storage. The figures are bench/log_latency.py's; these tests check the behaviour."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchmagic.api import Session
from batchmagic.backends.local import LocalBackend
from batchmagic.protocol import TaskSpec
from batchmagic.run.driver import sleep_between as _pause
from batchmagic.run.monitor import TAIL_FASTEST, TAIL_SLOWEST, Monitor
from batchmagic.run.state import LogRecord, RunState
from tests.support.azurite import RunningAzurite, azurite_fixture
from tests.support.emulator import RunningEmulator, start_emulator
from tests.support.settings import use_azure

azurite = azurite_fixture()


def test_the_tail_reads_at_once_while_lines_arrive_and_backs_off_while_quiet(tmp_path):
    monitor = Monitor(LocalBackend(tmp_path), "run-x")
    quiet = [monitor.next_tail(got=False) for _ in range(10)]
    assert quiet[0] == pytest.approx(TAIL_FASTEST * 1.5) and quiet == sorted(quiet) and quiet[-1] == TAIL_SLOWEST
    assert monitor.next_tail(got=True) == TAIL_FASTEST


def test_a_pause_between_polls_tails_and_a_short_one_does_not():
    calls: list[float] = []

    def tail() -> float:
        calls.append(time.monotonic())
        return 0.1

    _pause(0.05, None, until=lambda: False, tail=tail)  # the local backend's poll: no read between
    assert calls == []
    start = time.monotonic()
    _pause(0.6, None, until=lambda: False, tail=tail)
    assert 3 <= len(calls) <= 6 and calls[0] - start >= TAIL_FASTEST * 0.9
    calls.clear()
    _pause(2.0, lambda: None, until=lambda: bool(calls), tail=tail)  # ends early once the run is done
    assert len(calls) == 1


@pytest.fixture
def azure_session(monkeypatch, home, tmp_path: Path, azurite: RunningAzurite) -> Iterator[tuple[Session, Any]]:
    with start_emulator(tmp_path / "batch", allocation_delay=0.1) as emu:
        use_azure(monkeypatch, emu, azurite, prefix="tail")
        session = Session()
        yield session, emu
        session.teardown()


def test_on_the_azure_path_a_line_arrives_between_polls(azure_session: tuple[Session, RunningEmulator]):
    session, _emu = azure_session
    backend: Any = session.backend("azure")
    backend.poll_intervals = (6.0, 6.0)  # Batch polled rarely: the line must come by the log's own reads
    arrived: list[int] = []
    run: Any = None

    def on_update(state: RunState, records: list[LogRecord]) -> None:
        if any("first" in r.text for r in records) and not arrived:
            arrived.append(run.ticks if run is not None else -1)

    run = session.submit("print('first', flush=True)\nimport time\ntime.sleep(1)", {}, backend=backend,
                         on_update=on_update, folder="")  # fmt: skip
    run.wait(timeout=120)
    assert arrived == [1]  # after the first poll (queued), long before the second
    spec = TaskSpec.from_json(session.backend("azure").store.get_bytes(f"runs/{run.id}/task-0/spec.json"))
    assert spec.log_interval == 0.25
