"""Poll a backend and tail the run's logs; each tick yields the backend's status and new log records.

The monitor owns no thread: blocking runs call :meth:`Monitor.tick` from the main thread (robust
under ipykernel 6 and 7); background runs call it from their own thread.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterable, Iterator

from batchmagic.backends.base import Backend, BackendStatus
from batchmagic.protocol import Layout, decode_log_records
from batchmagic.run.state import LogRecord, Phase, PhaseSpan, RunState
from batchmagic.storage import Store

__all__ = ["LogRecord", "LogTail", "Monitor", "RunState", "PhaseSpan", "TAIL_FASTEST", "TAIL_SLOWEST"]

log = logging.getLogger("batchmagic.monitor")

#: The polls' jitter draws from a generator of its own: the module's global one is the notebook's, which a
#: notebook seeds so that its later cells draw the same numbers whatever the polls of a remote cell did.
_JITTER = random.Random()

RUNNING_LONGEST = 5.0  # seconds: the slowest poll while a cell runs (quiet cells still show output soon)
#: Ticks a queued run polls at the fastest interval: its node is ready, so its task starts within
#: seconds (a warm pool) and its first line should not wait for a backed-off poll. Bounded, so a run
#: queued behind other work settles into the usual backoff.
QUEUED_FAST_TICKS = 10


#: Seconds between the log reads a run makes between its backend polls while its cell runs: at once
#: again while lines arrive, backing off to the slowest while it is quiet. Each read is one ranged GET of
#: the log blob from the last offset (one read transaction; an unchanged log answers 416, no body): see
#: docs/reliability.md for what they cost. The local backend polls faster than this, so it never tails.
TAIL_FASTEST = 0.1
TAIL_SLOWEST = 1.0

#: Bytes of a log read at once: a flood of output is read (and held) a chunk at a time.
LOG_CHUNK = 4 << 20


class LogTail:
    """Reads new complete records of one task's log by byte offset, at most about ``chunk`` bytes a read
    (so a tick's memory does not grow with a flood of output: the rest is read on the next)."""

    def __init__(self, key: str, task_id: str, *, chunk: int = LOG_CHUNK) -> None:
        self.key = key
        self.task_id = task_id
        self.offset = 0
        self.chunk = chunk

    def read(self, store: Store) -> list[LogRecord]:
        """The next complete records (an empty list when none has arrived since the last read)."""
        limit = self.chunk
        while True:
            data = store.read_from(self.key, self.offset, limit)
            records, used = decode_log_records(data, self.task_id)
            if used or len(data) < limit:
                self.offset += used
                return records
            limit *= 2  # one record longer than the chunk: read on until its line ends

    def read_all(self, store: Store) -> Iterator[LogRecord]:
        """Every record from here to the log's current end, a chunk at a time."""
        while records := self.read(store):
            yield from records


class Monitor:
    """One run's poller: backend status + log tails, with a poll interval that grows.

    A single cell's log streams; a sweep's logs stream only for the tasks someone follows (the panel's
    picker), so a tick's cost does not grow with the number of tasks.
    """

    def __init__(self, backend: Backend, run_id: str, follow: Iterable[str] = ()) -> None:
        self.backend = backend
        self.run_id = run_id
        self.tails: dict[str, LogTail] = {}
        for task_id in follow:
            self.follow(task_id)
        first, self.longest = backend.poll_intervals
        self.interval = first
        self.ticks = 0
        self.queued_ticks = 0
        self.tail_interval = TAIL_FASTEST

    def tick(self, stopping: threading.Event | None = None) -> tuple[BackendStatus, list[LogRecord]]:
        """Poll once; return the status and the log records that arrived since the last tick. Once
        ``stopping`` is set (the run is being cancelled or torn down), no further call is made: the
        logs are read on the next tick, from where they were."""
        self.ticks += 1
        status = self.backend.poll(self.run_id)
        records = self.read_logs() if stopping is None or not stopping.is_set() else []
        return status, records

    def follow(self, task_id: str) -> None:
        if task_id not in self.tails:
            self.tails[task_id] = LogTail(Layout.log(self.run_id, task_id), task_id)

    def read_logs(self) -> list[LogRecord]:
        records: list[LogRecord] = []
        for tail in list(self.tails.values()):
            try:
                records.extend(tail.read(self.backend.store))
            except Exception:  # storage away: the tail keeps its offset and reads on from there next tick
                log.debug("could not read the log of %s", tail.task_id, exc_info=True)
        records.sort(key=lambda r: r.time)
        return records

    def next_tail(self, *, got: bool) -> float:
        """Seconds to the next log read between polls: the fastest while lines arrive, longer while not."""
        self.tail_interval = TAIL_FASTEST if got else min(TAIL_SLOWEST, self.tail_interval * 1.5)
        return self.tail_interval

    def next_interval(self, *, active: bool, phase: Phase) -> float:
        """Seconds to the next tick: back to fast while output flows, slower while nothing happens,
        and never so slow while the cell runs that its first line waits long to show."""
        if phase == Phase.QUEUED and self.queued_ticks < QUEUED_FAST_TICKS:
            self.queued_ticks += 1
            active = True
        if active:
            self.interval = self.backend.poll_intervals[0]
        else:
            longest = self.longest if phase != Phase.RUNNING else min(self.longest, RUNNING_LONGEST)
            self.interval = min(longest, self.interval * 1.5)
        return self.interval * _JITTER.uniform(0.9, 1.1)
