"""Poll a backend and tail the run's logs; each tick yields the backend's status and new log records.

The monitor owns no thread: blocking runs call :meth:`Monitor.tick` from the main thread (robust
under ipykernel 6 and 7); background runs call it from their own thread.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterable, Iterator, Sequence

from batchmagic.backends.base import Backend, BackendStatus
from batchmagic.protocol import Layout, decode_log_records
from batchmagic.run.state import LogRecord, Phase, PhaseSpan, RunState
from batchmagic.storage import Store, read_at_once

__all__ = [
    "GLIMPSES",
    "LIVE_RANKS",
    "LastLines",
    "LogRecord",
    "LogTail",
    "Monitor",
    "RunState",
    "PhaseSpan",
    "TAIL_FASTEST",
    "TAIL_SLOWEST",
]

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

#: The ranks of a distributed run whose logs stream (into the cell, the panel's merged log): the first ones,
#: rank 0's node's on an 8-GPU node. A tick's reads must not grow with the ranks (100 nodes x 8: 800 logs):
#: every other rank's log is read whole by ``run.logs()``, its own as it runs when picked in the panel, and
#: its last line, for its row, a few ranks a tick (:class:`LastLines`).
LIVE_RANKS = 8
#: The ranks whose last line one tick reads, at most (each one read of the log from where it was).
GLIMPSES = 16
#: Bytes of a rank's log one glimpse reads: enough for its last lines; one that printed more catches up
#: over later glimpses (its row shows a line it printed, a little late).
GLIMPSE_CHUNK = 256 << 10


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


def last_line(records: Iterable[LogRecord]) -> str:
    """The last non-empty line printed (stdout or stderr) in ``records``; "" when none."""
    text = "".join(r.text for r in records if r.stream in ("stdout", "stderr"))
    return next((line for line in reversed(text.splitlines()) if line.strip()), "")


def due(task_ids: Sequence[str], turn: int, count: int) -> list[str]:
    """The ``count`` tasks a round-robin over ``task_ids`` reads at its ``turn``-th tick (0, 1, ...)."""
    if not task_ids:
        return []
    start = (turn * count) % len(task_ids)
    return [task_ids[(start + i) % len(task_ids)] for i in range(min(count, len(task_ids)))]


class LastLines:
    """The last line of each rank whose log does not stream, for the panel's rows, at a bounded cost: a
    tick reads :data:`GLIMPSES` of them in turn, each on from where it was, a :data:`GLIMPSE_CHUNK` at most."""

    def __init__(self, run_id: str, task_ids: Iterable[str], *, per_tick: int = GLIMPSES) -> None:
        self.tails = {tid: LogTail(Layout.log(run_id, tid), tid, chunk=GLIMPSE_CHUNK) for tid in task_ids}
        self.order = list(self.tails)
        self.per_tick = per_tick
        self.turn = 0

    def read(self, store: Store) -> dict[str, str]:
        """This tick's last lines: task id -> its latest line, for those that printed one since they were read."""
        picked = due(self.order, self.turn, self.per_tick)
        self.turn += 1

        def one(tid: str) -> str:
            try:
                return last_line(self.tails[tid].read(store))
            except Exception:  # storage away: read on from the same offset at its next turn
                log.debug("could not read the log of %s", tid, exc_info=True)
                return ""

        lines = read_at_once(one, picked)
        return {tid: line for tid, line in zip(picked, lines, strict=True) if line}

    def read_to_end(self, store: Store) -> dict[str, str]:
        """Every rank's last line, each log read on to its end: the run has ended, and its rows (and its
        record's) say what each rank printed last. Once per run, :data:`~batchmagic.storage.READERS` at once."""

        def one(tid: str) -> str:
            line = ""
            try:
                while records := self.tails[tid].read(store):
                    line = last_line(records) or line
            except Exception:  # storage away: the row keeps the line it had
                log.debug("could not read the log of %s", tid, exc_info=True)
            return line

        lines = read_at_once(one, self.order)
        return {tid: line for tid, line in zip(self.order, lines, strict=True) if line}

    def drop(self, task_id: str) -> None:
        """``task_id``'s log streams now: its last line comes with its records."""
        if self.tails.pop(task_id, None) is not None:
            self.order.remove(task_id)


class Monitor:
    """One run's poller: backend status + log tails, with a poll interval that grows.

    A single cell's log streams; a sweep's logs stream only for the tasks someone follows (the panel's
    picker), so a tick's cost does not grow with the number of tasks; a distributed run's stream for its
    first :data:`LIVE_RANKS` ranks (``follow``), and the other ranks' (``glimpse``) are read a few a tick
    for their last lines (:class:`LastLines`). The logs of one tick are read at once
    (:data:`~batchmagic.storage.READERS` at a time).
    """

    def __init__(
        self, backend: Backend, run_id: str, follow: Iterable[str] = (), *, glimpse: Iterable[str] = ()
    ) -> None:
        self.backend = backend
        self.run_id = run_id
        self.tails: dict[str, LogTail] = {}
        self.glimpses = LastLines(run_id, glimpse)
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
            self.glimpses.drop(task_id)

    def read_logs(self) -> list[LogRecord]:
        """The new records of every log that streams, read at once, in time order."""

        def one(tail: LogTail) -> list[LogRecord]:
            try:
                return tail.read(self.backend.store)
            except Exception:  # storage away: the tail keeps its offset and reads on from there next tick
                log.debug("could not read the log of %s", tail.task_id, exc_info=True)
                return []

        records = [r for got in read_at_once(one, list(self.tails.values())) for r in got]
        records.sort(key=lambda r: r.time)
        return records

    def read_last_lines(self, stopping: threading.Event | None = None) -> dict[str, str]:
        """The last lines of the ranks whose logs do not stream that this tick reads (see :class:`LastLines`)."""
        if stopping is not None and stopping.is_set():
            return {}
        return self.glimpses.read(self.backend.store)

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
