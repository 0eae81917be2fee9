"""The handle on a submitted cell: :class:`Run`, what the user holds from packaging to done.

:mod:`batchmagic.api` creates a Run and walks it through its first steps (:meth:`Run.step` for
packaging and uploading, :meth:`Run.launch` to start it); from then on the Run follows itself (poll,
wait, cancel). The poll loop is :mod:`~batchmagic.run.driver`'s (retries, budget, progress), what the
tasks produced is read by :mod:`~batchmagic.run.collect` (names, a sweep's table, files, displays, the
record), and a run of another client is rebuilt from the ledger by :mod:`~batchmagic.run.attach`.
The magics and the panel only read it."""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from batchmagic.backends.base import Backend, BackendStatus, TaskSubmission, format_duration
from batchmagic.config import Settings, redacted
from batchmagic.distributed import DEFAULT_MASTER_PORT, rank_id, rank_of
from batchmagic.errors import BatchMagicError, ConfigError, RemoteError, RunCancelled, RunFailed
from batchmagic.options import RunOptions
from batchmagic.package.folder import FolderPlan
from batchmagic.package.randomness import apply_state
from batchmagic.protocol import Layout
from batchmagic.run.attach import ledger_submission, rebuild
from batchmagic.run.collect import Collected, OutputWarning, collect, collect_sweep, read_result
from batchmagic.run.cost import CostMeter
from batchmagic.run.driver import Driver, Tick, sleep_between, thread_warnings
from batchmagic.run.ledger import Ledger, LedgerRun
from batchmagic.run.monitor import LogTail
from batchmagic.run.names import kept_line, rebind
from batchmagic.run.ranks import RankPrefixer, rank_row_state
from batchmagic.run.state import GpuTracker, LogRecord, Phase, PhaseSpan, RankRow, RunState
from batchmagic.run.sweep import task_ids_for
from batchmagic.storage import BlobStore, read_at_once, unreachable

__all__ = ["Run", "OutputWarning", "LargeUploadWarning", "UpdateCallback"]

log = logging.getLogger("batchmagic.run")

UpdateCallback = Callable[[RunState, list[LogRecord]], None]
_SAS_GRACE = timedelta(hours=1)  # SAS URLs outlive the run's timeout by this much


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
        The names the cell assigned, once it has succeeded; for a sweep, one dict per task. When the
        cell raised (:attr:`partial`), what it assigned and changed before the raise.
    partial : bool
        The cell raised (or called ``sys.exit(n)``) after it did some work: :attr:`outputs`,
        ``deleted`` and ``changed`` are what it did before, as the notebook would keep them, and
        :meth:`fetch` binds them and then raises the cell's error. Never for a sweep, a distributed
        run, a timeout or a cancel: those keep nothing.
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
        self.random_state = ""  # the global generators as the cell left them, if it drew: set by fetch
        self.partial = False  # the cell raised: outputs are what it did before the raise
        self.value: Any = None  # the cell's last expression's value (the notebook's Out), if it ended on one
        self.value_name = ""  # the name holding that value: one the cell left alone is fetch's to take
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
        self._lock = threading.RLock()  # the run's state: its phase, error, outputs (held briefly)
        self._polling = threading.Lock()  # one poll or log read at a time (the driver's state)
        # Set, without the lock, by a cancel or teardown under way: a poll acts on nothing it saw from then
        # on (the ranks or tasks they end), and one under way does not hold them up.
        self._stopping = threading.Event()
        self._discard_error = ""  # why the data of a run that failed before it started could not all be removed
        self._collect_failing_since = 0.0  # monotonic time the store first failed to give the results
        self._ledger: Ledger | None = None
        self.warnings: list[str] = []  # warnings of a background run (a thread must not print them)
        self.meter: CostMeter | None = None  # what the run costs (Azure), and its --budget
        self.master_port = DEFAULT_MASTER_PORT  # a distributed run's rank 0 port (AzBatch.master_port)
        # A distributed run's ranks (its tasks are rank-0, rank-1...); 0 for any other run.
        self.world = len(task_ids) if task_ids and all(rank_of(t) is not None for t in task_ids) else 0
        self._driver = Driver(
            backend, run_id, task_ids, sweep=params is not None, world=self.world, gpus=self.gpu_samples
        )
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
        found = rebuild(entry, backend.store)
        run = cls(
            run_id=entry.run_id,
            name=entry.name,
            backend=backend,
            vm_size=found.vm_size,
            timeout=found.timeout,
            task_ids=found.task_ids,
            params=found.params,
        )
        run.created, run.env, run.source = found.created, found.env, found.source
        run._driver.ended_in_store = found.ended_in_store
        # A status read (record=False) only watches. A follower may start what is left to start once no
        # live client holds the run (the backend's lease decides), unless the run was seen to end.
        try:
            backend.attach(found.submission, take_over=record and not (entry.finished or entry.released))
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
        return self._driver.tasks.states(self._driver.last_status)

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
            task_counts=self._driver.tasks.counts(),
            task_ids=tuple(self.task_ids) if self.is_sweep else (),
            task_states=states if self.is_sweep else (),
            ranks=self._rank_rows(states) if self.world else (),
            first_start=self._driver.tasks.first_start,
            cost=self.meter.cost() if self.meter is not None else None,
            gpus=self.gpu_samples.views(),
            gpu=self.gpu_label,
        )

    def _rank_rows(self, states: tuple[str, ...]) -> tuple[RankRow, ...]:
        last = self._driver.last_status
        tasks = last.tasks if last is not None else {}
        lines = self._driver.last_lines
        return tuple(
            RankRow(
                tid, rank_row_state(state, tasks.get(tid)), tasks[tid].node if tid in tasks else "", lines.get(tid, "")
            )
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
        return self._driver.ticks

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
                submission=ledger_submission(submission),
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

    def follow(self, task_id: str) -> None:
        """Stream this task's log through the updates too (a sweep streams none by default)."""
        self._driver.monitoring().follow(task_id)

    def logs(self, task_id: str | None = None) -> str:
        """Everything the cell (or one task of a sweep, one rank of a distributed run) printed so far, stdout
        and stderr in order; a distributed run's ranks merged, each line prefixed ``[rank k]``.

        Raises
        ------
        RunFailed
            Storage did not answer (an outage): one line; call it again later.
        """
        try:
            return "".join(r.text for r in self.log_records(task_id))
        except Exception as err:
            if not unreachable(err):
                raise
            raise RunFailed(
                f"could not read run {self.name}'s log: {self.store.describe()} does not answer "
                f"({_first_line(err)}); try again once it does (batchmagic logs {self.id} waits for it)"
            ) from None

    def log_records(self, task_id: str | None = None) -> Iterable[LogRecord]:
        """The task's log from the start, read a chunk at a time (a flood of output is never held whole)."""
        if task_id is None and self.world:
            logs = read_at_once(lambda tid: list(LogTail(self.log_key(tid), tid).read_all(self.store)), self.task_ids)
            merged = [r for got in logs for r in got]
            prefixer = RankPrefixer()
            return prefixer.apply(sorted(merged, key=lambda r: r.time)) + prefixer.flush()
        tid = task_id or self.task_ids[0]
        return LogTail(self.log_key(tid), tid).read_all(self.store)

    def poll(self) -> bool:
        """One monitoring tick: update the phase, deliver new logs; True once the run is over.

        The backend is asked without the run's lock (an unreachable Batch keeps a tick for minutes), so
        a cancel or teardown never waits behind one; what a tick saw is acted on only if no cancel or
        teardown began meanwhile."""
        with self._polling:
            if self.done or self._stopping.is_set():
                return self.done
            tick = self._driver.tick(self.phase, self.name, self.meter, stopping=self._stopping)
            with self._lock:
                if self.done or self._stopping.is_set() or tick is None:  # None: a failed poll, tried again
                    return self.done
                lost = self._act(tick)
            if lost:
                self.release()  # outside the lock: Batch may be slow to answer
            return self.done

    def _act(self, tick: Tick) -> bool:
        """Move the run on from what a tick saw; True when it failed and what it holds must go."""
        if tick.records:
            self._notify(tick.records)
        status = tick.status
        if tick.budget and status is not None:
            self._stop_for_budget(status, tick.error)
        elif tick.error or status is None:
            # Lost, over budget, or ended by the backend: release what the run holds.
            self.fail(RunFailed(tick.error))
            return True
        elif status.finished:
            self._collect_or_wait(status)
        elif status.phase != self.phase or tick.detail != self.detail:
            self.enter(status.phase, tick.detail)
        else:
            self._notify()
        return False

    def _stop_for_budget(self, status: BackendStatus, line: str) -> None:
        """The run's --budget is spent: stop spending first; a sweep keeps what its finished tasks made
        (they were paid for), the others say the budget stopped them."""
        self.release()
        if self.is_sweep:
            got = collect_sweep(self, status, stopped=f"stopped by the run's --budget: {line}")
            self.outputs, self.results, self.errors = got.outputs, got.results, got.errors or {}
            line += f"; the results of its {got.finished} finished tasks are in its results"
        self.fail(RunFailed(line))

    def _tail(self) -> float:
        """Between two polls: read the run's log and deliver what came (see :meth:`Driver.tail`); the
        seconds until the next read."""
        with self._polling:
            records, wait = self._driver.tail(self.phase)
            if records:
                with self._lock:
                    self._notify(records)
            return wait

    def wait(self, timeout: float | None = None, *, between_polls: Callable[[], None] | None = None) -> Any:
        """Block until the run ends, polling on this thread; return its outputs (a sweep: its results).

        Ctrl-C cancels the run. ``between_polls`` is called every few hundredths of a second while the loop
        waits for its next poll: the magic passes one that lets the kernel handle widget messages, so the
        panel's Cancel button and task picker work while the cell blocks.

        Raises
        ------
        RemoteError
            The cell raised remotely. Its ``outputs`` hold what the cell assigned and changed before
            the raise (:attr:`partial`); :meth:`fetch` binds them. ``wait`` binds nothing.
        RunFailed
            The run ended without a result (killed, timed out, infrastructure), or the cell called
            ``sys.exit(n)`` (then its ``outputs`` too hold what it did before).
        TimeoutError
            ``timeout`` seconds passed first; the run goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.poll():
                pause = self._driver.pause(self.phase)
                if deadline is not None and time.monotonic() + pause > deadline:
                    raise TimeoutError(f"run {self.name} is still {self.status} after {timeout}s")
                sleep_between(pause, between_polls, until=lambda: self.done, tail=self._tail)
        except KeyboardInterrupt:
            self.cancel()
            raise RunCancelled(f"run {self.name} cancelled by Ctrl-C") from None
        return self.result()

    def task_error(self, task_id: str) -> str:
        """A finished, failed task's traceback (or why it ended without a result); empty otherwise."""
        status = self._driver.last_status
        task = status.tasks.get(task_id) if status is not None else None
        if task is None or task.state != "completed":
            return ""
        outcome, failure = read_result(self.store, self.id, task)
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
        from); return the names. Background runs never write into a notebook by themselves.

        A run whose cell raised (:attr:`partial`) leaves what the notebook would have: the names it
        assigned, changed and deleted before the raise are bound, then its error is raised, with a
        line that says which names were kept.
        """
        if self.is_sweep:
            raise ConfigError(f"run {self.name} is a sweep: its results are in run.results, not in names")
        outputs = self.outputs if self.partial else self.result()
        target = namespace if namespace is not None else self._namespace
        if target is None:
            raise ConfigError("fetch needs a namespace: run.fetch(globals())")
        for note in rebind(target, outputs, deleted=self.deleted, changed=self.changed):
            warnings.warn(note, OutputWarning, stacklevel=2)
        apply_state(self.random_state)  # np.random/random continue where the cell left them, as here
        if self.value is None and self.value_name in target:  # `df` on the last line, unchanged: ours
            self.value = target[self.value_name]
        self.fetched = True
        if self.partial and self.error is not None:
            line = kept_line(outputs, self.deleted, bound=True)
            self.error.__notes__ = [line] if line else []  # now bound: say so
            raise self.error
        return list(outputs)

    def watch_in_background(self) -> threading.Thread:
        """Poll from a daemon thread until the run ends; listeners are then called from that thread."""

        def loop() -> None:
            with thread_warnings(self.warnings):  # the run's own: a thread must not print them
                try:
                    while not self.poll():
                        pause = self._driver.pause(self.phase)
                        sleep_between(pause, None, until=lambda: self.done, tail=self._tail)
                except Exception as err:  # never a silent dead thread: the run says what happened
                    log.debug("background monitor of %s failed", self.id, exc_info=True)
                    with self._lock:
                        if self.done:  # cancelled or torn down meanwhile: that is how it ended
                            return
                        self.fail(RunFailed(f"monitoring run {self.name} failed: {err}"))
                    self.release()

        if self._background is None:
            self._background = threading.Thread(target=loop, name=f"batchmagic-{self.id}", daemon=True)
            self._background.start()
        return self._background

    def cancel(self) -> None:
        """Stop the run. Idempotent.

        A user waits on it: like :meth:`teardown`, it gives up on an unreachable service within the
        backend's brief patience (:meth:`Backend.waited_on`), not the monitor's minute of retries.

        Raises
        ------
        RunFailed
            The backend could not stop the run (Batch unreachable), in one line: nothing was stopped, the
            run goes on being followed and stays in the ledger, and its ``--timeout`` (the job's lifetime)
            or ``%azbatch_teardown`` once the service answers ends it.
        """
        if self.done:
            return
        try:
            with self.backend.waited_on():
                self._stop(lambda: self.backend.cancel(self.id))
        except RunFailed as err:
            raise RunFailed(
                f"run {self.name} is not cancelled: {err}. It runs on, still followed and in the ledger, until its "
                f"--timeout of {format_duration(self.timeout)} (its job's lifetime), or %azbatch_teardown once "
                "the service answers"
            ) from err

    def _stop(self, end: Callable[[], list[str] | None]) -> list[str]:
        """End the run with ``end`` (the backend's cancel or release), then mark it ``cancelled``; what
        ``end`` returns. The poll in flight is not waited for: :attr:`_stopping` tells it (and any later
        one) to act on nothing it saw, so it cannot fail the run for the ranks or tasks ``end`` stops.
        When ``end`` raises (Batch unreachable), the run is followed again as before, and it raises."""
        self._stopping.set()
        try:
            done = end()
        except BaseException:
            self._stopping.clear()
            raise
        self.mark_cancelled()
        return done or []

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
        removed. Raises what the backend raises, so a teardown can say which run it could not end.

        As :meth:`cancel`, it does not wait for a monitor's poll in flight (see :meth:`_stop`): with
        Batch unreachable, it says so within the backend's brief patience (:meth:`Backend.waited_on`)."""
        with self.backend.waited_on():
            removed = self._stop(lambda: self.backend.release(self.id))
        if removed and self._ledger is not None:
            _record_quietly(self._ledger, "released", self.id, removed=removed)
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
                self._driver.back_off()  # while storage is away
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
        for records in self._driver.final_logs():
            self._notify(records)
        self._take(collect(self, status))

    def _take(self, got: Collected) -> None:
        """Keep what collection brought back; end the run done, or failed with its error."""
        if got.records:
            self._notify(got.records)
        names = ("outputs", "results", "errors", "displays", "files", "deleted", "changed", "random_state", "partial")
        for name in (*names, "value", "value_name"):
            value = getattr(got, name)
            if value is not None:
                setattr(self, name, value)
        if got.error is not None:
            self.fail(got.error)
        else:
            self.enter(Phase.DONE, got.summary)

    @property
    def record_key(self) -> str:
        """Where the run's record lives: a notebook of the cell and all it printed and displayed."""
        return Layout.record(self.id)


def new_run_id(name: str | None) -> str:
    """``<name>-<UTC time>-<random>``: unique, sortable, and a valid Batch job id."""
    stem = re.sub(r"[^a-z0-9-]+", "-", (name or "run").lower()).strip("-")[:32] or "run"
    return f"{stem}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


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
