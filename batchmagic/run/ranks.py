"""A distributed run seen from the notebook: its ranks' merged log, and which rank's failure ended it.

Pure functions over what the backend reported and the ranks' outcomes; :class:`batchmagic.run.Run`
calls them. Every rank is a task of the run (``rank-<k>``, :func:`batchmagic.distributed.rank_id`), with
its own log and result; rank 0's names come back, and a failure of any rank fails the run. When one
rank fails, the backend stops the others ("stopped after rank-k failed"), so the rank to blame is the
one that failed of itself, first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from batchmagic.backends.base import STOPPED_AFTER, TaskStatus
from batchmagic.distributed import rank_of
from batchmagic.errors import RemoteError, RunFailed
from batchmagic.protocol import TaskOutcome
from batchmagic.run.state import LogRecord

__all__ = [
    "STOPPED_AFTER",
    "RankFailure",
    "RankPrefixer",
    "blame",
    "failure_of",
    "label",
    "last_lines",
    "rank_row_state",
]

LAST_LINES = 3  # lines of the failed rank's log in the run's one-line error


def label(task_id: str) -> str:
    """``rank-3`` -> ``rank 3``: how a rank is named in the log and in errors."""
    rank = rank_of(task_id)
    return f"rank {rank}" if rank is not None else task_id


class RankPrefixer:
    """Puts ``[rank k] `` before every line of each rank's records, for the merged log, whole lines only: a
    record may end mid-line (``print`` writes its pieces apart, the runner flushes what it has), and two
    ranks printing at once must not interleave inside a line. A rank's unfinished line waits for its end
    (or :meth:`flush`)."""

    def __init__(self) -> None:
        self._partial: dict[tuple[str, str], LogRecord] = {}  # (task id, stream) -> its unfinished line

    def apply(self, records: Iterable[LogRecord]) -> list[LogRecord]:
        out = []
        for record in records:
            if record.stream not in ("stdout", "stderr") or not record.text:
                out.append(record)
                continue
            key = (record.task_id, record.stream)
            held = self._partial.pop(key, None)
            text = (held.text if held is not None else "") + record.text
            complete, newline, rest = text.rpartition("\n")
            if rest:
                self._partial[key] = replace(record, time=held.time if held else record.time, text=rest)
            if newline:
                prefix = f"[{label(record.task_id)}] "
                lines = (complete + newline).splitlines(keepends=True)
                start = held.time if held is not None else record.time
                out.append(replace(record, time=start, text="".join(prefix + line for line in lines)))
        return out

    def flush(self) -> list[LogRecord]:
        """The unfinished lines held back (the run has ended: they will not be finished), prefixed."""
        held, self._partial = list(self._partial.values()), {}
        return [replace(r, text=f"[{label(r.task_id)}] {r.text}") for r in sorted(held, key=lambda r: r.time)]


def rank_row_state(state: str, status: TaskStatus | None) -> str:
    """A rank's state in the panel: "stopped" for a rank that failed only because another did (its node's
    supervisor or Batch ended it), so that the rank that failed of itself is the one row that says "failed"."""
    stopped = status is not None and status.failure.startswith(STOPPED_AFTER)
    return "stopped" if state == "failed" and stopped else state


def last_lines(records: Iterable[LogRecord], count: int = LAST_LINES) -> list[str]:
    """The last ``count`` non-empty lines a rank printed (stdout and stderr), without prefixes."""
    text = "".join(r.text for r in records if r.stream in ("stdout", "stderr"))
    return [line for line in text.splitlines() if line.strip()][-count:]


@dataclass(frozen=True)
class RankFailure:
    """The rank whose failure ended the run, and what it left."""

    task_id: str
    status: TaskStatus
    outcome: TaskOutcome | None
    failure: str  # why it ended without a verdict of its own (killed, no result); empty when the outcome tells


def _failed(status: TaskStatus, outcome: TaskOutcome | None, failure: str) -> bool:
    return bool(failure) or outcome is None or not outcome.ok or (status.exit_code or 0) != 0


def blame(
    task_ids: Iterable[str],
    statuses: Mapping[str, TaskStatus],
    outcomes: Mapping[str, tuple[TaskOutcome | None, str]],
) -> RankFailure | None:
    """The rank that ended the run by failing (None when every rank succeeded): one that failed of itself
    before one stopped because of another, then the first to end, then the lowest rank."""
    found = []
    for tid in task_ids:
        status = statuses.get(tid) or TaskStatus(tid, state="completed")
        outcome, failure = outcomes.get(tid, (None, "it left no result"))
        if _failed(status, outcome, failure):
            consequence = (failure or status.failure).startswith(STOPPED_AFTER) or (
                outcome is not None and outcome.phase == "terminated"
            )
            ended = status.ended if status.ended is not None else float("inf")
            found.append(((consequence, ended, rank_of(tid) or 0), RankFailure(tid, status, outcome, failure)))
    return min(found, key=lambda item: item[0])[1] if found else None


def failure_of(name: str, failed: RankFailure, lines: list[str], exit_line: Callable[[TaskOutcome], str]) -> Exception:
    """The run's error for ``failed``: the cell's own exception as raised on that rank (a RemoteError
    naming it), else one line naming the rank, its node, why and its last lines."""
    outcome = failed.outcome
    who = label(failed.task_id) + (f" on {failed.status.node}" if failed.status.node else "")
    tail = f"; its last lines: {' | '.join(lines)}" if lines else "; it printed nothing"
    if outcome is not None and not failed.failure and not outcome.ok and outcome.error is not None:
        if outcome.phase == "cell":
            err = outcome.error
            return RemoteError(err.type, err.message, list(err.traceback), failed.task_id)
        if outcome.phase == "exit":  # as any other failure's line: the rank, why, and what it printed last
            return RunFailed(f"run {name}: {who} failed: {exit_line(outcome)}{tail}")
    why = failed.failure or failed.status.failure or _why(failed)
    return RunFailed(f"run {name}: {who} failed: {why}{tail}")


def _why(failed: RankFailure) -> str:
    outcome = failed.outcome
    if outcome is not None and outcome.error is not None:
        return f"{outcome.error.type}: {outcome.error.message}"
    code = failed.status.exit_code
    return f"it exited with code {code}" if code is not None else "it ended without a result"
