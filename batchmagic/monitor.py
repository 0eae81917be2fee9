"""Poll a backend and tail the run's logs; each tick yields a :class:`RunState` snapshot.

The monitor owns no thread: blocking runs call :meth:`Monitor.tick` from the main thread (robust
under ipykernel 6 and 7); background runs call it from their own thread.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchmagic.backends.base import BackendStatus, Phase

if TYPE_CHECKING:
    from batchmagic.api import Run

__all__ = ["LogRecord", "Monitor", "RunState", "PhaseSpan"]

RUNNING_LONGEST = 5.0  # seconds: the slowest poll while a cell runs (quiet cells still show output soon)


@dataclass(frozen=True)
class LogRecord:
    time: float
    stream: str  # "stdout", "stderr", "progress" (the runner's transfers, JSON) or "display"
    text: str  # "" for a display
    task_id: str = ""
    output: dict[str, Any] | None = field(default=None, compare=False)  # a display: its nbformat output object


@dataclass(frozen=True)
class PhaseSpan:
    phase: Phase
    start: float
    end: float | None = None

    def duration(self, now: float | None = None) -> float:
        return (self.end if self.end is not None else (now or time.time())) - self.start


@dataclass(frozen=True)
class RunState:
    """What the panel shows: a snapshot, safe to hand to another thread."""

    run_id: str
    name: str
    backend: str
    vm_size: str
    phase: Phase
    phases: tuple[PhaseSpan, ...]
    started: float
    detail: str = ""
    error: str = ""
    task_counts: dict[str, int] = field(default_factory=dict)
    task_ids: tuple[str, ...] = ()  # a sweep's tasks, in order (empty for a single cell)
    task_states: tuple[str, ...] = ()  # pending, running, succeeded or failed, per task
    first_start: float | None = None  # when the first task started running
    now: float = field(default_factory=time.time)

    @property
    def is_sweep(self) -> bool:
        return bool(self.task_ids)

    @property
    def finished_tasks(self) -> int:
        return self.task_counts.get("succeeded", 0) + self.task_counts.get("failed", 0)

    @property
    def throughput(self) -> float | None:
        """Tasks finished per minute since the first one started."""
        if self.first_start is None or not self.finished_tasks:
            return None
        return self.finished_tasks / max(self.now - self.first_start, 1e-6) * 60

    @property
    def eta(self) -> float | None:
        """Seconds until every task is done, at the throughput so far."""
        rate = self.throughput
        if not rate:
            return None
        return (len(self.task_ids) - self.finished_tasks) / rate * 60

    @property
    def elapsed(self) -> float:
        end = self.phases[-1].start if self.phase.final and self.phases else self.now
        return end - self.started

    @property
    def finished(self) -> bool:
        return self.phase.final


# Log record streams: the cell's stdout and stderr, and the runner's transfer progress (JSON).
_STREAMS = {"o": "stdout", "e": "stderr", "p": "progress", "d": "display"}


class LogTail:
    """Reads new complete records of one task's log by byte offset."""

    def __init__(self, key: str, task_id: str) -> None:
        self.key = key
        self.task_id = task_id
        self.offset = 0

    def read(self, store: object) -> list[LogRecord]:
        data: bytes = store.read_from(self.key, self.offset)  # type: ignore[attr-defined]
        end = data.rfind(b"\n") + 1
        if end == 0:
            return []
        self.offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            stream = _STREAMS.get(item.get("s", "o"), "stdout")
            if stream == "display":
                if isinstance(item.get("d"), dict):
                    records.append(LogRecord(item.get("t", 0.0), stream, "", self.task_id, item["d"]))
                continue
            records.append(LogRecord(item.get("t", 0.0), stream, item.get("d", ""), self.task_id))
        return records


class Monitor:
    """One run's poller: backend status + log tails, with a poll interval that grows."""

    def __init__(self, run: Run) -> None:
        self.run = run
        # A single cell's log streams; a sweep's logs stream only for tasks someone follows (the
        # panel's picker), so a tick's cost does not grow with the number of tasks.
        self.tails = {} if run.is_sweep else {tid: LogTail(run.log_key(tid), tid) for tid in run.task_ids}
        first, self.longest = run.backend.poll_intervals
        self.interval = first
        self.ticks = 0

    def tick(self) -> tuple[BackendStatus, list[LogRecord]]:
        """Poll once; return the status and the log records that arrived since the last tick."""
        self.ticks += 1
        status = self.run.backend.poll(self.run.id)
        records = self.read_logs()
        return status, records

    def follow(self, task_id: str) -> None:
        if task_id not in self.tails:
            self.tails[task_id] = LogTail(self.run.log_key(task_id), task_id)

    def read_logs(self) -> list[LogRecord]:
        records: list[LogRecord] = []
        for tail in list(self.tails.values()):
            records.extend(tail.read(self.run.store))
        records.sort(key=lambda r: r.time)
        return records

    def next_interval(self, *, active: bool) -> float:
        """Seconds to the next tick: back to fast while output flows, slower while nothing happens,
        and never so slow while the cell runs that its first line waits long to show."""
        if active:
            self.interval = self.run.backend.poll_intervals[0]
        else:
            longest = self.longest if self.run.phase != Phase.RUNNING else min(self.longest, RUNNING_LONGEST)
            self.interval = min(longest, self.interval * 1.5)
        return self.interval * random.uniform(0.9, 1.1)
