"""The poll loop of one run: ask the backend, retry a failed poll, hold the run to its budget, read the
runner's progress, keep each task's state; and how long to wait before the next poll.

:class:`Driver` decides and keeps count; the :class:`~batchmagic.run.run.Run` it drives acts on what
a tick says (:class:`Tick`): moves to a phase, tells its listeners, fails, or collects.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from batchmagic.backends.base import Backend, BackendStatus, TaskStatus
from batchmagic.protocol import Progress
from batchmagic.run.collect import status_from_store
from batchmagic.run.cost import CostMeter
from batchmagic.run.monitor import LIVE_RANKS, TAIL_FASTEST, TAIL_SLOWEST, Monitor
from batchmagic.run.ranks import RankPrefixer
from batchmagic.run.state import GpuTracker, LogRecord, Phase

__all__ = ["POLL_ATTEMPTS", "Driver", "TaskStates", "Tick", "sleep_between", "thread_warnings"]

log = logging.getLogger("batchmagic.run")

POLL_ATTEMPTS = 5  # consecutive failed polls before a run is declared lost


@dataclass
class Tick:
    """What one poll found: the backend's status, the new log records to show, and why the run cannot
    go on (``error``: lost, over budget, or the backend's own reason); ``detail`` for the panel."""

    status: BackendStatus | None
    records: list[LogRecord] = field(default_factory=list)
    error: str = ""
    detail: str = ""
    budget: bool = False  # the error is the run's --budget, spent


class Driver:
    """The poll loop's state for the run ``run_id`` on ``backend`` (see the module docstring)."""

    def __init__(
        self, backend: Backend, run_id: str, task_ids: list[str], *, sweep: bool, world: int, gpus: GpuTracker
    ) -> None:
        self.backend = backend
        self.run_id = run_id
        self.task_ids = task_ids
        self.sweep = sweep
        self.world = world  # a distributed run's ranks; 0 for any other run
        self.gpus = gpus  # the runners' GPU samples (progress records of their own)
        self.monitor: Monitor | None = None
        self.last_status: BackendStatus | None = None
        self.tasks = TaskStates(task_ids)
        self.progress = ""  # the runner's latest transfer progress, shown as the detail
        self.last_lines: dict[str, str] = {}  # a distributed run's ranks' last lines
        self._activity = False  # the last tick brought output or a new phase: poll fast again
        self._poll_errors = 0  # consecutive failed polls
        self._finished = 0  # tasks finished at the last tick
        self._prefixer = RankPrefixer()
        self._line_parts: dict[str, str] = {}  # each rank's line printed so far (its end not yet arrived)
        self.ended_in_store = False  # attached to a run every task of which left its outcome in the store
        self._told_live = False  # a distributed run's log said which ranks stream

    def monitoring(self) -> Monitor:
        """The run's monitor, made on first use."""
        if self.monitor is None:
            # A single cell's log streams; a sweep's streams only for the tasks someone follows; a distributed
            # run's for its first ranks, the others' last lines read a few a tick.
            follow = () if self.sweep else self.task_ids[: LIVE_RANKS if self.world else None]
            glimpse = self.task_ids[len(follow) :] if self.world else ()
            self.monitor = Monitor(self.backend, self.run_id, follow, glimpse=glimpse)
        return self.monitor

    @property
    def ticks(self) -> int:
        return self.monitor.ticks if self.monitor is not None else 0

    def tick(
        self, phase: Phase, name: str, meter: CostMeter | None, *, stopping: threading.Event | None = None
    ) -> Tick | None:
        """Poll once. None: the poll failed and the next may do better (a network blip, a throttled call);
        after :data:`POLL_ATTEMPTS` failures in a row the tick says the run is lost. ``stopping``: the run
        is being cancelled or torn down; the monitor makes no further call once it is set."""
        try:
            status, records = self.monitoring().tick(stopping)
            if self.world:
                self.last_lines.update(self.monitoring().read_last_lines(stopping))
        except Exception as err:
            if stopping is not None and stopping.is_set():
                return None  # what failed is the run being ended: no poll error to count
            if self.ended_in_store:  # its job is gone (deleted), but every task left its outcome
                return Tick(status_from_store(self.backend.store, self.run_id, self.task_ids))
            self._poll_errors += 1
            self._activity = False  # back off: the next tick waits longer, not less
            log.debug("poll %d failed", self._poll_errors, exc_info=True)
            if self._poll_errors < POLL_ATTEMPTS:
                return None
            return Tick(None, error=f"lost track of the run after {self._poll_errors} failed polls: {err}")
        self._poll_errors = 0
        self.tasks.fold(status)  # before it is the last status: the panel's thread reads them together
        self.last_status = status
        if meter is not None:
            meter.observe(status.holding, time.time())
            if meter.over_budget and not status.finished:
                return Tick(status, error=meter.budget_line(name), budget=True)
        self._activity = bool(records) or status.phase != phase or self._ending()
        records = self.deliverable(records)
        return Tick(status, records, error=status.error, detail=status.detail or self.progress)

    def deliverable(self, records: list[LogRecord]) -> list[LogRecord]:
        """New log records as the listeners get them (progress becomes the detail; ranks are labelled)."""
        records = self._take_progress(records)
        if self.world:
            # What the cell displays shows once, from rank 0 (whose names come back), not once per rank.
            records = [r for r in records if r.output is None or r.task_id == self.task_ids[0]]
            self._note_last_lines(records)
            records = self._prefixer.apply(records)
            if records and not self._told_live and self.world > LIVE_RANKS:
                self._told_live = True
                records.insert(0, LogRecord(records[0].time, "stderr", live_ranks_line(self.world)))
        return records

    def tail(self, phase: Phase) -> tuple[list[LogRecord], float]:
        """Between two polls of the backend, once the run is launched and until it ends: read its log, so
        that a line reaches the notebook within a fraction of a second rather than at the next poll (a
        second or more on Azure; the task may start before a poll says so). The records to deliver, and
        the seconds until the next read (see :meth:`Monitor.next_tail`)."""
        monitor = self.monitor
        if monitor is None or phase.final or phase is Phase.COLLECTING or not monitor.tails:
            return [], TAIL_SLOWEST
        records = monitor.read_logs()
        if records:
            self._activity = True  # output flows: the next poll comes soon too (the cell may end)
        return self.deliverable(records), monitor.next_tail(got=bool(records))

    def final_logs(self) -> Iterable[list[LogRecord]]:
        """The last log bytes, which may have landed after the previous tick (read a chunk at a time)."""
        if self.monitor is not None:
            while records := self.monitor.read_logs():
                yield self.deliverable(records)
            if self.world:
                self.last_lines.update(self.monitor.glimpses.read_to_end(self.backend.store))
        if self.world and (unfinished := self._prefixer.flush()):
            yield unfinished  # the ranks' last lines that had no newline

    def _ending(self) -> bool:
        """A task finished and at most one more round of tasks is left to start: the run may end soon (a
        sweep's last tasks), so the next poll comes soon, not after a backed-off interval (up to half a
        second locally; a long sweep on Batch backs off as before until its end is near)."""
        tally = self.tasks.tally
        finished = tally.get("succeeded", 0) + tally.get("failed", 0)
        moved, self._finished = finished != self._finished, finished
        return moved and tally.get("pending", 0) <= tally.get("running", 0)

    def back_off(self) -> None:
        """The next poll waits longer, not less (storage is away)."""
        self._activity = False

    def pause(self, phase: Phase) -> float:
        """Seconds until the next poll: fast while things happen, backing off while they don't."""
        monitor = self.monitor
        return monitor.next_interval(active=self._activity, phase=phase) if monitor else 0.05

    def _take_progress(self, records: list[LogRecord]) -> list[LogRecord]:
        """Turn the runner's transfer progress into the panel's detail; return the other records."""
        rest = []
        for record in records:
            if record.stream != "progress":
                rest.append(record)
                continue
            try:
                progress = Progress.from_json(record.text)
            except ValueError:
                log.debug("unreadable progress record %r", record.text)
                continue
            if progress.transfer:
                self.progress = progress.describe()
            else:
                self.gpus.add(record.task_id, [list(g) for g in progress.gpus])
        return rest

    def _note_last_lines(self, records: list[LogRecord]) -> None:
        """Each rank's last line, for its row in the panel."""
        for record in records:
            if record.stream not in ("stdout", "stderr"):
                continue
            # A record may hold part of a line (print writes its pieces apart): join them before choosing.
            text = self._line_parts.get(record.task_id, "") + record.text
            self._line_parts[record.task_id] = text.rsplit("\n", 1)[-1][-1000:]
            if lines := [line for line in text.splitlines() if line.strip()]:
                self.last_lines[record.task_id] = lines[-1]


def live_ranks_line(world: int) -> str:
    """The first line of a distributed run's log that streams only some of its ranks: which, and where the
    others' are."""
    return (
        f"[batchmagic] this log streams ranks 0-{LIVE_RANKS - 1} of {world}; every rank's: run.logs(), one "
        "rank's: run.logs('rank-k') or the panel's rank log; each rank's last line is in its row\n"
    )


def sleep_between(
    seconds: float,
    between_polls: Callable[[], None] | None,
    *,
    until: Callable[[], bool],
    tail: Callable[[], float] | None = None,
) -> None:
    """Sleep ``seconds``; with ``between_polls``, call it in slices meanwhile and stop early once
    ``until()``; with ``tail``, call it from :data:`TAIL_FASTEST` on, then as often as it asks (it
    returns the seconds to its next call)."""
    if between_polls is None and tail is None:
        time.sleep(seconds)
        return
    now = time.monotonic()
    end, next_tail = now + seconds, now + TAIL_FASTEST
    while True:
        if between_polls is not None:
            between_polls()
        now = time.monotonic()
        if tail is not None and now >= next_tail and now < end:
            next_tail = now + tail()
            now = time.monotonic()
        left = end - now
        if left <= 0 or until():
            return
        step = min(left, next_tail - now) if tail is not None else left
        time.sleep(max(0.0, min(step, 0.05) if between_polls is not None else step))


class TaskStates:
    """Each task's state for the panel, kept up to date by what changed: a poll that names its changed
    tasks (``BackendStatus.changed``) costs what changed, not how many tasks there are."""

    def __init__(self, task_ids: list[str]) -> None:
        # The monitor folds while a cancel or teardown (another thread) reads the states for the panel.
        self._lock = threading.Lock()
        self.task_ids = task_ids
        self.index = {tid: i for i, tid in enumerate(task_ids)}
        self.values = ["pending"] * len(task_ids)
        self.tally: dict[str, int] = {"pending": len(task_ids)}
        self.first_start: float | None = None
        self.seen: BackendStatus | None = None  # the status folded in last

    def states(self, status: BackendStatus | None) -> tuple[str, ...]:
        with self._lock:
            if status is not None and self.seen is None:
                self._fold(status)
            return tuple(self.values)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self.tally.items() if v}

    def fold(self, status: BackendStatus) -> None:
        with self._lock:
            self._fold(status)

    def _fold(self, status: BackendStatus) -> None:
        changed = status.changed if self.seen is not None else None
        self.seen = status
        ids = self.task_ids if changed is None else [tid for tid in changed if tid in self.index]
        for tid in ids:
            task = status.tasks.get(tid)
            if task is None:
                continue
            new = task_state(task)
            i = self.index[tid]
            old = self.values[i]
            if new != old:
                self.values[i] = new
                self.tally[old] -= 1
                self.tally[new] = self.tally.get(new, 0) + 1
            if task.started and (self.first_start is None or task.started < self.first_start):
                self.first_start = task.started


def task_state(task: TaskStatus) -> str:
    """A task's state for the panel: pending, running, succeeded or failed."""
    if task.state != "completed":
        return task.state
    return "succeeded" if task.exit_code == 0 and not task.failure else "failed"


# --- a monitor thread's own warnings ---

_thread = threading.local()  # .sink: the list this thread's warnings go to (none: shown as usual)


@contextmanager
def thread_warnings(sink: list[str]) -> Iterator[None]:
    """Collect the warnings this thread raises into ``sink``, and only this thread's: every other thread
    (the notebook's) shows its warnings as before. ``warnings.catch_warnings`` would not do: it is
    process-wide, so a monitor thread inside it would swallow what the main thread warns meanwhile."""
    if not getattr(warnings.showwarning, "batchmagic_threads", False):
        warnings.showwarning = _by_thread(warnings.showwarning)
    _thread.sink = sink
    try:
        yield
    finally:
        _thread.sink = None


def _by_thread(shown: Callable[..., Any]) -> Callable[..., Any]:
    """A ``warnings.showwarning`` that hands a collecting thread's warnings to its sink and shows the rest
    with ``shown`` (what was in place before)."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        sink = getattr(_thread, "sink", None)
        if sink is None:
            shown(message, category, filename, lineno, file, line)
        else:
            sink.append(str(message))

    show.batchmagic_threads = True  # type: ignore[attr-defined]
    return show
