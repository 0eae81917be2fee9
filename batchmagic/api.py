"""The Python API: :func:`submit` a cell, get a :class:`Run` back. The magics are a thin layer on it.

Examples
--------
In [1]: import batchmagic
In [2]: run = batchmagic.submit("y = x * 2\\nprint(y)", {"x": 21}, backend="local")
In [3]: run.wait()
42
Out[3]: {'y': 42}
"""

from __future__ import annotations

import logging
import tempfile
import threading
import uuid
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from batchmagic.backends.azure.vmsizes import check_current, gpu_label
from batchmagic.backends.base import Backend, NamedPools, TaskSubmission
from batchmagic.config import Settings, check_home, check_room, parse_budget, parse_timeout, working_directory
from batchmagic.errors import ConfigError
from batchmagic.options import RunOptions
from batchmagic.package.analysis import CellAnalysis
from batchmagic.package.capture import capture, check_cell
from batchmagic.package.folder import FolderPlan, plan_folder
from batchmagic.package.image import ImageRequest, plan_image
from batchmagic.package.image.plan import GuardMemo
from batchmagic.package.inputs import HashCache, parse_input
from batchmagic.run.ledger import Ledger, LedgerRun
from batchmagic.run.run import Run, UpdateCallback
from batchmagic.run.state import Phase, RunState
from batchmagic.run.sweep import parse_grid
from batchmagic.run.upkeep import trim
from batchmagic.run.upload import shipped, upload
from batchmagic.settings import DEFAULT_MAX_TASKS
from batchmagic.storage import LocalStore

__all__ = ["Run", "RunOptions", "Session", "submit", "default_session"]

log = logging.getLogger("batchmagic.api")


class Session:
    """This process's runs and the backends they use (one per kernel).

    Parameters
    ----------
    home : Path, optional
        State and local run data; default the settings' (``BATCHMAGIC_HOME``, else ``~/.batchmagic``).
    settings : Settings, optional
        Where runs go; default :meth:`Settings.from_env <batchmagic.config.Settings.from_env>`, read
        when first needed.
    """

    def __init__(self, home: Path | str | None = None, *, settings: Settings | None = None) -> None:
        self._home = Path(home) if home else None
        self._settings = settings
        self.runs: list[Run] = []
        self._backends: dict[tuple[str, Settings], Backend] = {}
        self._ledgers: dict[Path, Ledger] = {}
        self.client_id = uuid.uuid4().hex[:12]
        self.hashes = HashCache()  # sha256 of local inputs, so unchanged data is hashed once
        self.guard_memo = GuardMemo()  # the given images this kernel checked: each once

    def settings(self, **overrides: Any) -> Settings:
        """The session's settings with ``overrides`` (``None`` or ``""`` leave a setting as it is)."""
        if self._settings is None:
            self._settings = Settings.from_env(home=self._home)
        return self._settings.with_overrides(**overrides)

    def home(self, home: Path | str | None = None) -> Path:
        return check_home(self.settings(home=home).home)

    def ledger(self, home: Path) -> Ledger:
        if home not in self._ledgers:
            self._ledgers[home] = Ledger(home, client_id=self.client_id)
        return self._ledgers[home]

    def ledger_note(self, settings: Settings | None = None) -> str:
        """One line about the ledger lines its last read skipped (torn, foreign, newer): "" when none."""
        settings = settings or self.settings()
        ledger = self._ledgers.get(Path(settings.home).expanduser())
        return ledger.skipped_note() if ledger is not None else ""

    def backend(
        self,
        name: str | Backend | None = None,
        *,
        home: Path | str | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> Backend:
        """The backend called ``name`` (default: the settings'), created once per session and settings.

        ``overrides`` are settings (``batch_endpoint``, ``container``...) for this backend.
        """
        if isinstance(name, Backend):
            return name
        settings = (settings or self.settings()).with_overrides(home=home, **overrides)
        name = (name or settings.backend).lower()
        key = (name, settings)
        if key not in self._backends:
            if name == "local":
                from batchmagic.backends.local import LocalBackend

                self._backends[key] = LocalBackend(check_home(settings.home), warm=settings.warm_worker != "off")
            elif name == "azure":
                from batchmagic.backends.azure.backend import AzureBackend

                self._backends[key] = AzureBackend.from_settings(settings)
            else:
                raise ConfigError(f"backend {name!r} is not one of: local, azure")
        return self._backends[key]

    def submit(
        self,
        cell: str,
        namespace: Mapping[str, Any] | None = None,
        options: RunOptions | None = None,
        *,
        settings: Settings | None = None,
        home: Path | str | None = None,
        on_update: UpdateCallback | None = None,
        **changes: Any,
    ) -> Run:
        """Package ``cell`` with what it reads from ``namespace`` and start it; see :func:`submit`.

        ``options`` (or the defaults) with ``changes`` (any :class:`RunOptions` field; ``backend`` may
        also be a Backend) say what the run asks for; ``settings`` where it goes. Everything that can be
        checked is checked before anything is uploaded or created.
        """
        given_backend = changes.pop("backend") if isinstance(changes.get("backend"), Backend) else None
        options = RunOptions.build(options, **changes)
        settings = (settings or self.settings()).with_overrides(home=home)
        self.check(cell, options, settings)
        options = _gpu_size(options, settings)
        folder = self.plan_folder(cell, namespace or {}, options, settings)
        backend = given_backend or self.backend(options.backend, settings=settings)
        image = plan_image(
            backend.name, image=options.image, configured_image=backend.default_image, container=options.container,
            registry=settings.registry, base_image=settings.base_image, requirements=options.requirements,
            pip=options.pip, secrets=settings.secrets, pip_index=settings.pip_extra_index_url,
        )  # fmt: skip
        if image is not None:
            image.memo = self.guard_memo
        run, submission = self._plan_run(cell, namespace, options, settings, backend, image)
        run.folder, run.bring_back_limit = folder, settings.bring_back_limit
        if on_update is not None:
            run.subscribe(on_update)
        if isinstance(backend.store, LocalStore) and settings.store_limit:
            run.subscribe(_trimmer(backend.store, self.ledger(settings.home), settings.store_limit))
        self._package(run, submission, cell, namespace, options, settings, image)
        self.runs.append(run)
        run.launch(submission, self.ledger(settings.home))
        return run

    def _plan_run(
        self,
        cell: str,
        namespace: Mapping[str, Any] | None,
        options: RunOptions,
        settings: Settings,
        backend: Backend,
        image: ImageRequest | None,
    ) -> tuple[Run, TaskSubmission]:
        """The run and what its backend is asked to start, checked by the backend and priced: nothing made yet."""
        run = Run.create(options, settings, backend, namespace=namespace, source=cell)
        submission = run.submission(options)
        submission.pool = self.pool_for(options, settings, backend.name)
        backend.validate(submission)
        if submission.pool:
            # On a named pool the VM size is the pool's.
            if options.vm_size and options.vm_size.lower() != submission.vm_size.lower():
                raise ConfigError(
                    f"--vm {options.vm_size} does not match pool {submission.pool}'s {submission.vm_size}: "
                    "drop --vm, or pick a pool of that size"
                )
            run.vm_size = submission.vm_size
        submission.gpus = backend.gpus(submission.vm_size, container=options.container)
        submission.shm_size = settings.shm_size
        run.gpus, run.gpu_label = submission.gpus, gpu_label(submission.vm_size, submission.gpus, backend.name)
        if image is not None and submission.gpus:
            image.for_gpu(settings.gpu_base_image)
        run.price(options, settings)
        return run, submission

    def _package(
        self,
        run: Run,
        submission: TaskSubmission,
        cell: str,
        namespace: Mapping[str, Any] | None,
        options: RunOptions,
        settings: Settings,
        image: ImageRequest | None,
    ) -> None:
        """Package the cell (and build or find its image), then upload what its tasks read: steps of the run."""
        with tempfile.TemporaryDirectory(prefix="batchmagic-") as tmp:
            with run.step(Phase.PACKAGING):
                captured = capture(
                    cell, namespace or {}, Path(tmp) / "bundle", outputs=options.outputs, provided=options.provided,
                    first_line=options.first_line, track_changes=options.sweep is None,
                )  # fmt: skip
                # The training image the tasks run in ("" when they run without one): built or found now.
                submission.image = image.resolve(captured, run.enter) if image is not None else ""
            with run.step(Phase.UPLOADING, shipped(captured), storing=True):
                upload(run, cell, captured, options, settings, hashes=self.hashes)

    @staticmethod
    def check(cell: str, options: RunOptions, settings: Settings) -> CellAnalysis:
        """What can be known wrong from the cell, the options and the settings alone: syntax,
        emptiness, star imports, a deleted working directory, the run's size (tasks, nodes), a home that
        cannot be written. Nothing is created. Returns the cell's analysis.

        Raises
        ------
        CaptureError, ConfigError
            One line that says what to do.
        """
        analysis = check_cell(cell)
        working_directory()  # local modules are found under it: a deleted one is one line, not a traceback
        options.check_limits(settings)
        pool = Session.pool_for(options, settings, options.backend or settings.backend)
        if pool:
            clear = f"pool {pool} decides that (or run without --pool" + (
                ", %config AzBatch.pool = ''" if not options.pool else ""
            )
            for flag, given in (
                ("--gpu", bool(options.gpu)),
                ("--nodes", options.nodes != 1 and not options.distributed),
                ("--low-priority", options.low_priority),
                ("--slots-per-node", options.slots_per_node is not None),
            ):
                if given:
                    raise ConfigError(f"{flag} does not apply to a run on a named pool: {clear})")
        check_home(settings.home)
        check_room(settings.home)  # the ledger line and the record: before anything is uploaded
        return analysis

    @staticmethod
    def pool_for(options: RunOptions, settings: Settings, backend: str) -> str:
        """The named pool a run goes to: ``--pool``, else ``AzBatch.pool`` on Azure; "" for an auto pool."""
        if options.pool:
            if backend != "azure":
                raise ConfigError(
                    f"--pool {options.pool} runs on a named Azure Batch pool: drop --backend {backend}, or drop --pool"
                )
            return options.pool
        return settings.pool if backend == "azure" else ""

    @staticmethod
    def plan_folder(
        cell: str, namespace: Mapping[str, Any], options: RunOptions, settings: Settings
    ) -> FolderPlan | None:
        """What the run ships from the notebook's folder (``options.folder``, else the working
        directory): see :mod:`batchmagic.package.folder`. None for ``folder=""``.

        Raises
        ------
        ConfigError
            The files the cell names are over ``settings.ship_limit``.
        """
        if options.folder == "":
            return None
        root = Path(options.folder).resolve() if options.folder else working_directory()
        return plan_folder(
            cell, namespace, root, limit=settings.ship_limit, inputs=options.inputs, exclude=[settings.home]
        )

    def backends_in_use(self) -> list[Backend]:
        """The backends this session has made (the Azure one once a run or a pool command used it)."""
        return list(self._backends.values())

    def attach(
        self, key: str, *, settings: Settings | None = None, namespace: MutableMapping[str, Any] | None = None
    ) -> Run:
        """The run ``key`` (an id, or a name) from the ledger, followed from this session as if it had
        submitted it: a run of a kernel that is gone, or of another one. See :meth:`Run.attach`.

        Raises
        ------
        ConfigError
            No such run in the ledger, or its data is not where this session's settings point.
        """
        settings = settings or self.settings()
        for run in self.runs:
            if key in (run.id, run.name):
                return run
        ledger = self.ledger(check_home(settings.home))
        entry = ledger.find(key)
        if entry is None:
            raise ConfigError(f"no run {key!r} in the ledger {ledger.path}: %azbatch_status (batchmagic ls) lists them")
        run = Run.attach(entry, self.backend(entry.backend, settings=settings), ledger)
        if namespace is not None:
            run.bind(namespace)
        self.runs.append(run)
        return run

    def status(
        self, settings: Settings | None = None, *, recent: int = 20
    ) -> list[tuple[LedgerRun, RunState | None, str]]:
        """The ledger's runs (every client's on this machine): the ``recent`` latest, and every one that
        may still run. Each with its live state where it can be had (this session's runs; another
        client's unfinished run is polled once) and who follows it: ``this kernel``, ``its kernel``
        (alive), ``kernel gone``."""
        settings = settings or self.settings()
        ledger = self.ledger(check_home(settings.home))
        entries = list(ledger.runs().values())
        shown = [e for i, e in enumerate(entries) if i >= len(entries) - recent or not (e.finished or e.released)]
        mine = {run.id: run for run in self.runs}
        rows: list[tuple[LedgerRun, RunState | None, str]] = []
        for entry in shown:
            run = mine.get(entry.run_id)
            if run is not None:
                if not run.done:
                    run.poll()
                rows.append((entry, run.state(), "this kernel"))
                continue
            who = "its kernel" if entry.client_alive() else "kernel gone"
            state = None
            if not (entry.finished or entry.released):
                try:
                    other = Run.attach(entry, self.backend(entry.backend, settings=settings), ledger, record=False)
                    other.poll()
                    state = other.state()
                except Exception as err:  # one run that cannot be read must not hide the others
                    log.debug("could not read run %s: %s", entry.run_id, err)
            rows.append((entry, state, who))
        return rows

    def orphans(self, settings: Settings | None = None) -> list[LedgerRun]:
        """Runs of clients that are gone (a killed kernel) that were never released nor seen to end."""
        settings = settings or self.settings()
        mine = {run.id for run in self.runs}
        ledger = self.ledger(check_home(settings.home))
        return [
            e
            for e in ledger.runs().values()
            if e.run_id not in mine and not (e.finished or e.released) and not e.client_alive()
        ]

    def teardown_orphans(self, settings: Settings | None = None, *, blobs: bool = False) -> list[str]:
        """End the runs of clients that are gone (see :meth:`orphans`); a line per thing removed."""
        settings = settings or self.settings()
        removed: list[str] = []
        for entry in self.orphans(settings):
            try:
                run = Run.attach(entry, self.backend(entry.backend, settings=settings), self.ledger(settings.home))
                removed.extend(run.teardown(blobs=blobs))
            except Exception as err:
                removed.append(f"nothing of {entry.name}: {err} (run %azbatch_teardown --orphans again)")
        return removed

    def teardown(
        self, *, everything: bool = False, blobs: bool = False, backend: Backend | None = None, pools: bool = False
    ) -> list[str]:
        """Stop and release whatever this session started that still runs or holds resources.

        Named pools outlive runs: they stay unless ``pools`` (or ``everything``) is given. The local
        backend's warm worker ends too (it is this process's, shared with other sessions: their next run
        starts it again).

        Parameters
        ----------
        everything : bool
            Also find what other clients left behind (batchmagic-tagged jobs and pools, named pools
            included) on ``backend``.
        blobs : bool
            Also delete the run data (bundles, logs, results).
        pools : bool
            Also delete the account's batchmagic named pools (on ``backend``).

        Returns a line per thing removed; calling it again removes (and returns) nothing.
        """
        removed: list[str] = []
        for run in self.runs:
            try:
                removed.extend(run.teardown(blobs=blobs))
            except Exception as err:  # one stuck run must not keep the others alive
                removed.append(f"nothing of {run.name}: {err} (run %azbatch_teardown again)")
        used = {id(b): b for b in [*self._backends.values(), *(run.backend for run in self.runs)]}
        for each in used.values():
            each.close()  # the local backend's warm worker: it ends with the session that tears down
        if everything and backend is not None:
            removed.extend(backend.teardown_all(blobs=blobs))
        elif pools and isinstance(backend, NamedPools):
            removed.extend(backend.delete_pool(p.name) for p in backend.list_pools() if p.state == "active")
        return removed


def _trimmer(store: LocalStore, ledger: Ledger, limit: int) -> UpdateCallback:
    """A listener that trims the local store to ``limit`` once its run has ended (see batchmagic.run.upkeep)."""
    done = threading.Event()

    def after(state: RunState, _records: list[Any]) -> None:
        if not state.phase.final or done.is_set():
            return
        done.set()
        # Beside the run, not in its way: surveying the store takes a tenth of a second and more as it grows,
        # which a blocking cell would wait for after its result is in (the recent data a new run may
        # need is within upkeep's grace period: never trimmed).
        threading.Thread(target=_trim, args=(store, ledger, limit), name="batchmagic-trim", daemon=True).start()

    return after


_trimming = threading.Lock()  # one trim at a time: a second one finds nothing the first left


def _trim(store: LocalStore, ledger: Ledger, limit: int) -> None:
    if not _trimming.acquire(blocking=False):
        return
    try:
        gone = trim(store, ledger, limit)
        if gone.total:
            log.info("trimmed the store %s by %d bytes (AzBatch.store_limit)", store.describe(), gone.total)
    except Exception:  # the run's result matters more than a tidy store
        log.warning("could not trim the store %s", store.describe(), exc_info=True)
    finally:
        _trimming.release()


def _sweep_rows(
    sweep: str | Iterable[str] | Iterable[Mapping[str, Any]] | None, limit: int = DEFAULT_MAX_TASKS
) -> tuple[dict[str, Any], ...] | None:
    """``submit(sweep=...)``: parameter sets as given, or ``--sweep`` strings read as the magic reads them
    (at most ``limit`` tasks: ``Settings.max_tasks``)."""
    if sweep is None:
        return None
    items = [sweep] if isinstance(sweep, str) else list(sweep)
    if items and all(isinstance(item, str) for item in items):
        return tuple(parse_grid([str(item) for item in items], limit=limit))
    return tuple(dict(row) for row in items)  # type: ignore[arg-type]


_default: Session | None = None


def default_session() -> Session:
    """The process-wide session that :func:`submit` and the magics use."""
    global _default
    if _default is None:
        _default = Session()
    return _default


def _gpu_size(options: RunOptions, settings: Settings) -> RunOptions:
    """``--gpu``: the cheapest current size with those GPUs in the account's region (spot prices for
    ``--low-priority``); the default size when neither ``--gpu`` nor ``--vm`` is given must not be retired."""
    if not options.gpu:
        check_current(options.vm_size or settings.vm_size)
        return options
    from batchmagic.backends.azure.prices import Prices

    prices = Prices.for_settings(settings.home, settings.prices)
    region = settings.batch_region or "eastus"  # no region known (local): rank by the shipped eastus prices
    return options.with_gpu_size(
        lambda size: prices.hourly(size, region, low_priority=options.low_priority), region=region
    )


def submit(
    cell: str,
    namespace: Mapping[str, Any] | None = None,
    *,
    backend: str | Backend | None = None,
    vm_size: str | None = None,
    name: str | None = None,
    outputs: Iterable[str] | None = None,
    timeout: float | str | None = None,
    env: Mapping[str, str] | None = None,
    nodes: int = 1,
    low_priority: bool = False,
    retries: int = 0,
    sweep: str | Iterable[str] | Iterable[Mapping[str, Any]] | None = None,
    slots_per_node: int | None = None,
    inputs: Iterable[str] = (),
    output_files: Iterable[str] = (),
    image: str | None = None,
    container: bool = False,
    requirements: str | Path | None = None,
    pip: Iterable[str] = (),
    budget: float | str | None = None,
    first_line: int = 1,
    keep_failed: bool = False,
    pool: str | None = None,
    distributed: bool = False,
    procs_per_node: int = 1,
    gpu: str | None = None,
    folder: str | Path | None = None,
    home: Path | str | None = None,
    on_update: UpdateCallback | None = None,
) -> Run:
    """Run ``cell`` out of this process with the values it reads from ``namespace``.

    Parameters
    ----------
    cell : str
        Python source of the cell.
    namespace : mapping, optional
        Where the cell's inputs come from (a notebook's ``user_ns``, or a plain dict). Names come back
        into it only through :meth:`Run.fetch` (or the magic).
    backend : str or Backend, optional
        ``"local"`` or ``"azure"``; default from ``BATCHMAGIC_BACKEND`` / ``AZURE_BATCH_ENDPOINT``.
    vm_size, name, outputs, timeout, env, nodes, low_priority, retries, slots_per_node
        As the ``%%azbatch`` flags of the same names (``--vm``, ``--out``, ...); ``timeout`` in seconds
        or like ``"30m"``; ``slots_per_node`` None: one per node on Azure, the machine's cores locally.
    image, container, requirements, pip
        The training image: as ``--image``, ``--container``, ``--requirements``, ``--pip``.
    sweep : iterable of mappings, or str / iterable of str, optional
        One parameter set per task: the run's result is then a table. Strings are read as ``--sweep``
        reads them (``"k=1,2"``, ``["lr=0.1,0.01", "depth=range(3,6)"]``: their product).
    inputs, output_files : iterable of str
        As ``--input`` and ``--output``.
    budget : float or str, optional
        As ``--budget``: end the run once its estimated spend passes this amount (Azure).
    keep_failed : bool
        As ``--keep-failed``: keep the run's data when it fails before it starts.
    first_line : int
        The line number of the cell's first line where it is shown (2 under a ``%%azbatch`` line):
        remote tracebacks count from it.
    pool : str, optional
        As ``--pool``: run as a job on this named pool (see :mod:`batchmagic.pools`); default
        ``AzBatch.pool`` / ``BATCHMAGIC_POOL`` on Azure, else a pool of its own.
    distributed : bool
        As ``--distributed``: run the cell on ``nodes`` nodes at once, ``procs_per_node`` ranks on each,
        every rank with the same namespace and the variables of :mod:`batchmagic.distributed`; the names
        rank 0 binds come back, and a failure of any rank fails the run.
    procs_per_node : int
        As ``--procs-per-node``: ranks each node starts (one per GPU); only with ``distributed``.
    gpu : str, optional
        As ``--gpu KIND[:COUNT]`` (``"A100"``, ``"H100:8"``): the cheapest current VM size with those GPUs
        in the account's region (see :mod:`batchmagic.backends.azure.vmsizes`).
    folder : str or path, optional
        The notebook's folder, mirrored in the task's working directory (see :mod:`batchmagic.package.folder`):
        the files the cell names are shipped, the files it writes come back. Default: the working
        directory; ``""``: none.
    home : path, optional
        batchmagic's state and local run data (default ``BATCHMAGIC_HOME``, else ``~/.batchmagic``).
    on_update : callable, optional
        ``on_update(state, new_log_records)`` on every change of the run.

    Returns
    -------
    Run
        Already started; call :meth:`Run.wait` for the outputs.

    Raises
    ------
    ConfigError
        An option that cannot work, before anything is uploaded or created.
    """
    session = default_session()
    options = RunOptions(
        backend=None if isinstance(backend, Backend) else backend,
        vm_size=vm_size,
        name=name,
        outputs=None if outputs is None else tuple(outputs),
        timeout=None if timeout is None else parse_timeout(timeout),
        env=dict(env or {}),
        nodes=nodes,
        low_priority=low_priority,
        retries=retries,
        sweep=_sweep_rows(sweep, session.settings(home=home).max_tasks),
        slots_per_node=slots_per_node,
        inputs=tuple(parse_input(token) for token in inputs),
        output_files=tuple(output_files),
        image=image,
        container=container,
        requirements=None if requirements is None else str(requirements),
        pip=tuple(pip),
        budget=parse_budget(budget),
        first_line=first_line,
        keep_failed=keep_failed,
        pool=pool,
        distributed=distributed,
        procs_per_node=procs_per_node,
        gpu=gpu,
        folder=None if folder is None else str(folder),
    )
    if isinstance(backend, Backend):
        return session.submit(cell, namespace, options, home=home, on_update=on_update, backend=backend)
    return session.submit(cell, namespace, options, home=home, on_update=on_update)
