"""The handle on a submitted cell: :class:`Run` owns its whole lifecycle, from packaging to done.

:mod:`batchmagic.api` creates a Run and walks it through its first steps (:meth:`Run.step` for
packaging and uploading, :meth:`Run.launch` to start it); from then on the Run follows itself (poll,
wait, cancel), collects what the tasks produced (outputs, a sweep's table, files, displays) and
writes its record. The magics and the panel only read it."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cloudpickle

from batchmagic.backends.base import Backend, BackendStatus, TaskStatus, TaskSubmission
from batchmagic.config import Settings, redacted
from batchmagic.distributed import DEFAULT_MASTER_PORT, rank_id, rank_of
from batchmagic.errors import BatchMagicError, ConfigError, RemoteError, RunCancelled, RunFailed
from batchmagic.options import RunOptions
from batchmagic.package.folder import FolderPlan, bring_back, explain_missing
from batchmagic.protocol import Layout, LedgerSubmission, TaskOutcome, TaskSpec, count_lines, decode_log_records
from batchmagic.run.cost import CostMeter
from batchmagic.run.ledger import Ledger, LedgerRun
from batchmagic.run.monitor import TAIL_FASTEST, TAIL_SLOWEST, LogTail, Monitor
from batchmagic.run.names import rebind
from batchmagic.run.ranks import RankPrefixer, blame, failure_of, last_lines
from batchmagic.run.state import GpuTracker, LogRecord, Phase, PhaseSpan, RankRow, RunState
from batchmagic.run.sweep import TaskOutcome as SweepRow
from batchmagic.run.sweep import results_table, task_ids_for
from batchmagic.storage import BlobStore, Store, unreachable

__all__ = ["Run", "OutputWarning", "LargeUploadWarning", "UpdateCallback"]

log = logging.getLogger("batchmagic.run")

UpdateCallback = Callable[[RunState, list[LogRecord]], None]
_SAS_GRACE = timedelta(hours=1)  # SAS URLs outlive the run's timeout by this much
_POLL_ATTEMPTS = 5  # consecutive failed polls before a run is declared lost


class OutputWarning(UserWarning):
    """An output of the remote cell could not be brought back."""


class LargeUploadWarning(UserWarning):
    """The cell ships more data in its variables than is wise; --input is the better road."""


class Run:
    """A handle on one submitted cell.

    Attributes
    ----------
    id : str
        Unique run id (also the Batch job id on Azure).
    name : str
        The name given with ``--name``, or one made from the id.
    outputs : dict or list of dict
        The names the cell assigned, once it has succeeded; for a sweep, one dict per task.
    results : pandas.DataFrame
        A sweep's table: one row per task with its parameters, state, exit code, duration,
        node, scalar outputs and error.
    errors : dict
        A sweep's failed tasks: task id -> :class:`RemoteError` with the remote traceback.
    displays : list of dict
        What the cell displayed (``display(...)``, its last expression, matplotlib figures), as
        nbformat output objects in order. The whole record, with what it printed, is the notebook
        ``runs/<run-id>/outputs.ipynb`` in the run's store (:attr:`record_key`).
    """

    #: Seconds a finished run keeps trying to read its results through a storage outage before it fails.
    collect_patience = 300.0
    #: Seconds a task's runner keeps trying to store the rest of its log at its end; then its result
    #: carries the last of it (TaskSpec.log_patience).
    log_patience = 120.0

    def __init__(
        self,
        *,
        run_id: str,
        name: str,
        backend: Backend,
        vm_size: str,
        timeout: float,
        task_ids: list[str],
        params: list[dict[str, Any]] | None = None,
        namespace: MutableMapping[str, Any] | None = None,
    ) -> None:
        self.id = run_id
        self.name = name
        self.backend = backend
        self.store = backend.store
        self.outbox = backend.store.outbox(run_id)  # where its tasks write (--output files, Batch's std*.txt)
        self.vm_size = vm_size
        self.gpus = 0  # GPUs on each node (Backend.gpus): shown in the panel, checked and sampled by the runner
        self.gpu_label = ""  # what they are, "1x A100 80 GB", for the panel's title
        self.gpu_samples = GpuTracker()  # the runners' GPU samples: the panel's sparklines, the record's peaks
        self.timeout = timeout
        self.task_ids = task_ids
        self.params = params  # a sweep's parameter sets, one per task; None for a single cell
        self.created = time.time()
        # Every SAS URL of the run expires at its timeout, plus an hour's grace to collect.
        self.sas_expiry = datetime.now(UTC) + timedelta(seconds=timeout) + _SAS_GRACE
        self.outputs: Any = [] if params is not None else {}
        self.results: Any = None  # a sweep's DataFrame, one row per task
        self.errors: dict[str, RemoteError] = {}  # a sweep's failed tasks: task id -> remote error
        self.deleted: list[str] = []
        self.changed: list[str] = []  # names the cell read and changed in place (in outputs too)
        self.keep_failed = False  # keep the data of a run that fails before it starts (--keep-failed)
        self.env: dict[str, str] = {}  # --env as it may be shown: secret-looking values redacted
        self.source = ""  # the cell's text: its record (outputs.ipynb) starts with it
        self.displays: list[dict[str, Any]] = []  # what the cell displayed: nbformat output objects, in order
        self.fetched = False
        self.files: list[tuple[str, int]] = []  # --output files the cell wrote: (relative path, size)
        self.uploaded_input_bytes = 0  # bytes of local --input uploaded for this run
        self.uploaded_object_bytes = 0  # bytes of large variables uploaded for this run (0 if unchanged)
        self._namespace = namespace
        self._background: threading.Thread | None = None
        self.error: BaseException | None = None
        self.detail = ""
        self._phases: list[PhaseSpan] = []
        self._listeners: list[UpdateCallback] = []
        self._lock = threading.RLock()
        self._monitor: Monitor | None = None
        self._last_status: BackendStatus | None = None
        self._activity = False  # the last tick brought output or a new phase: poll fast again
        self._poll_errors = 0  # consecutive failed polls
        self._discard_error = ""  # why the data of a run that failed before it started could not all be removed
        self._collect_failing_since = 0.0  # monotonic time the store first failed to give the results
        self._ended_in_store = False  # attached to a run every task of which left its outcome in the store
        self._ledger: Ledger | None = None
        self.warnings: list[str] = []  # warnings of a background run (a thread must not print them)
        self._progress = ""  # the runner's latest transfer progress, shown as the detail
        self.meter: CostMeter | None = None  # what the run costs (Azure), and its --budget
        self._tasks = _TaskStates(task_ids)
        self.master_port = DEFAULT_MASTER_PORT  # a distributed run's rank 0 port (AzBatch.master_port)
        # A distributed run's ranks (its tasks are rank-0, rank-1...); 0 for any other run.
        self.world = len(task_ids) if task_ids and all(rank_of(t) is not None for t in task_ids) else 0
        self._prefixer = RankPrefixer()
        self._last_lines: dict[str, str] = {}  # a distributed run's ranks' last lines
        self._line_parts: dict[str, str] = {}  # each rank's line printed so far (its end not yet arrived)
        self.folder: FolderPlan | None = None  # the notebook's folder, mirrored in the task's (package.folder)
        self.bring_back_limit = 0  # bytes of the files the cell wrote that come back into it by themselves

    @classmethod
    def create(
        cls,
        options: RunOptions,
        settings: Settings,
        backend: Backend,
        *,
        namespace: Mapping[str, Any] | None = None,
        source: str = "",
    ) -> Run:
        """A new run (a fresh id, one task or one per sweep row), not yet started."""
        run_id = new_run_id(options.name)
        sweep = options.sweep
        if options.distributed:
            task_ids = [rank_id(k) for k in range(options.world)]
        else:
            task_ids = task_ids_for(len(sweep)) if sweep is not None else ["task-0"]
        run = cls(
            run_id=run_id,
            name=options.name or run_id,
            backend=backend,
            vm_size=options.vm_size or settings.vm_size,
            timeout=options.timeout or settings.timeout,
            task_ids=task_ids,
            params=list(sweep) if sweep is not None else None,
            namespace=namespace if isinstance(namespace, MutableMapping) else None,
        )
        run.source = source
        run.env = redacted(options.env)
        run.keep_failed = options.keep_failed
        run.master_port = settings.master_port
        return run

    def price(self, options: RunOptions, settings: Settings) -> None:
        """Price what the run will hold (Azure), once its VM size is known (a named pool's, on one).

        Raises
        ------
        ConfigError
            A ``--budget`` with no price to hold it to: before anything is uploaded or created.
        """
        if self.backend.name != "azure":
            return
        from batchmagic.backends.azure.prices import Prices

        prices = Prices.for_settings(settings.home, settings.prices)
        budget = options.budget if options.budget is not None else settings.budget
        self.meter = CostMeter(
            prices, settings.batch_region, self.vm_size, budget=budget, nodes=options.nodes,
            low_priority=options.low_priority,
        )  # fmt: skip
        self.meter.check_budget(low_priority=options.low_priority)

    @classmethod
    def attach(cls, entry: LedgerRun, backend: Backend, ledger: Ledger, *, record: bool = True) -> Run:
        """Rebuild a run another client submitted (a kernel that is gone) from the ledger's record of it
        and its store: its tasks and a sweep's parameters from their specs, its cell from its bundle.
        Following it from here reads its log from the start and collects its results as :meth:`wait`
        would have. Nothing is created.

        Raises
        ------
        ConfigError
            The run's data is not in this backend's store (another home or container), or the backend
            cannot follow runs of other clients.
        """
        submitted = entry.submitted
        store = backend.store
        prefix = Layout.run_prefix(entry.run_id)
        keys = [key for key, _size in store.list_keys(prefix)]
        specs = sorted(
            (key[len(prefix) :].split("/")[0] for key in keys if key.endswith("/spec.json")),
            key=lambda tid: (rank_of(tid) or 0, tid),  # rank-2 before rank-10
        )
        if not specs:
            raise ConfigError(
                f"run {entry.name} has no data in {store.describe()}: it was submitted with other settings "
                "(AzBatch.home, BATCHMAGIC_CONTAINER)"
            )
        params: list[dict[str, Any]] | None = None
        if submitted.sweep:
            params = []
            for task_id in specs:
                spec = TaskSpec.from_json(store.get_bytes(Layout.spec(entry.run_id, task_id)))
                params.append({k: cloudpickle.loads(bytes.fromhex(v)) for k, v in spec.params.items()})
        run = cls(
            run_id=entry.run_id,
            name=entry.name,
            backend=backend,
            vm_size=submitted.vm_size,
            timeout=submitted.submission.timeout or 24 * 3600,
            task_ids=specs,
            params=params,
        )
        run._ended_in_store = bool(specs) and all(Layout.result(entry.run_id, tid) in keys for tid in specs)
        run.created = submitted.created or submitted.time or time.time()
        run.env = dict(submitted.env)
        run.source = _cell_of(store, entry.run_id)
        submission = TaskSubmission(
            run_id=entry.run_id,
            name=entry.name,
            task_ids=list(specs),
            spec_keys={tid: Layout.spec(entry.run_id, tid) for tid in specs},
            vm_size=run.vm_size,
            **{k: v for k, v in asdict(submitted.submission).items() if k != "vm_size"},
        )
        # A status read (record=False) only watches. A follower may start what is left to start once no
        # live client holds the run (the backend's lease decides), unless the run was seen to end.
        try:
            backend.attach(submission, take_over=record and not (entry.finished or entry.released))
        except NotImplementedError as err:
            raise ConfigError(str(err)) from None
        if record:  # a status read writes nothing: the run's end is its follower's to record
            run._ledger = ledger
            _record_quietly(ledger, "attached", run.id)
        run.enter(Phase.QUEUED, "attached")
        return run

    def submission(self, options: RunOptions) -> TaskSubmission:
        """What the backend is asked to start for this run."""
        return TaskSubmission(
            run_id=self.id,
            name=self.name,
            task_ids=list(self.task_ids),
            spec_keys={tid: Layout.spec(self.id, tid) for tid in self.task_ids},
            vm_size=self.vm_size,
            timeout=self.timeout,
            image=options.image or "",
            nodes=options.nodes,
            low_priority=options.low_priority,
            retries=options.retries,
            slots_per_node=(
                options.slots_per_node
                if options.slots_per_node is not None
                else self.backend.default_slots(len(self.task_ids))
            ),
            sas_expiry=self.sas_expiry,
            distributed=options.distributed,
            procs_per_node=options.procs_per_node,
            master_port=self.master_port,
        )

    def __repr__(self) -> str:
        return f"<Run {self.name} ({self.id}) on {self.backend.name}: {self.status}>"

    # --- state ---

    @property
    def status(self) -> str:
        """The current phase: packaging, uploading, queued, running, collecting, done, failed..."""
        return self.phase.value

    @property
    def phase(self) -> Phase:
        return self._phases[-1].phase if self._phases else Phase.PACKAGING

    @property
    def done(self) -> bool:
        return self.phase.final

    @property
    def is_sweep(self) -> bool:
        return self.params is not None

    def task_states(self) -> tuple[str, ...]:
        """Each task's state, in task order: pending, running, succeeded or failed."""
        return self._tasks.states(self._last_status)

    def state(self) -> RunState:
        states = self.task_states()
        return RunState(
            run_id=self.id,
            name=self.name,
            backend=self.backend.name,
            vm_size=self.vm_size,
            phase=self.phase,
            phases=tuple(self._phases),
            started=self.created,
            detail=self.detail,
            error=str(self.error) if self.error else "",
            task_counts=self._tasks.counts(),
            task_ids=tuple(self.task_ids) if self.is_sweep else (),
            task_states=states if self.is_sweep else (),
            ranks=self._rank_rows(states) if self.world else (),
            first_start=self._tasks.first_start,
            cost=self.meter.cost() if self.meter is not None else None,
            gpus=self.gpu_samples.views(),
            gpu=self.gpu_label,
        )

    def _rank_rows(self, states: tuple[str, ...]) -> tuple[RankRow, ...]:
        tasks = self._last_status.tasks if self._last_status is not None else {}
        return tuple(
            RankRow(tid, state, tasks[tid].node if tid in tasks else "", self._last_lines.get(tid, ""))
            for tid, state in zip(self.task_ids, states, strict=True)
        )

    def subscribe(self, callback: UpdateCallback) -> None:
        """Call ``callback(state, new_log_records)`` on every change."""
        self._listeners.append(callback)

    def _notify(self, records: list[LogRecord] | None = None) -> None:
        state = self.state()
        for callback in list(self._listeners):
            callback(state, records or [])

    @property
    def ticks(self) -> int:
        """How many times the run has polled its backend."""
        return self._monitor.ticks if self._monitor is not None else 0

    # --- the lifecycle: packaging -> uploading -> queued -> ... -> done | failed | cancelled ---

    def enter(self, phase: Phase, detail: str = "") -> None:
        """Move to ``phase`` (or update the detail of the current one) and tell the listeners."""
        with self._lock:
            now = time.time()
            changed = phase != self.phase or not self._phases
            if changed:
                if self._phases:
                    last = self._phases[-1]
                    self._phases[-1] = PhaseSpan(last.phase, last.start, now)
                self._phases.append(PhaseSpan(phase, now, now if phase.final else None))
            self.detail = detail
        if changed and phase.final and self._ledger is not None:
            _record_quietly(self._ledger, "finished", self.id, phase=phase.value)
        self._notify()

    @contextmanager
    def step(self, phase: Phase, detail: str = "", *, storing: bool = False) -> Iterator[None]:
        """One of the client's steps before the run starts: entered now; an error ends the run
        ``failed`` and propagates. With ``storing``, an error of the store (not of ours) becomes one
        line (RunFailed) instead of a traceback."""
        self.enter(phase, detail)
        try:
            yield
        except BatchMagicError as err:
            self.fail(err)
            self.discard()
            raise
        except KeyboardInterrupt:  # Ctrl-C: one line, and nothing left behind
            failure: RunFailed = RunCancelled(f"run {self.name} interrupted while {phase.value}")
            self.fail(failure)
            failure.args = (f"{failure}: {self._discarded()}",)
            raise failure from None
        except BaseException as err:
            full = err if isinstance(err, OSError) and err.errno == errno.ENOSPC else None
            if full is not None and not storing:
                failure = RunFailed(f"run {self.name}: {_disk_full(full)}")
            elif not storing or not isinstance(err, Exception):
                self.fail(err)
                self.discard()
                raise
            else:
                why = _disk_full(full) if full is not None else _first_line(err)
                failure = RunFailed(f"could not store run {self.name}'s data in {self.store.describe()}: {why}")
            self.fail(failure)
            self.discard()
            raise failure from err

    def _discarded(self) -> str:
        """Discard the run's data; say in a few words whether anything was left."""
        count = self.discard()
        if self._discard_error:
            return f"some of its data may be left in {self.store.describe()} ({self._discard_error})"
        return f"its {count} uploaded files removed" if count else "nothing was left behind"

    def discard(self) -> int:
        """Remove the data of a run that failed before it started (its bundle, and its specs, which hold
        SAS URLs), unless it was submitted with ``keep_failed``; how many files went. Never raises:
        the failure that brought us here is the one to report."""
        if self.keep_failed:
            return 0
        count = 0
        try:
            count = self.store.delete_prefix(self.prefix)
            if self.outbox is not self.store:
                count += self.outbox.delete_prefix(self.prefix)
                if isinstance(self.outbox, BlobStore):
                    self.outbox.delete_container()
        except Exception as err:  # one line: the failure that brought us here is what the user needs to see
            self._discard_error = _first_line(err)
            log.warning("could not remove the data of failed run %s: %s", self.id, self._discard_error)
        return count

    def launch(self, submission: TaskSubmission, ledger: Ledger) -> None:
        """Record the run in the ledger and have the backend start it: then it is queued.

        Whatever stops the backend half-way (an error, Ctrl-C) fails the run and releases what it made.
        """
        submission.ledger_id = ledger.client_id
        try:
            ledger.record(
                "submitted",
                self.id,
                backend=self.backend.name,
                name=self.name,
                vm_size=self.vm_size,
                env=self.env,
                created=self.created,
                sweep=self.is_sweep,
                # What Run.attach needs to follow the run from another client (no secret, no URL).
                submission=LedgerSubmission(**{key: getattr(submission, key) for key in _ATTACH_FIELDS}),
            )
        except OSError as err:  # a full disk: nothing is started that no ledger knows of
            failure = RunFailed(f"run {self.name} not started: the ledger {ledger.path}: {_disk_full(err)}")
            self.fail(failure)
            failure.args = (f"{failure}; {self._discarded()}",)
            raise failure from None
        self._ledger = ledger
        try:
            self.backend.submit(submission)
        except BaseException as err:  # Ctrl-C included: a half-made job must not outlive this
            if isinstance(err, Exception):
                self.fail(err)
                self.release()
                self.discard()
                raise
            cancelled = RunCancelled(f"run {self.name} interrupted while submitting")
            self.fail(cancelled)
            self.release()
            cancelled.args = (f"{cancelled}: {self._discarded()}",)
            raise cancelled from None
        self.enter(Phase.QUEUED)

    # --- keys in the store (batchmagic.protocol.Layout) ---

    @property
    def prefix(self) -> str:
        return Layout.run_prefix(self.id)

    def log_key(self, task_id: str) -> str:
        return Layout.log(self.id, task_id)

    def result_key(self, task_id: str) -> str:
        return Layout.result(self.id, task_id)

    def outputs_prefix(self, task_id: str) -> str:
        return Layout.outputs(self.id, task_id)

    def download(self, dest: str | Path = ".", *, task_id: str | None = None) -> list[Path]:
        """Fetch the ``--output`` files the cell wrote into ``dest``; return their paths."""
        prefix = self.outputs_prefix(task_id or self.task_ids[0])
        target = Path(dest)
        paths = []
        for key, _size in self.outbox.list_keys(prefix):
            path = target / key[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.outbox.get_file(key, path)
            paths.append(path)
        return paths

    # --- the lifecycle ---

    def _monitoring(self) -> Monitor:
        if self._monitor is None:
            # A single cell's log streams; a sweep's streams only for the tasks someone follows.
            self._monitor = Monitor(self.backend, self.id, follow=() if self.is_sweep else self.task_ids)
        return self._monitor

    def follow(self, task_id: str) -> None:
        """Stream this task's log through the updates too (a sweep streams none by default)."""
        self._monitoring().follow(task_id)

    def logs(self, task_id: str | None = None) -> str:
        """Everything the cell (or one task of a sweep, one rank of a distributed run) printed so far, stdout
        and stderr in order; a distributed run's ranks merged, each line prefixed ``[rank k]``."""
        return "".join(r.text for r in self._log_records(task_id))

    def _log_records(self, task_id: str | None = None) -> Iterable[LogRecord]:
        """The task's log from the start, read a chunk at a time (a flood of output is never held whole)."""
        if task_id is None and self.world:
            merged = [r for tid in self.task_ids for r in LogTail(self.log_key(tid), tid).read_all(self.store)]
            prefixer = RankPrefixer()
            return prefixer.apply(sorted(merged, key=lambda r: r.time)) + prefixer.flush()
        tid = task_id or self.task_ids[0]
        return LogTail(self.log_key(tid), tid).read_all(self.store)

    def poll(self) -> bool:
        """One monitoring tick: update the phase, deliver new logs; True once the run is over."""
        with self._lock:
            if self.done:
                return True
            try:
                status, records = self._monitoring().tick()
            except Exception as err:
                # A network blip or a throttled call: try again on the next ticks; give up (and release
                # what the run holds) only when the backend stays unreachable.
                if self._ended_in_store:  # its job is gone (deleted), but every task left its outcome
                    self._collect_or_wait(self._status_from_store())
                    return self.done
                self._poll_errors += 1
                self._activity = False  # back off: the next tick waits longer, not less
                log.debug("poll %d failed", self._poll_errors, exc_info=True)
                if self._poll_errors < _POLL_ATTEMPTS:
                    return False
                self.fail(RunFailed(f"lost track of the run after {self._poll_errors} failed polls: {err}"))
                self.release()
                return True
            self._poll_errors = 0
            self._last_status = status
            self._tasks.fold(status)
            if self.meter is not None:
                self.meter.observe(status.holding, time.time())
                if self.meter.over_budget and not status.finished:
                    line = self.meter.budget_line(self.name)
                    self.release()  # stop spending first
                    if self.is_sweep:  # what its finished tasks made is kept: they were paid for
                        kept = self._collect_sweep(status, stopped=f"stopped by the run's --budget: {line}")
                        line += f"; the results of its {kept} finished tasks are in its results"
                    self.fail(RunFailed(line))
                    return True
            self._activity = bool(records) or status.phase != self.phase
            self._deliver(records)
            if status.error:
                self.fail(RunFailed(status.error))
                self.release()
            elif status.finished:
                self._collect_or_wait(status)
            elif status.phase != self.phase or (status.detail or self._progress) != self.detail:
                self.enter(status.phase, status.detail or self._progress)
            else:
                self._notify()
            return self.done

    def _deliver(self, records: list[LogRecord]) -> None:
        """Hand new log records to the listeners (progress becomes the detail; ranks are labelled)."""
        records = self._take_progress(records)
        if self.world:
            # What the cell displays shows once, from rank 0 (whose names come back), not once per rank.
            records = [r for r in records if r.output is None or r.task_id == self.task_ids[0]]
            self._note_last_lines(records)
            records = self._prefixer.apply(records)
        if records:
            self._notify(records)

    def _tail(self) -> float:
        """Between two polls of the backend, once the run is launched and until it ends: read its log, so that
        a line reaches the notebook within a fraction of a second rather than at the next poll (a second or
        more on Azure; the task may start before a poll says so). Returns the seconds until the next read
        (see :meth:`Monitor.next_tail`)."""
        with self._lock:
            monitor = self._monitor
            if monitor is None or self.phase.final or self.phase is Phase.COLLECTING or not monitor.tails:
                return TAIL_SLOWEST
            records = monitor.read_logs()
            if records:
                self._activity = True  # output flows: the next poll comes soon too (the cell may end)
                self._deliver(records)
            return monitor.next_tail(got=bool(records))

    def _note_last_lines(self, records: list[LogRecord]) -> None:
        """Each rank's last line, for its row in the panel."""
        for record in records:
            if record.stream not in ("stdout", "stderr"):
                continue
            # A record may hold part of a line (print writes its pieces apart): join them before choosing.
            text = self._line_parts.get(record.task_id, "") + record.text
            self._line_parts[record.task_id] = text.rsplit("\n", 1)[-1][-1000:]
            if lines := [line for line in text.splitlines() if line.strip()]:
                self._last_lines[record.task_id] = lines[-1]

    def _take_progress(self, records: list[LogRecord]) -> list[LogRecord]:
        """Turn the runner's transfer progress into the panel's detail; return the other records."""
        rest = []
        for record in records:
            if record.stream != "progress":
                rest.append(record)
                continue
            try:
                info = json.loads(record.text)
                if info.get("phase") == "gpu":
                    self.gpu_samples.add(record.task_id, list(info["gpus"]))
                    continue
                self._progress = (
                    f"{info['phase']}: {info['bytes'] / 1e6:,.0f} of {info['total'] / 1e6:,.0f} MB"
                    f" at {info['mb_per_s']:,.0f} MB/s"
                )
            except (ValueError, KeyError, TypeError):
                log.debug("unreadable progress record %r", record.text)
        return rest

    def wait(self, timeout: float | None = None, *, between_polls: Callable[[], None] | None = None) -> Any:
        """Block until the run ends, polling on this thread; return its outputs (a sweep: its results).

        Ctrl-C cancels the run. ``between_polls`` is called every few hundredths of a second while the loop
        waits for its next poll: the magic passes one that lets the kernel handle widget messages, so the
        panel's Cancel button and task picker work while the cell blocks.

        Raises
        ------
        RemoteError
            The cell raised remotely.
        RunFailed
            The run ended without a result (killed, timed out, infrastructure).
        TimeoutError
            ``timeout`` seconds passed first; the run goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.poll():
                pause = self._pause()
                if deadline is not None and time.monotonic() + pause > deadline:
                    raise TimeoutError(f"run {self.name} is still {self.status} after {timeout}s")
                _pause(pause, between_polls, until=lambda: self.done, tail=self._tail)
        except KeyboardInterrupt:
            self.cancel()
            raise RunCancelled(f"run {self.name} cancelled by Ctrl-C") from None
        return self.result()

    def task_error(self, task_id: str) -> str:
        """A finished, failed task's traceback (or why it ended without a result); empty otherwise."""
        status = self._last_status
        task = status.tasks.get(task_id) if status is not None else None
        if task is None or task.state != "completed":
            return ""
        outcome, failure = self._read_result(task)
        if failure:
            return failure + "\n"
        if outcome is None or outcome.ok or outcome.error is None:
            return ""
        return "".join(outcome.error.traceback)

    def result(self) -> Any:
        """The outputs of a finished run (a sweep: its results DataFrame); raise its error if it failed."""
        if not self.done:
            raise RuntimeError(f"run {self.name} is still {self.status}: call wait() first")
        if self.error is not None:
            raise self.error
        return self.results if self.is_sweep else self.outputs

    def bind(self, namespace: MutableMapping[str, Any]) -> None:
        """Where :meth:`fetch` brings the names by default (an attached run has no namespace of its own)."""
        self._namespace = namespace

    def fetch(self, namespace: MutableMapping[str, Any] | None = None) -> list[str]:
        """Bring a finished single-cell run's names into ``namespace`` (default: the one it was submitted
        from); return the names. Background runs never write into a notebook by themselves."""
        if self.is_sweep:
            raise ConfigError(f"run {self.name} is a sweep: its results are in run.results, not in names")
        outputs = self.result()
        target = namespace if namespace is not None else self._namespace
        if target is None:
            raise ConfigError("fetch needs a namespace: run.fetch(globals())")
        for note in rebind(target, outputs, deleted=self.deleted, changed=self.changed):
            warnings.warn(note, OutputWarning, stacklevel=2)
        self.fetched = True
        return list(outputs)

    def watch_in_background(self) -> threading.Thread:
        """Poll from a daemon thread until the run ends; listeners are then called from that thread."""

        def loop() -> None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    while not self.poll():
                        _pause(self._pause(), None, until=lambda: self.done, tail=self._tail)
                except Exception as err:  # never a silent dead thread: the run says what happened
                    log.debug("background monitor of %s failed", self.id, exc_info=True)
                    self.fail(RunFailed(f"monitoring run {self.name} failed: {err}"))
                    self.release()
                self.warnings.extend(str(w.message) for w in caught)

        if self._background is None:
            self._background = threading.Thread(target=loop, name=f"batchmagic-{self.id}", daemon=True)
            self._background.start()
        return self._background

    def _pause(self) -> float:
        """Seconds until the next poll: fast while things happen, backing off while they don't."""
        monitor = self._monitor
        return monitor.next_interval(active=self._activity, phase=self.phase) if monitor else 0.05

    def cancel(self) -> None:
        """Stop the run. Idempotent."""
        with self._lock:
            if self.done:
                return
            self.backend.cancel(self.id)
            self.mark_cancelled()

    def mark_cancelled(self) -> None:
        """End the run ``cancelled`` (its backend already stopped); nothing if it has ended."""
        with self._lock:
            if not self.done:
                self.error = RunCancelled(f"run {self.name} was cancelled")
                self.enter(Phase.CANCELLED)

    def release(self) -> list[str]:
        """Free what the run holds after a failure, without letting a second error hide the first;
        return a line per thing removed."""
        try:
            removed = self.backend.release(self.id)
        except Exception:
            log.warning("could not release run %s; %%azbatch_teardown retries", self.id, exc_info=True)
            return []
        if removed and self._ledger is not None:
            _record_quietly(self._ledger, "released", self.id, removed=removed)
        return removed

    def teardown(self, *, blobs: bool = False) -> list[str]:
        """Stop the run and free what it holds (and with ``blobs`` its run data); a line per thing
        removed. Raises what the backend raises, so a teardown can say which run it could not end."""
        removed = self.backend.release(self.id)
        if removed and self._ledger is not None:
            _record_quietly(self._ledger, "released", self.id, removed=removed)
        self.mark_cancelled()
        if blobs:
            count = self.store.delete_prefix(self.prefix)
            if self.outbox is not self.store:
                count += self.outbox.delete_prefix(self.prefix)
                if isinstance(self.outbox, BlobStore):
                    self.outbox.delete_container()
            if count:
                removed.append(f"{count} files of run data of {self.name}")
        return removed

    def fail(self, error: BaseException) -> None:
        """End the run ``failed`` with ``error`` (what :meth:`result` raises)."""
        self.error = error
        self.enter(Phase.FAILED, str(error))

    def _status_from_store(self) -> BackendStatus:
        """A finished run as its stored outcomes tell it, for when the backend no longer knows it."""
        tasks = {}
        for tid in self.task_ids:
            try:
                outcome = TaskOutcome.from_bytes(self.store.get_bytes(self.result_key(tid)))
                code, started, ended = (0 if outcome.ok else 1), outcome.started, outcome.ended
            except KeyError:
                code, started, ended = None, None, None
            tasks[tid] = TaskStatus(tid, "completed", exit_code=code, started=started, ended=ended)
        return BackendStatus(phase=Phase.RUNNING, tasks=tasks)

    def _collect_or_wait(self, status: BackendStatus) -> None:
        """Collect; a store that does not answer (an outage) is tried again on the next ticks for up to
        :attr:`collect_patience` seconds, then the run fails with one line: never stuck in collecting."""
        try:
            self._collect(status)
        except Exception as err:
            if self.done or not unreachable(err):
                raise
            now = time.monotonic()
            self._collect_failing_since = self._collect_failing_since or now
            if now - self._collect_failing_since < self.collect_patience:
                self._activity = False  # back off while storage is away
                self.enter(Phase.COLLECTING, f"storage does not answer ({_first_line(err)}): trying again")
                return
            self.fail(
                RunFailed(
                    f"run {self.name} ended, but its result could not be read from {self.store.describe()} "
                    f"for {self.collect_patience:.0f} s: {_first_line(err)}"
                )
            )
            self.release()

    def _collect(self, status: BackendStatus) -> None:
        self.enter(Phase.COLLECTING)
        # The last log bytes may have landed after the previous tick (read a chunk at a time).
        if self._monitor is not None:
            while records := self._monitor.read_logs():
                self._deliver(records)
        if self.world and (unfinished := self._prefixer.flush()):
            self._notify(unfinished)  # the ranks' last lines that had no newline
        if self.is_sweep:
            self._collect_sweep(status)
            return
        if self.world and self._rank_failed(status):
            return
        task = status.tasks[self.task_ids[0]]
        outcome, failure = self._read_result(task)
        if failure:
            hint = self.backend.task_log_hint(self.id, task.task_id) if outcome is None else ""
            self.fail(RunFailed(f"run {self.name}: {failure}" + (f"; {hint}" if hint else "")))
            return
        assert outcome is not None
        self.displays = list(outcome.displays)
        self._deliver_log_tail(task.task_id, outcome)
        self._write_record(task.task_id, outcome)
        self._note_files(outcome)
        outcome, back = self._bring_back(task.task_id, outcome)
        if not outcome.ok:
            self.fail(_exit_failure(self.name, outcome) or _remote_error(outcome, task.task_id))
            return
        outputs = _load_outputs(outcome, lambda text: warnings.warn(text, OutputWarning, stacklevel=4))
        for name, reason in outcome.skipped.items():
            warnings.warn(f"`{name}` stays remote: {reason}", OutputWarning, stacklevel=2)
        self.outputs = outputs
        self.deleted = list(outcome.deleted)
        self.changed = list(outcome.changed)
        self.enter(Phase.DONE, _join(_files_line(self.files), back, status.note))

    def _bring_back(self, task_id: str, outcome: TaskOutcome) -> tuple[TaskOutcome, str]:
        """The files the cell wrote, into the notebook's folder (see :mod:`batchmagic.package.folder`); the
        outcome with a missing path explained, and the panel's line."""
        if self.folder is None:
            return outcome, ""
        prefix = self.outputs_prefix(task_id)
        back = bring_back(
            self.folder,
            outcome.written,
            lambda relative, path: self.outbox.get_file(prefix + relative, path),
            run_id=self.id,
            limit=self.bring_back_limit,
        )
        for line in back.warnings(self.bring_back_limit):
            warnings.warn(line, OutputWarning, stacklevel=4)
        return explain_missing(outcome, self.folder.root), back.detail()

    @property
    def record_key(self) -> str:
        """Where the run's record lives: a notebook of the cell and all it printed and displayed."""
        return Layout.record(self.id)

    def _deliver_log_tail(self, task_id: str, outcome: TaskOutcome) -> None:
        """What the runner could not store in the log (storage away at its end) came with its result: show
        it, and say how many lines could not be stored (and how many of them are lost)."""
        tail = decode_log_records(outcome.log_tail, task_id)[0]
        if tail:
            self._notify(tail)
        if outcome.log_errors:
            shown = count_lines(r.text for r in tail)
            kept = f"the last {shown} came with its result and are shown here and kept in its record" if shown else ""
            warnings.warn(
                f"{outcome.log_errors} lines of run {self.name}'s log could not be stored (storage did not "
                f"answer): " + (kept or "they are lost"),
                OutputWarning,
                stacklevel=3,
            )

    def _write_record(self, task_id: str, outcome: TaskOutcome) -> None:
        """Write ``outputs.ipynb``; a record that can't be written costs a warning in the log, not the run."""
        from batchmagic.run.ipynb import run_notebook

        try:
            tail = decode_log_records(outcome.log_tail, task_id)[0]  # what the log could not take
            records = itertools.chain(self._log_records(None if self.world else task_id), tail)
            error = None
            if not outcome.ok and outcome.error is not None:
                err = outcome.error
                error = {"type": err.type, "message": err.message, "traceback": list(err.traceback)}
            nb = run_notebook(self.source, records, error=error, run_id=self.id, name=self.name, task_id=task_id)
            self.store.put_bytes(self.record_key, json.dumps(nb, indent=1).encode())
        except Exception:
            log.warning("could not write the record of run %s", self.id, exc_info=True)

    def _rank_failed(self, status: BackendStatus) -> bool:
        """A distributed run: read every rank's outcome; when one failed, fail the run with that rank's
        error (the cell's exception as it raised there, or one line naming the rank and its last lines)."""
        with ThreadPoolExecutor(max_workers=16) as pool:
            read = list(pool.map(lambda tid: self._read_result(status.tasks[tid]), self.task_ids))
        outcomes = dict(zip(self.task_ids, read, strict=True))
        failed = blame(self.task_ids, status.tasks, outcomes)
        if failed is None:
            return False
        if failed.outcome is not None:
            self._write_record(failed.task_id, failed.outcome)
        lines = last_lines(self._log_records(failed.task_id))
        self.fail(failure_of(self.name, failed, lines, lambda o: str(_exit_failure(self.name, o)).split(": ", 1)[-1]))
        return True

    def _note_files(self, outcome: TaskOutcome) -> None:
        self.files = list(outcome.files)
        for pattern in outcome.unmatched:
            warnings.warn(f"--output {pattern!r} matched no file", OutputWarning, stacklevel=3)

    def _read_result(self, task: TaskStatus) -> tuple[TaskOutcome | None, str]:
        """A finished task's outcome (None when the runner wrote none), and why it failed without
        one of its own verdicts (killed, timed out, no result): empty when the outcome tells."""
        try:
            outcome = TaskOutcome.from_bytes(self.store.get_bytes(self.result_key(task.task_id)))
        except KeyError:
            return None, task.failure or f"the task ended without a result (exit code {task.exit_code})"
        # Killed or timed out: the runner's result only says it was terminated; the backend knows why.
        return outcome, task.failure

    def _collect_sweep(self, status: BackendStatus, *, stopped: str = "") -> int:
        """Read every task's result (in parallel) into ``results``, ``outputs`` and ``errors``; how many
        tasks had finished. ``stopped``: the run was ended early (its budget) for this reason: the
        tasks that had not finished are failed rows that say so, and the run's phase is the caller's."""
        params = self.params or []

        def one(index: int) -> SweepRow:
            tid = self.task_ids[index]
            task = status.tasks[tid]
            out = SweepRow(tid, params[index], "failed", task.exit_code, task.started, task.ended, task.node)
            if stopped and task.state != "completed":
                out.error_type, out.error_message = "RunFailed", stopped
                return out
            outcome, failure = self._read_result(task)
            if outcome is not None:
                out.started = outcome.started if outcome.started is not None else out.started
                out.ended = outcome.ended if outcome.ended is not None else out.ended
            if failure or outcome is None:
                out.error_type, out.error_message = "RunFailed", failure
            elif outcome.ok:
                out.state = "succeeded"
                out.outputs = _load_outputs(outcome, lambda text: log.warning("task %s: %s", tid, text))
            elif (exited := _exit_failure(self.name, outcome)) is not None:
                out.error_type, out.error_message = "RunFailed", str(exited)
            else:
                error = _remote_error(outcome, tid)
                out.error_type, out.error_message = error.ename, error.evalue
                self.errors[tid] = error
            return out

        with ThreadPoolExecutor(max_workers=16) as pool:
            rows = list(pool.map(one, range(len(self.task_ids))))
        self.errors = {tid: self.errors[tid] for tid in self.task_ids if tid in self.errors}  # in task order
        self.outputs = [row.outputs for row in rows]
        self.results = results_table(rows)
        finished = sum(1 for tid in self.task_ids if status.tasks[tid].state == "completed")
        if stopped:
            return finished
        failed = sum(1 for row in rows if row.state == "failed")
        self.enter(Phase.DONE, _join(f"{len(rows) - failed} succeeded, {failed} failed", status.note))
        return finished


def _pause(
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


class _TaskStates:
    """Each task's state for the panel, kept up to date by what changed: a poll that names its changed
    tasks (``BackendStatus.changed``) costs what changed, not how many tasks there are."""

    def __init__(self, task_ids: list[str]) -> None:
        self.task_ids = task_ids
        self.index = {tid: i for i, tid in enumerate(task_ids)}
        self.values = ["pending"] * len(task_ids)
        self.tally: dict[str, int] = {"pending": len(task_ids)}
        self.first_start: float | None = None
        self.seen: BackendStatus | None = None  # the status folded in last

    def states(self, status: BackendStatus | None) -> tuple[str, ...]:
        if status is not None and status is not self.seen:
            self.fold(status)
        return tuple(self.values)

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in self.tally.items() if v}

    def fold(self, status: BackendStatus) -> None:
        changed = status.changed if self.seen is not None else None
        self.seen = status
        ids = self.task_ids if changed is None else [tid for tid in changed if tid in self.index]
        for tid in ids:
            task = status.tasks.get(tid)
            if task is None:
                continue
            new = _task_state(task)
            i = self.index[tid]
            old = self.values[i]
            if new != old:
                self.values[i] = new
                self.tally[old] -= 1
                self.tally[new] = self.tally.get(new, 0) + 1
            if task.started and (self.first_start is None or task.started < self.first_start):
                self.first_start = task.started


def _task_state(task: TaskStatus) -> str:
    if task.state != "completed":
        return task.state
    return "succeeded" if task.exit_code == 0 and not task.failure else "failed"


#: The TaskSubmission fields the ledger keeps, for Run.attach.
_ATTACH_FIELDS = tuple(f.name for f in fields(LedgerSubmission))


def _cell_of(store: Store, run_id: str) -> str:
    """The cell's source, from the run's bundle ("" when it cannot be read: the record then lacks it)."""
    import tempfile

    from batchmagic.package.bundle import BundleReader

    try:
        with tempfile.TemporaryDirectory(prefix="batchmagic-attach-") as tmp:
            path = Path(tmp) / "bundle"
            store.get_file(Layout.bundle(run_id), path)
            reader = BundleReader(path)
            try:
                return reader.cell()
            finally:
                reader.close()
    except Exception:
        log.debug("could not read the cell of run %s", run_id, exc_info=True)
        return ""


def new_run_id(name: str | None) -> str:
    """``<name>-<UTC time>-<random>``: unique, sortable, and a valid Batch job id."""
    stem = re.sub(r"[^a-z0-9-]+", "-", (name or "run").lower()).strip("-")[:32] or "run"
    return f"{stem}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def _exit_failure(name: str, outcome: TaskOutcome) -> RunFailed | None:
    """A cell that called ``sys.exit(n)`` with a non-zero ``n``, or a GPU preflight that failed (the cell
    did not run): one line, as a non-zero exit is."""
    if outcome.phase == "preflight" and outcome.error is not None:
        return RunFailed(f"run {name}: {outcome.error.message}")
    if outcome.phase != "exit" or outcome.error is None:
        return None
    return RunFailed(f"run {name}: the cell called sys.exit({outcome.error.message})")


def _remote_error(outcome: TaskOutcome, task_id: str) -> RemoteError:
    err = outcome.error
    if err is None:
        return RemoteError("RunFailed", f"task {task_id} failed in its {outcome.phase} without an error", [], task_id)
    return RemoteError(err.type, err.message, list(err.traceback), task_id)


def _load_outputs(outcome: TaskOutcome, report: Callable[[str], None]) -> dict[str, Any]:
    """Unpickle each output of a successful outcome; one that cannot come back is reported, not fatal."""
    outputs = {}
    for name, data in outcome.outputs.items():
        try:
            outputs[name] = cloudpickle.loads(data)
        except Exception as exc:
            report(f"`{name}` could not be brought back: {exc}")
    return outputs


def _record_quietly(ledger: Ledger, event: str, run_id: str, **fields: Any) -> None:
    """Append an event that only keeps the ledger current (attached, finished, released): a full disk
    costs one warning line, not the attach, the run or the teardown."""
    try:
        ledger.record(event, run_id, **fields)
    except OSError as err:
        log.warning("could not record that run %s %s in the ledger %s: %s", run_id, event, ledger.path, err.strerror)


def _disk_full(err: OSError) -> str:
    """One line for a full disk (or another failed local write): where, and what to do."""
    where = f" ({err.filename})" if err.filename else ""
    what = "no space left on the disk" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return f"{what}{where}: free some space (batchmagic store --prune) or point AzBatch.home elsewhere"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _files_line(files: list[tuple[str, int]]) -> str:
    """The panel's list of --output files: names and sizes, the first few."""
    if not files:
        return ""
    shown = ", ".join(f"{path} ({size / 1e6:,.1f} MB)" for path, size in files[:5])
    more = f" and {len(files) - 5} more" if len(files) > 5 else ""
    return f"outputs: {shown}{more}"
