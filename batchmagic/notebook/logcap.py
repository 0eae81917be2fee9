"""How much of a run's log the notebook shows: a flood of output must not flood the notebook (nor the
kernel's memory, nor the browser's).

The first lines show as they arrive; past the cap, a note says that the rest shows when the run ends,
and then only its last lines do, after a line saying how many were left out and where the whole log is
(``_azbatch.logs()``, ``batchmagic logs RUN``). What the run printed is all in its log and its record:
the cap is only on what is shown. Pure: records in, records to show out.
"""

from __future__ import annotations

from collections import deque

from batchmagic.run.state import LogRecord, RunState
from batchmagic.settings import DEFAULT_LOG_LINES

__all__ = ["LogCap"]


class LogCap:
    """Cut a run's stream of log records to at most ``limit`` lines shown (0: no cap): the first
    ``limit - tail`` as they come, the last ``tail`` once the run has ended (:meth:`end`)."""

    def __init__(self, limit: int = DEFAULT_LOG_LINES) -> None:
        self.limit = max(0, limit)
        self.tail = min(1000, self.limit // 2)
        self.head = self.limit - self.tail
        self.shown = 0  # lines shown so far
        self.hidden = 0  # lines (and displays) left out so far, the tail's included
        self._last: deque[LogRecord] = deque(maxlen=self.tail or 1)
        self._ended = False

    @property
    def capped(self) -> bool:
        return bool(self.limit) and self.shown >= self.head

    def feed(self, records: list[LogRecord], state: RunState) -> list[LogRecord]:
        """The records to show now: all of them until the cap, then none (the last lines are kept)."""
        if not self.limit:
            return records
        out: list[LogRecord] = []
        for record in records:
            if self.capped:
                self._keep(record)
                continue
            lines = record.text.splitlines(keepends=True) if record.output is None else [""]
            room = self.head - self.shown
            if len(lines) <= room:
                out.append(record)
                self.shown += len(lines)
            else:
                out.append(LogRecord(record.time, record.stream, "".join(lines[:room]), record.task_id))
                self.shown = self.head
                self._keep(LogRecord(record.time, record.stream, "".join(lines[room:]), record.task_id))
            if self.capped:
                out.append(self._note(record, _capped_line(self, state)))
        return out

    def end(self, state: RunState) -> list[LogRecord]:
        """Once the run has ended: how many lines were left out, then the last ones (once)."""
        if self._ended or not self.hidden:
            return []
        self._ended = True
        last = list(self._last)
        left_out = self.hidden - len(last)  # each kept record is one line
        time = last[-1].time if last else 0.0
        note = self._note(None, f"[azbatch] ... {left_out:,} lines not shown; its last {len(last):,} lines:\n", time)
        return [note, *last] if left_out > 0 else last

    def _keep(self, record: LogRecord) -> None:
        if record.output is not None:
            self.hidden += 1  # a display past the cap is left out: a flood of images is a flood too
            return
        for line in record.text.splitlines(keepends=True):
            self.hidden += 1
            if self.tail:
                self._last.append(LogRecord(record.time, record.stream, line, record.task_id))

    @staticmethod
    def _note(record: LogRecord | None, text: str, time: float = 0.0) -> LogRecord:
        return LogRecord(record.time if record is not None else time, "stderr", text, "")


def _capped_line(cap: LogCap, state: RunState) -> str:
    ending = f" and its last {cap.tail:,} once it ends" if cap.tail else ""
    return (
        f"\n[azbatch] {state.name} printed more than {cap.head:,} lines: the notebook shows those{ending} "
        f"(AzBatch.log_lines = {cap.limit}); the whole log: _azbatch.logs(), or batchmagic logs {state.run_id}\n"
    )
