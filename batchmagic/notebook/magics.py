"""The ``%%azbatch`` magics: traits, argument parsing, error translation, nothing else.

Every step of the work happens in :mod:`batchmagic.api`; this module turns flags into keyword
arguments, our errors into one-line ``UsageError``\\ s, and a run's updates into the panel and
the cell's own stdout/stderr.
"""

from __future__ import annotations

import shlex
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import publish_display_data

from batchmagic import api, pools
from batchmagic.backends import BACKENDS
from batchmagic.backends.base import NamedPools
from batchmagic.config import Settings, parse_env
from batchmagic.errors import BatchMagicError, CaptureError, ConfigError, RunCancelled
from batchmagic.notebook.logcap import LogCap
from batchmagic.notebook.pump import ui_pump
from batchmagic.notebook.record import record_of
from batchmagic.notebook.traits import settings_from_traits, settings_traits
from batchmagic.notebook.view import status_lines
from batchmagic.notebook.widget import Panel, TaskLogs, make_panel
from batchmagic.options import RunOptions, check_identifier
from batchmagic.package.plots import kernel_backend, static_figures_note
from batchmagic.protocol import LEFT_OPEN_MARK, VALUE_MARK
from batchmagic.run.run import UpdateCallback
from batchmagic.run.state import LogRecord, RunState
from batchmagic.run.sweep import parse_grid, rows_from

__all__ = ["AzBatch"]


#: The settings' traits (:mod:`batchmagic.notebook.traits`, from :data:`batchmagic.settings.SETTINGS`).
_SettingTraits: Any = settings_traits()


@magics_class
class AzBatch(Magics, _SettingTraits):  # type: ignore[misc]
    """Run a cell on a bigger machine: ``%%azbatch [flags]``; ``%azbatch_status``; ``%azbatch_teardown``.

    Its traits are the settings of :data:`batchmagic.settings.SETTINGS` (``%config AzBatch.vm_size = ...``).
    """

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.session = api.Session()
        self._notice_shown = False
        self._figures_noted = False  # static_figures_note, said once per kernel
        self._environment: Settings | None = None

    @property
    def _env(self) -> Settings:
        """The environment's settings, read once: they seed the traits' defaults."""
        if self._environment is None:
            with _usage_errors():
                self._environment = Settings.from_env()
        return self._environment

    def settings(self) -> Settings:
        """The traits resolved into one Settings (secrets come from the environment, never traits)."""
        chosen = self._env.backend_chosen or "backend" in self.config.get("AzBatch", {})
        return settings_from_traits(self, self._env, backend_chosen=chosen)

    def backend_config(self) -> dict[str, str]:
        """The Azure settings the traits hold (secrets are never traits: they come from the environment)."""
        return {
            "batch_endpoint": self.batch_endpoint,
            "batch_account": self.batch_account,
            "storage_account_url": self.storage_account_url,
            "container": self.container,
            "image": self.image,
            "registry": self.registry,
        }

    # --- %%azbatch ---

    @magic_arguments()
    @argument("--backend", help="Where to run: azure or local. Default: the AzBatch.backend trait.")
    @argument(
        "--vm", help="Azure VM size, e.g. Standard_E32_v3 (recorded and shown on local). Default: AzBatch.vm_size."
    )
    @argument(
        "--gpu",
        metavar="KIND[:COUNT]",
        help="GPUs on the VM, e.g. --gpu A100, --gpu T4, --gpu H100:8: the cheapest current size that has them "
        "in the region (or --vm naming an N-series size). Default: none.",
    )
    @argument("--name", help="A name for the run, shown in the panel and used in its id.")
    @argument(
        "--out",
        help="Comma-separated names to bring back, e.g. --out model,score. Default: every name the cell assigns, "
        "and every value it reads and changes in place (clf in clf.fit(X, y)).",
    )
    @argument("--timeout", help="Longest the run may take, e.g. 90s, 30m, 6h (at most 7d). Default: AzBatch.timeout.")
    @argument(
        "--env",
        action="append",
        metavar="KEY=VALUE",
        help="An environment variable for the remote cell; repeat the flag for several.",
    )
    @argument(
        "--nodes",
        type=int,
        default=1,
        help="Number of VMs in the run's pool (Azure); with --distributed, the nodes the one cell runs on at once "
        "(locally: processes). Default 1.",
    )
    @argument(
        "--distributed",
        action="store_true",
        help="Run the cell on --nodes N nodes at once, as ranks of one job (MASTER_ADDR, RANK, WORLD_SIZE... set; "
        "see batchmagic.distributed): rank 0's names come back; a failure of any rank fails the run.",
    )
    @argument(
        "--procs-per-node",
        type=int,
        default=1,
        metavar="K",
        help="With --distributed: ranks each node starts (one per GPU). Default 1.",
    )
    @argument(
        "--low-priority", action="store_true", help="Use low-priority (spot) VMs: cheaper, may be preempted (Azure)."
    )
    @argument("--retries", type=int, default=0, help="Times Batch retries the task if it fails (Azure). Default 0.")
    @argument(
        "--sweep",
        action="append",
        metavar="NAME=V1,V2",
        help="Run the cell once per value, with NAME bound to it; repeat for a grid (their product). "
        "Values are Python literals where they parse, strings otherwise. Shows a results table.",
    )
    @argument("--sweep-from", metavar="VAR", help="Run once per element of VAR: a list of dicts or a DataFrame.")
    @argument(
        "--slots-per-node",
        type=int,
        help="Tasks each node runs at once (sweeps). Default: 1 per node on Azure; the machine's cores locally.",
    )
    @argument("--no-wait", action="store_true", help="Return at once; the panel keeps updating in the background.")
    @argument("--out-run", metavar="NAME", help="Also bind the run's handle to NAME (besides _azbatch).")
    @argument(
        "--keep-failed",
        action="store_true",
        help="Keep the run's data (bundle, specs) when it fails before it starts; by default it is removed.",
    )
    @argument(
        "--input",
        action="append",
        metavar="SOURCE[:DEST]",
        help="Data for the cell's working directory, downloaded before it runs: az://container/prefix "
        "(Blob Storage) or a local file or folder (uploaded once by content). Repeatable.",
    )
    @argument(
        "--output",
        action="append",
        metavar="GLOB",
        help="Files the cell writes to upload when it ends (also when it fails); run.download() fetches them.",
    )
    @argument(
        "--budget",
        metavar="AMOUNT",
        help="End the run once its estimated spend passes AMOUNT, e.g. 5 (Azure; a named pool stays). "
        "Default: AzBatch.budget.",
    )
    @argument("--image", help="Run in this prebuilt image, after the version guard. Default: AzBatch.image.")
    @argument("--requirements", metavar="FILE", help="A pip requirements file to add to the cell's image.")
    @argument("--pip", action="append", metavar="PKG", help='A requirement to add to the image, e.g. "pkg==1.2".')
    @argument(
        "--container",
        action="store_true",
        help="With --backend local: build (or reuse) the training image and run the cell in it (local Docker).",
    )
    @argument(
        "--pool",
        metavar="NAME",
        help="Run as a job on this named pool (%%azbatch_pool create): no pool is made, warm nodes start at once. "
        "Default: AzBatch.pool.",
    )
    @cell_magic("azbatch")  # type: ignore[arg-type]  # IPython's decorator factory infers its argument as Never
    def azbatch(self, line: str, cell: str) -> Any:
        """Run this cell out of the kernel and bring the names it assigns back.

        The cell runs in a separate Python process: on Azure Batch, or on this machine with
        ``--backend local``. The values and functions it reads are shipped with it; what it
        prints appears here while it runs; its handle is bound to ``_azbatch``.
        """
        args = _parse(self.azbatch, line)
        with _usage_errors():
            settings = self.settings()
            options = self._options(args)
            analysis = self.session.check(cell, options, settings)  # before the panel shows
            if args.out_run is not None:
                check_identifier(args.out_run, "--out-run")
            for handle in ("_azbatch", args.out_run):
                if handle and handle in analysis.bound:
                    raise UsageError(
                        f"the cell assigns `{handle}`, which holds the run's handle here: rename it in the cell"
                    )
        self._explain_default_backend(args.backend, settings)
        return self._present(
            lambda on_update: self.session.submit(cell, self._user_ns, options, settings=settings, on_update=on_update),
            no_wait=args.no_wait,
            out_run=args.out_run,
        )

    def _present(self, start: Callable[[UpdateCallback], api.Run], *, no_wait: bool, out_run: str | None = None) -> Any:
        """Show a run as a cell does: the panel, what it prints, its names back when it ends (or, with
        ``no_wait``, a panel that keeps updating). ``start(on_update)`` submits the run (or attaches to it)."""
        current: list[api.Run] = []  # the panel exists before the run does
        task_logs: list[TaskLogs] = []
        panel = make_panel(
            self.panel,
            on_cancel=lambda: current[0].cancel() if current else None,
            on_pick=lambda task_id: task_logs[0](task_id) if task_logs else "",
            background=no_wait,
        )

        cap = LogCap(self.log_lines)
        held: list[dict[str, Any]] = []  # the cell's value as it displayed it: shown as its Out instead
        left_open: list[dict[str, Any]] = []  # figures the cell left open, with no value: shown once it has ended

        def on_update(state: RunState, records: list[LogRecord]) -> None:
            _show(cap.feed(records, state) + (cap.end(state) if state.finished else []), held=held, left_open=left_open)
            panel.update(state)

        def on_background_update(state: RunState, records: list[LogRecord]) -> None:
            # From the monitor thread: set widget traits and append to its Output; never print.
            panel.update(state, cap.feed(records, state) + (cap.end(state) if state.finished else []))
            if state.finished and current:
                panel.finish(record_of(current[0], background=True))

        try:
            with _usage_errors(), _warnings_as_lines():
                try:
                    run = start(on_background_update if no_wait else on_update)
                except KeyboardInterrupt:  # Ctrl-C before the run existed (a run's own steps say where they stopped)
                    raise RunCancelled(
                        "interrupted before the run was created: nothing was uploaded or started"
                    ) from None
        except BaseException:
            panel.discard()  # it never started: its one-line error, and no empty panel
            raise
        current.append(run)
        task_logs.append(TaskLogs(run))
        self._user_ns["_azbatch"] = run
        if out_run:
            self._user_ns[out_run] = run
        if no_wait:
            if run.done:  # it ended before its monitor started (a failed upload): no thread will finish it
                panel.finish(record_of(run, background=True))
            run.watch_in_background()
            self._record_after_a_cell(run, panel)
            return None
        return self._wait_here(run, panel, held, left_open)

    def _wait_here(
        self, run: api.Run, panel: Panel, held: list[dict[str, Any]], left_open: list[dict[str, Any]]
    ) -> Any:
        """Wait for a blocking run with the kernel kept responsive (Cancel), then bind what it brought back and
        return its value (a sweep: its table); what the cell displayed late follows, as the notebook orders it."""
        with _warnings_as_lines(), ui_pump() as pump:
            try:
                result = run.wait(between_polls=pump)
            except BatchMagicError:
                _out_of_reach(held)  # the cell's value was shown, but its result did not come
                self._after_the_cell(left_open)  # after its traceback, as the inline backend shows them
                if not run.partial:
                    raise
                result = None  # the cell raised after it did some work: fetch keeps that, then raises
            finally:
                if run.done:
                    panel.finish(record_of(run, background=False))
        if run.is_sweep:
            return result  # the results DataFrame, displayed as the cell's value
        _out_of_reach(left_open)  # a cell that ended well: they close its output, as here
        self._note_static_figures(run.displays)
        with _warnings_as_lines():  # an alias left holding the old object of a name changed in place
            run.fetch(self._user_ns)
        return self._out(run, held)

    def _out(self, run: api.Run, held: list[dict[str, Any]]) -> Any:
        """What the cell returns, which IPython shows as its ``Out[n]`` and keeps in ``_``: the value of the
        remote cell's last expression, as here; what it displayed after it (the figures it left open, which
        a notebook shows once the cell has ended) follows the Out. A value that could not come back is shown
        as the cell displayed it."""
        if run.value is None:
            _out_of_reach(held)
            return None
        self._after_the_cell(held[1:])
        return run.value

    def _after_the_cell(self, outputs: list[dict[str, Any]]) -> None:
        """Show ``outputs`` once the cell has ended: after its Out, or after its traceback."""
        if not outputs:
            return
        assert self.shell is not None
        after = list(outputs)
        outputs.clear()

        def follow(*_args: Any) -> None:
            assert self.shell is not None
            self.shell.events.unregister("post_run_cell", follow)
            for output in after:
                _replay(output)

        self.shell.events.register("post_run_cell", follow)

    def _record_after_a_cell(self, run: api.Run, panel: Panel) -> None:
        """Put a background run's record in place again after the first cell that ends once the run has.

        The monitor thread already did, but ipykernel 7 sends a thread's messages as from the cell that
        started it, which has ended: a front end follows them by display id (JupyterLab does), a headless
        executor (nbclient, ``nbconvert --execute``) does not. From the main thread, after a cell, the
        update goes out as from a cell that is still running, so the executed notebook gets it too.
        """
        assert self.shell is not None

        def after(*_args: Any) -> None:
            if run.done:
                assert self.shell is not None
                self.shell.events.unregister("post_run_cell", after)
                panel.finish(record_of(run, background=True))

        self.shell.events.register("post_run_cell", after)

    @property
    def _user_ns(self) -> dict[str, Any]:
        """The notebook's namespace: a magic runs only once registered with a shell."""
        assert self.shell is not None, "AzBatch magics need an IPython shell"
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    def _options(self, args: Any) -> RunOptions:
        """The cell's flags as run options (values are checked by RunOptions, once)."""
        if args.backend is not None and args.backend.lower() not in BACKENDS:
            raise UsageError(f"--backend {args.backend!r} is not one of: {', '.join(BACKENDS)}")
        return RunOptions(
            backend=args.backend,
            vm_size=args.vm,
            name=args.name,
            outputs=None if args.out is None else tuple(n.strip() for n in args.out.split(",")),
            timeout=args.timeout,
            env=parse_env(args.env),
            nodes=args.nodes,
            low_priority=args.low_priority,
            retries=args.retries,
            sweep=_tuple_or_none(self._sweep(args)),
            slots_per_node=args.slots_per_node,
            inputs=tuple(args.input or ()),
            output_files=tuple(args.output or ()),
            image=args.image,
            container=args.container,
            requirements=args.requirements,
            pip=tuple(args.pip or ()),
            first_line=2,  # the cell's first line is the one after %%azbatch: tracebacks count from it
            pool=args.pool,
            budget=args.budget,
            keep_failed=args.keep_failed,
            distributed=args.distributed,
            procs_per_node=args.procs_per_node,
            gpu=args.gpu,
        )

    def _sweep(self, args: Any) -> list[dict[str, Any]] | None:
        """The parameter sets of --sweep / --sweep-from, or None for a single cell."""
        if args.sweep and args.sweep_from:
            raise UsageError("give --sweep or --sweep-from, not both")
        if args.sweep:
            return parse_grid(args.sweep, limit=self._env.max_tasks)
        if args.sweep_from:
            if args.sweep_from not in self._user_ns:
                raise UsageError(f"--sweep-from {args.sweep_from}: no such variable in the notebook")
            return rows_from(args.sweep_from, self._user_ns[args.sweep_from])
        return None

    def _note_static_figures(self, displays: list[dict[str, Any]]) -> None:
        """Say once that remote figures are images when this kernel's are live (``%matplotlib notebook``)."""
        note = "" if self._figures_noted else static_figures_note(kernel_backend(), displays)
        if note:
            self._figures_noted = True
            print(note, file=sys.stderr)

    def _explain_default_backend(self, explicit: str | None, settings: Settings) -> None:
        """Say once why cells run locally when nobody chose the backend."""
        chosen = explicit or settings.backend_chosen
        if chosen or self._notice_shown or settings.backend != "local":
            return
        self._notice_shown = True
        print(
            "batchmagic: AZURE_BATCH_ENDPOINT is not set, so cells run on this machine "
            "(--backend local); set it to use Azure Batch.",
            file=sys.stderr,
        )

    # --- %azbatch_status and %azbatch_teardown ---

    @line_magic("azbatch_fetch")  # type: ignore[arg-type]  # IPython's decorator factory infers its argument as Never
    def azbatch_fetch(self, line: str) -> None:
        """Bring a finished background run's names into the notebook: ``%azbatch_fetch NAME``.

        NAME is a variable holding the run (``--out-run NAME``, or ``_azbatch``) or the run's name.
        """
        name = line.strip() or "_azbatch"
        run = self._user_ns.get(name)
        if not isinstance(run, api.Run):
            run = next((r for r in reversed(self.session.runs) if name in (r.name, r.id)), None)
        if run is None:
            raise UsageError(f"{name!r} is neither a variable holding a run nor the name of one of this kernel's runs")
        if not run.done:
            raise UsageError(f"run {run.name} is still {run.status}: wait for it (run.wait()) and fetch again")
        with _usage_errors():
            names = run.fetch(self._user_ns)
        print(f"fetched {', '.join(names) or 'nothing'} from {run.name}")

    @line_magic("azbatch_status")  # type: ignore[arg-type]  # IPython's decorator factory infers its argument as Never
    def azbatch_status(self, line: str) -> None:
        """List the runs of every kernel on this machine (the ledger): name, backend, VM size, live phase,
        elapsed time, (Azure) cost, whose they are (this kernel, another, a kernel that is gone) and the run id."""
        if line.strip():
            raise UsageError("%azbatch_status takes no arguments")
        with _usage_errors():
            rows = self.session.status(self.settings())
        self._ledger_note()
        if not rows:
            print("no runs yet (on this machine's ledger)")
            return
        for text in status_lines(rows):
            print(text)

    def _ledger_note(self) -> None:
        """Say which ledger lines were skipped (torn by a full disk, written by something else), if any."""
        if note := self.session.ledger_note(self.settings()):
            print(f"warning: {note}", file=sys.stderr)

    @line_magic("azbatch_attach")  # type: ignore[arg-type]  # IPython's decorator factory infers its argument as Never
    def azbatch_attach(self, line: str) -> Any:
        """Follow a run of another kernel (one that was killed, or restarted) as if this cell had
        submitted it: ``%azbatch_attach RUN`` (its id or name, from ``%azbatch_status``). Shows its panel,
        prints its log from the start, and brings its names back when it ends (a sweep: its table)."""
        args = line.split()
        if len(args) != 1 or args[0].startswith("-"):
            raise UsageError("%azbatch_attach takes one run id or name (%azbatch_status lists them)")
        try:
            with _usage_errors():
                run = self.session.attach(args[0], settings=self.settings(), namespace=self._user_ns)
        finally:
            self._ledger_note()

        def start(on_update: UpdateCallback) -> api.Run:
            run.subscribe(on_update)
            return run

        return self._present(start, no_wait=False)

    @magic_arguments()
    @argument(
        "--all",
        action="store_true",
        dest="everything",
        help="Also end batchmagic-tagged jobs and pools that other kernels left on the Azure account, "
        "named pools included.",
    )
    @argument("--blobs", action="store_true", help="Also delete run data (bundles, logs, results).")
    @argument("--pools", action="store_true", help="Also delete the account's batchmagic named pools.")
    @argument(
        "--orphans",
        action="store_true",
        help="Also end the runs of kernels that are gone (killed, restarted) that still run or hold resources.",
    )
    @line_magic("azbatch_teardown")  # type: ignore[arg-type]  # IPython's decorator factory infers its argument as Never
    def azbatch_teardown(self, line: str) -> None:
        """End whatever this kernel started that still runs or holds resources, and say what was removed.

        Named pools stay (they go to zero nodes by themselves when idle) and are listed, unless
        ``--pools`` or ``--all`` is given. Safe to repeat: a second call removes nothing.
        """
        args = _parse(self.azbatch_teardown, line)
        backend = None
        if (args.everything or args.pools) and self.backend == "azure":
            with _usage_errors():
                backend = self.session.backend("azure", settings=self.settings())
        with _usage_errors():
            removed = self.session.teardown(
                everything=args.everything, blobs=args.blobs, backend=backend, pools=args.pools
            )
            if args.orphans:
                removed += self.session.teardown_orphans(self.settings(), blobs=args.blobs)
                self._ledger_note()
        if removed:
            for item in removed:
                print(f"removed {item}")
        else:
            print("nothing to tear down: no run of this kernel is running or holds resources")
        if not args.orphans:
            self._offer_orphans()
        if not (args.everything or args.pools):
            self._list_kept_pools()

    def _offer_orphans(self) -> None:
        """Name the runs that kernels now gone left running or holding resources, and how to end them."""
        try:
            orphans = self.session.orphans(self.settings())
        except Exception as err:  # a teardown must not fail on a listing
            print(f"could not read the ledger: {err}", file=sys.stderr)
            return
        self._ledger_note()
        for entry in orphans:
            print(
                f"run {entry.name} ({entry.run_id}, {entry.backend}) of a kernel that is gone may still run: "
                f"%azbatch_attach {entry.run_id} follows it, %azbatch_teardown --orphans ends it"
            )

    def _list_kept_pools(self) -> None:
        """Name the named pools a teardown leaves, when this kernel has used Azure."""
        for backend in self.session.backends_in_use():
            if not isinstance(backend, NamedPools):
                continue
            try:
                with backend.waited_on():  # a user waits on it: an unreachable Batch is said in seconds
                    kept = backend.list_pools()
            except Exception as err:  # a teardown must not fail on a listing
                print(f"could not list the named pools: {err}", file=sys.stderr)
                return
            for pool in kept:
                if pool.state == "active":
                    print(
                        f"kept pool {pool.describe()} (%azbatch_pool delete {pool.name}, or %azbatch_teardown --pools)"
                    )
            return

    # --- %azbatch_pool ---

    @magic_arguments()
    @argument("command", choices=["create", "ls", "resize", "delete"], help="What to do.")
    @argument("name", nargs="?", help="The pool's name (create, resize, delete).")
    @argument("nodes", nargs="?", help="resize: nodes to have now (0 lets them go once their tasks are done).")
    @argument("--vm", help="create: the nodes' VM size, e.g. Standard_E32_v3. Default: AzBatch.vm_size.")
    @argument("--max-nodes", type=int, default=1, help="create: the most nodes it grows to with tasks. Default 1.")
    @argument("--low-priority", action="store_true", help="create: low-priority (spot) nodes.")
    @argument(
        "--idle",
        default="20m",
        help="create: how long it keeps its nodes once no task is pending or running, e.g. 20m, 1h. Default 20m.",
    )
    @argument("--slots-per-node", type=int, default=1, help="create: tasks each node runs at once. Default 1.")
    @argument(
        "--inter-node",
        action="store_true",
        help="create: a pool for --distributed runs (inter-node communication, one task per node); scale it "
        "explicitly with resize N before a run and resize 0 after it.",
    )
    @line_magic("azbatch_pool")  # type: ignore[arg-type]  # IPython's decorator factory infers its argument as Never
    def azbatch_pool(self, line: str) -> None:
        """Named pools that cells share (``%%azbatch --pool NAME``) and that go to zero nodes when idle.

        ``%azbatch_pool create NAME --vm SIZE [--max-nodes N] [--low-priority] [--idle 20m]
        [--slots-per-node K]``, ``%azbatch_pool ls``, ``%azbatch_pool resize NAME N``,
        ``%azbatch_pool delete NAME``. The same as ``batchmagic pool ...`` in a terminal.
        """
        args = _parse(self.azbatch_pool, line)
        with _usage_errors():
            for text in pools.command(args, session=self.session, settings=self.settings()):
                print(text)


def _show(
    records: list[LogRecord],
    *,
    held: list[dict[str, Any]] | None = None,
    left_open: list[dict[str, Any]] | None = None,
) -> None:
    """What the cell printed and displayed, shown as the cell itself would have: on the cell's output.
    The display of the cell's last expression goes to ``held``, when given, with what it displays after it
    (figures left open): its value becomes the Out, and they follow it, as the notebook orders them. Figures
    left open by a cell with no value go to ``left_open``, when given: a cell that raised shows them after
    its traceback."""
    for record in records:
        if record.output is not None:
            marks = record.output.get("metadata", {})
            if held is not None and (held or marks.get(VALUE_MARK)):
                held.append(record.output)
            elif left_open is not None and marks.get(LEFT_OPEN_MARK):
                left_open.append(record.output)
            else:
                _replay(record.output)
            continue
        stream = sys.stderr if record.stream == "stderr" else sys.stdout
        stream.write(record.text)
    if records:
        sys.stdout.flush()
        sys.stderr.flush()


def _out_of_reach(held: list[dict[str, Any]]) -> None:
    """Show the cell's last expression as it displayed it, and what followed: its value did not come back
    to be the Out."""
    for output in held:
        _replay(output)
    held.clear()


def _parse(magic: Any, line: str) -> Any:
    """The magic line's flags, split as a shell splits them (``--name "my run"`` is ``my run``, quotes
    gone; ``--sweep k="1,2"`` is ``k=1,2``), then read by the magic's argument parser (whose errors are
    UsageErrors). IPython's own ``parse_argstring`` keeps the quote characters; this does not."""
    try:
        argv = shlex.split(line)
    except ValueError as err:  # "No closing quotation"
        raise UsageError(f"cannot read the magic line ({err}): close the quote, or quote the value whole") from None
    return magic.parser.parse_args(argv)


def _tuple_or_none(rows: list[dict[str, Any]] | None) -> tuple[dict[str, Any], ...] | None:
    return None if rows is None else tuple(rows)


def _replay(output: dict[str, Any]) -> None:
    """Show what the remote cell displayed, after what it printed before (an Out shows as display data)."""
    sys.stdout.flush()
    sys.stderr.flush()
    metadata = {k: v for k, v in output.get("metadata", {}).items() if k != LEFT_OPEN_MARK}
    publish_display_data(output.get("data", {}), metadata)


@contextmanager
def _usage_errors() -> Iterator[None]:
    """A user's mistake becomes IPython's UsageError: one line, no traceback."""
    try:
        yield
    except (CaptureError, ConfigError) as err:
        raise UsageError(str(err)) from None


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for item in caught:
                print(f"warning: {item.message}", file=sys.stderr)
