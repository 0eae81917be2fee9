"""Collection: a finished run's task outcomes made into what the user gets back.

A single cell's outcome becomes names (its outputs), its displays and files, or its error; a sweep's
become the results table (:func:`~batchmagic.run.sweep.results_table`), one row per task; a distributed
run's are read together and the rank that failed first is blamed. The run's record
(``runs/<run-id>/outputs.ipynb``) is written on the way. :func:`collect` returns a :class:`Collected`
that the :class:`~batchmagic.run.run.Run` takes in; nothing here moves the run's phase.
"""

from __future__ import annotations

import itertools
import json
import logging
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle

from batchmagic.backends.base import BackendStatus, TaskStatus
from batchmagic.errors import RemoteError, RunFailed
from batchmagic.package.folder import bring_back, explain_missing
from batchmagic.protocol import Layout, SharedOutputs, TaskOutcome, count_lines, decode_log_records
from batchmagic.run.names import kept_line
from batchmagic.run.ranks import blame, failure_of, last_lines
from batchmagic.run.state import LogRecord, Phase
from batchmagic.run.sweep import SweepRow, results_table
from batchmagic.storage import Store, read_at_once

if TYPE_CHECKING:
    from batchmagic.run.run import Run

__all__ = ["Collected", "OutputWarning", "collect", "exit_failure", "read_result", "write_record"]

log = logging.getLogger("batchmagic.run")


class OutputWarning(UserWarning):
    """An output of the remote cell could not be brought back."""


@dataclass
class Collected:
    """What collection brings back; None for what it did not get to (the run keeps what it has)."""

    error: BaseException | None = None
    summary: str = ""  # the panel's last line when the run is done
    records: list[LogRecord] | None = None  # the end of the log that came with the result: to show
    outputs: Any = None
    results: Any = None
    errors: dict[str, RemoteError] | None = None
    displays: list[dict[str, Any]] | None = None
    files: list[tuple[str, int]] | None = None
    deleted: list[str] | None = None
    changed: list[str] | None = None
    random_state: str | None = None  # the global generators' state the cell left (package.randomness)
    value: Any = None  # the cell's last expression's value (its Out), if it ended on one that could travel
    value_name: str | None = None  # the name that holds that value, coming back or in the notebook already
    finished: int = 0  # a sweep's tasks that had finished
    partial: bool | None = None  # the cell raised: outputs, deleted and changed are what it did before


def collect(run: Run, status: BackendStatus) -> Collected:
    """Read the finished run's outcomes (see the module docstring)."""
    if run.is_sweep:
        return collect_sweep(run, status)
    if not run.world:
        return collect_one(run, status)
    outcomes = rank_outcomes(run, status)
    error = rank_failure(run, status, outcomes)
    if error is not None:
        return Collected(error=error)
    return collect_one(run, status, read=outcomes[run.task_ids[0]])


def collect_one(run: Run, status: BackendStatus, *, read: tuple[TaskOutcome | None, str] | None = None) -> Collected:
    """A single cell (or a distributed run's rank 0): its names, displays and files, or its error. ``read``:
    its result, read already (a distributed run's rank 0's, read with the others' verdicts: once, not twice)."""
    task = status.tasks[run.task_ids[0]]
    outcome, failure = read if read is not None else read_result(run.store, run.id, task)
    if failure:
        hint = run.backend.task_log_hint(run.id, task.task_id) if outcome is None else ""
        return Collected(error=RunFailed(f"run {run.name}: {failure}" + (f"; {hint}" if hint else "")))
    assert outcome is not None
    got = Collected(displays=list(outcome.displays), records=log_tail(run.name, task.task_id, outcome))
    write_record(run, task.task_id, outcome)
    got.files = list(outcome.files)
    for pattern in outcome.unmatched:
        warnings.warn(f"--output {pattern!r} matched no file", OutputWarning, stacklevel=5)
    outcome, back = bring_back_files(run, task.task_id, outcome)
    if not outcome.ok:
        got.error = exit_failure(run.name, outcome) or remote_error(outcome, task.task_id)
        if kept_partial(outcome):  # as the notebook keeps what a cell did before it raised
            take_names(got, outcome)
            got.partial = True
            got.error.outputs = dict(got.outputs)
            if line := kept_line(got.outputs, got.deleted or [], bound=False):
                got.error.add_note(line)
        return got
    take_names(got, outcome)
    got.value, got.value_name = value_of(outcome, got.outputs), outcome.value_name
    got.summary = _join(files_line(got.files or []), back, status.note)
    return got


def value_of(outcome: TaskOutcome, outputs: dict[str, Any]) -> Any:
    """The cell's last expression's value (None without one): the name that came back holding it, or its
    own pickle. One that cannot be read here stays what the cell displayed (the magic shows that). A name
    that did not come back is a value the notebook holds already: :meth:`Run.fetch` takes it from there."""
    if outcome.value_name:
        return outputs.get(outcome.value_name)
    if not outcome.value:
        return None
    try:
        return cloudpickle.loads(outcome.value)
    except Exception:
        log.debug("the cell's value cannot be read here; its display stands for it", exc_info=True)
        return None


def kept_partial(outcome: TaskOutcome) -> bool:
    """Whether a failed outcome brings back what the cell did before it raised (or exited): the names it
    bound, changed or deleted, and the global generators' state when it drew (``np.random.rand(3)`` then a
    raise: the notebook's next draw is what it would be had the cell raised there). The runner sends it for
    a single cell only (``runner.main.keeps_partial``), never after a timeout or a cancel."""
    kept = outcome.outputs or outcome.deleted or outcome.skipped or outcome.random_state
    return outcome.phase in ("cell", "exit") and bool(kept)


def take_names(got: Collected, outcome: TaskOutcome) -> None:
    """The outcome's names into ``got``; one that cannot come back is a warning that says why."""
    got.outputs = load_outputs(outcome, lambda text: warnings.warn(text, OutputWarning, stacklevel=7))
    for name, reason in outcome.skipped.items():
        warnings.warn(f"`{name}` stays remote: {reason}", OutputWarning, stacklevel=5)
    got.deleted, got.changed = list(outcome.deleted), list(outcome.changed)
    got.random_state = outcome.random_state


def collect_sweep(run: Run, status: BackendStatus, *, stopped: str = "") -> Collected:
    """Read every task's result (in parallel) into the results table, the outputs and the errors.
    ``stopped``: the run was ended early (its budget) for this reason: the tasks that had not finished
    are failed rows that say so."""
    params = run.params or []
    errors: dict[str, RemoteError] = {}

    def one(index: int) -> SweepRow:
        tid = run.task_ids[index]
        task = status.tasks[tid]
        out = SweepRow(tid, params[index], "failed", task.exit_code, task.started, task.ended, task.node)
        if stopped and task.state != "completed":
            out.error_type, out.error_message = "RunFailed", stopped
            return out
        outcome, failure = read_result(run.store, run.id, task)
        if outcome is not None:
            out.started = outcome.started if outcome.started is not None else out.started
            out.ended = outcome.ended if outcome.ended is not None else out.ended
        if failure or outcome is None:
            out.error_type, out.error_message = "RunFailed", failure
        elif outcome.ok:
            out.state = "succeeded"
            out.outputs = load_outputs(outcome, lambda text: log.warning("task %s: %s", tid, text))
        elif (exited := exit_failure(run.name, outcome)) is not None:
            out.error_type, out.error_message = "RunFailed", str(exited)
        else:
            error = remote_error(outcome, tid)
            out.error_type, out.error_message = error.ename, error.evalue
            errors[tid] = error
        return out

    with ThreadPoolExecutor(max_workers=16) as pool:
        rows = list(pool.map(one, range(len(run.task_ids))))
    failed = sum(1 for row in rows if row.state == "failed")
    return Collected(
        outputs=[row.outputs for row in rows],
        results=results_table(rows),
        errors={tid: errors[tid] for tid in run.task_ids if tid in errors},  # in task order
        summary=_join(f"{len(rows) - failed} succeeded, {failed} failed", status.note),
        finished=sum(1 for tid in run.task_ids if status.tasks[tid].state == "completed"),
    )


def rank_outcomes(run: Run, status: BackendStatus) -> dict[str, tuple[TaskOutcome | None, str]]:
    """A distributed run's ranks' results, read in parallel: rank 0's with its names, the others' their
    verdict, error and log tail only (the runner writes no more for them: ``runner.main.sends_back``)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        read = list(pool.map(lambda tid: read_result(run.store, run.id, status.tasks[tid]), run.task_ids))
    return dict(zip(run.task_ids, read, strict=True))


def rank_failure(
    run: Run, status: BackendStatus, outcomes: dict[str, tuple[TaskOutcome | None, str]]
) -> BaseException | None:
    """A distributed run whose ranks left ``outcomes``: when one failed, that rank's error (the cell's
    exception as it raised there, or one line naming the rank and its last lines); else None."""
    failed = blame(run.task_ids, status.tasks, outcomes)
    if failed is None:
        return None
    if failed.outcome is not None:
        write_record(run, failed.task_id, failed.outcome)
    lines = last_lines(run.log_records(failed.task_id))
    return failure_of(run.name, failed, lines, lambda o: str(exit_failure(run.name, o)).split(": ", 1)[-1])


def log_tail(name: str, task_id: str, outcome: TaskOutcome) -> list[LogRecord]:
    """What the runner could not store in the log (storage away at its end) came with its result: those
    records, to show; a warning says how many lines could not be stored (and how many of them are lost)."""
    tail = decode_log_records(outcome.log_tail, task_id)[0]
    if outcome.log_errors:
        shown = count_lines(r.text for r in tail)
        kept = f"the last {shown} came with its result and are shown here and kept in its record" if shown else ""
        warnings.warn(
            f"{outcome.log_errors} lines of run {name}'s log could not be stored (storage did not "
            f"answer): " + (kept or "they are lost"),
            OutputWarning,
            stacklevel=6,
        )
    return tail


def bring_back_files(run: Run, task_id: str, outcome: TaskOutcome) -> tuple[TaskOutcome, str]:
    """The files the cell wrote, into the notebook's folder (see :mod:`batchmagic.package.folder`); the
    outcome with a missing path explained, and the panel's line."""
    if run.folder is None:
        return outcome, ""
    prefix = Layout.outputs(run.id, task_id)
    back = bring_back(
        run.folder,
        outcome.written,
        lambda relative, path: run.outbox.get_file(prefix + relative, path),
        run_id=run.id,
        limit=run.bring_back_limit,
    )
    for line in back.warnings(run.bring_back_limit):
        warnings.warn(line, OutputWarning, stacklevel=5)
    return explain_missing(outcome, run.folder.root), back.detail()


def status_from_store(store: Store, run_id: str, task_ids: list[str]) -> BackendStatus:
    """A finished run as its stored outcomes tell it, for when the backend no longer knows it (read at once)."""

    def one(tid: str) -> TaskStatus:
        try:
            outcome = TaskOutcome.from_bytes(store.get_bytes(Layout.result(run_id, tid)))
            code, started, ended = (0 if outcome.ok else 1), outcome.started, outcome.ended
        except KeyError:
            code, started, ended = None, None, None
        return TaskStatus(tid, "completed", exit_code=code, started=started, ended=ended)

    return BackendStatus(phase=Phase.RUNNING, tasks={task.task_id: task for task in read_at_once(one, task_ids)})


def read_result(store: Store, run_id: str, task: TaskStatus) -> tuple[TaskOutcome | None, str]:
    """A finished task's outcome (None when the runner wrote none), and why it failed without
    one of its own verdicts (killed, timed out, no result): empty when the outcome tells."""
    try:
        outcome = TaskOutcome.from_bytes(store.get_bytes(Layout.result(run_id, task.task_id)))
    except KeyError:
        return None, task.failure or f"the task ended without a result (exit code {task.exit_code})"
    # Killed or timed out: the runner's result only says it was terminated; the backend knows why.
    return outcome, task.failure


def write_record(run: Run, task_id: str, outcome: TaskOutcome) -> None:
    """Write ``outputs.ipynb``; a record that can't be written costs a warning in the log, not the run."""
    from batchmagic.run.ipynb import run_notebook

    try:
        tail = decode_log_records(outcome.log_tail, task_id)[0]  # what the log could not take
        records = itertools.chain(run.log_records(None if run.world else task_id), tail)
        error = None
        if not outcome.ok and outcome.error is not None:
            err = outcome.error
            error = {"type": err.type, "message": err.message, "traceback": list(err.traceback)}
        nb = run_notebook(run.source, records, error=error, run_id=run.id, name=run.name, task_id=task_id)
        run.store.put_bytes(Layout.record(run.id), json.dumps(nb, indent=1).encode())
    except Exception:
        log.warning("could not write the record of run %s", run.id, exc_info=True)


def exit_failure(name: str, outcome: TaskOutcome) -> RunFailed | None:
    """A cell that called ``sys.exit(n)`` with a non-zero ``n``, or a GPU preflight that failed (the cell
    did not run): one line, as a non-zero exit is."""
    if outcome.phase == "preflight" and outcome.error is not None:
        return RunFailed(f"run {name}: {outcome.error.message}")
    if outcome.phase != "exit" or outcome.error is None:
        return None
    return RunFailed(f"run {name}: the cell called sys.exit({outcome.error.message})")


def remote_error(outcome: TaskOutcome, task_id: str) -> RemoteError:
    """The cell's exception as it raised remotely (its traceback on the cell's lines)."""
    err = outcome.error
    if err is None:
        return RemoteError("RunFailed", f"task {task_id} failed in its {outcome.phase} without an error", [], task_id)
    return RemoteError(err.type, err.message, list(err.traceback), task_id)


def load_outputs(outcome: TaskOutcome, report: Callable[[str], None]) -> dict[str, Any]:
    """Unpickle each output of a successful outcome; one that cannot come back is reported, not fatal."""
    outputs = {}
    loaded: dict[int, tuple[Any, Exception | None]] = {}  # names pickled together share one bytes object
    for name, data in outcome.outputs.items():
        if id(data) not in loaded:
            try:
                loaded[id(data)] = (cloudpickle.loads(data), None)
            except Exception as exc:
                loaded[id(data)] = (None, exc)
        value, failed = loaded[id(data)]
        if failed is not None:
            report(f"`{name}` could not be brought back: {failed}")
        else:
            outputs[name] = value[name] if isinstance(value, SharedOutputs) else value
    return outputs


def files_line(files: list[tuple[str, int]]) -> str:
    """The panel's list of --output files: names and sizes, the first few."""
    if not files:
        return ""
    shown = ", ".join(f"{path} ({size / 1e6:,.1f} MB)" for path, size in files[:5])
    more = f" and {len(files) - 5} more" if len(files) > 5 else ""
    return f"outputs: {shown}{more}"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
