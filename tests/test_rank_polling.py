"""A distributed run's poll tick does not grow with its ranks: its first ranks' logs stream (read at once),
the others' last lines are read a few a tick, and the nodes' states are read at once.

The monitor's unit tests use a real LocalStore that counts its reads and the smallest backend a monitor
polls (a status and a store); the local backend and the emulator + Azurite tests run real ranks.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import batchmagic
from batchmagic.backends.base import BackendStatus
from batchmagic.distributed import rank_id
from batchmagic.protocol import Layout, encode_log_record
from batchmagic.run import driver as driver_module
from batchmagic.run.driver import Driver
from batchmagic.run.monitor import GLIMPSES, LIVE_RANKS, due
from batchmagic.run.state import GpuTracker, Phase
from batchmagic.storage import LocalStore, read_at_once
from tests.support.azurite import RunningAzurite
from tests.support.emulator import RunningEmulator, start_emulator
from tests.support.settings import use_azure


class CountingStore(LocalStore):
    """A LocalStore that counts its reads (each is a GET on Blob Storage)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def read_from(self, key: str, offset: int, limit: int | None = None) -> bytes:
        with self._lock:
            self.reads[key] += 1
        return super().read_from(key, offset, limit)

    def get_bytes(self, key: str) -> bytes:
        with self._lock:
            self.reads[key] += 1
        return super().get_bytes(key)


class Polled:
    """What a monitor needs of a backend: its poll (every rank running) and its store."""

    poll_intervals = (0.1, 1.0)

    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def poll(self, run_id: str) -> BackendStatus:
        return BackendStatus(phase=Phase.RUNNING, tasks={})


def _logs(store: LocalStore, ranks: int) -> list[str]:
    ids = [rank_id(k) for k in range(ranks)]
    for k, tid in enumerate(ids):
        lines = encode_log_record(1.0, "o", f"rank {k} step 1\n") + encode_log_record(2.0, "o", f"rank {k} step 2\n")
        store.put_bytes(Layout.log("run", tid), lines)
    return ids


@pytest.mark.parametrize("ranks", [4, 64, 800])
def test_a_ticks_reads_stay_bounded_as_the_ranks_grow(tmp_path: Path, ranks: int) -> None:
    store = CountingStore(tmp_path)
    ids = _logs(store, ranks)
    driver = Driver(Polled(store), "run", ids, sweep=False, world=ranks, gpus=GpuTracker())  # type: ignore[arg-type]
    per_tick = []
    for _ in range(math.ceil(max(0, ranks - LIVE_RANKS) / GLIMPSES) + 1):
        before = sum(store.reads.values())
        tick = driver.tick(Phase.RUNNING, "run", None)
        assert tick is not None and tick.status is not None
        per_tick.append(sum(store.reads.values()) - before)
    assert max(per_tick) <= LIVE_RANKS + GLIMPSES, per_tick
    assert per_tick[0] == min(ranks, LIVE_RANKS + GLIMPSES)
    # Within ranks/GLIMPSES ticks every rank's row has its last line, streamed or glimpsed.
    assert driver.last_lines == {tid: f"rank {k} step 2" for k, tid in enumerate(ids)}


def test_the_first_ranks_stream_and_the_log_says_which(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    ids = _logs(store, 20)
    driver = Driver(Polled(store), "run", ids, sweep=False, world=20, gpus=GpuTracker())  # type: ignore[arg-type]
    tick = driver.tick(Phase.RUNNING, "run", None)
    assert tick is not None
    text = [r.text for r in tick.records]
    assert text[0].startswith(f"[batchmagic] this log streams ranks 0-{LIVE_RANKS - 1} of 20")
    assert sorted(text[1:]) == sorted(f"[rank {k}] rank {k} step {s}\n" for k in range(LIVE_RANKS) for s in (1, 2))


def test_the_round_robin_reads_every_rank_in_turn() -> None:
    ids = [rank_id(k) for k in range(40)]
    seen = [tid for turn in range(3) for tid in due(ids, turn, 16)]
    assert set(seen) == set(ids) and len(seen) == 48
    assert sorted(due(ids[:3], 5, 16)) == ids[:3] and due([], 0, 16) == []


def test_reads_at_once_keep_their_order_and_overlap() -> None:
    """Sixteen reads of 0.2 s each take about one read's time, not sixteen, and answer in order."""
    started = time.monotonic()
    got = read_at_once(lambda k: (time.sleep(0.2), k)[1], list(range(16)))
    assert got == list(range(16)) and time.monotonic() - started < 1.6  # 3.2 s one after another


def test_a_big_local_run_streams_its_first_ranks_and_every_row_has_its_line(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the local backend, with the streamed ranks cut to 2 so that 4 real ranks are "many"."""
    monkeypatch.setattr(driver_module, "LIVE_RANKS", 2)
    cell = "import os, time\nk = os.environ['RANK']\nprint('hello from', k, flush=True)\ntime.sleep(1)\nprint('bye', k)"
    run = batchmagic.submit(cell, {}, backend="local", nodes=4, distributed=True, home=home)
    got: list[str] = []
    run.subscribe(lambda state, records: got.extend(r.text for r in records))
    run.wait(timeout=60)
    streamed = "".join(got)
    assert "[batchmagic] this log streams ranks 0-1 of 4" in streamed
    assert "[rank 1] bye 1\n" in streamed and "[rank 2]" not in streamed and "[rank 3]" not in streamed
    merged = run.logs()
    assert all(f"[rank {k}] bye {k}\n" in merged for k in range(4))
    assert [(r.task_id, r.last_line) for r in run.state().ranks] == [(f"rank-{k}", f"bye {k}") for k in range(4)]


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RunningEmulator]:
    with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
        yield emu


def test_the_nodes_states_are_read_at_once_through_azurite(
    emulator: RunningEmulator, azurite: RunningAzurite, monkeypatch: pytest.MonkeyPatch, shell: Any
) -> None:
    """A 3-node run on the emulator: each poll reads every node's state, several at the same time."""
    use_azure(monkeypatch, emulator, azurite, prefix="nodesatonce")
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
    cell = "import os, time\ntime.sleep(4)\nprint('done', os.environ['RANK'])"
    shell.run_cell(f"%%azbatch --nodes 3 --distributed --no-wait\n{cell}")
    run = shell.user_ns["_azbatch"]
    store = run.backend.store
    real = store.get_bytes
    active, most = [0], [0]
    lock = threading.Lock()

    def get_bytes(key: str) -> bytes:
        if "/nodes/" not in key:
            return real(key)
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.05)  # storage's round trip, long enough for the reads to overlap
            return real(key)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(store, "get_bytes", get_bytes)
    run.wait(timeout=120)
    assert most[0] >= 2
    assert [r.last_line for r in run.state().ranks] == [f"done {k}" for k in range(3)]
