"""The runner's steps: read the spec, rebuild the namespace, run the cell, write the result."""

from __future__ import annotations

import builtins
import codecs
import contextlib
import importlib
import io
import json
import linecache
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from batchmagic import data
from batchmagic.channel import Channel, open_channel
from batchmagic.distributed import rank_of
from batchmagic.package.bundle import CELL_FILENAME, BundleError, BundleReader, Manifest
from batchmagic.package.randomness import apply_state, state_after
from batchmagic.protocol import (
    ObjectRef,
    Progress,
    SharedOutputs,
    SpecVersionError,
    TaskError,
    TaskOutcome,
    TaskSpec,
    sha256_file,
)
from batchmagic.runner import display as rich
from batchmagic.runner import plots
from batchmagic.runner.changes import as_received, changed_in_place
from batchmagic.runner.folder import Snapshot, prepare_folder, upload_changed
from batchmagic.runner.ipyshell import NoIPythonError, ipython_cell
from batchmagic.runner.logsink import FdCapture, LogSink, TeeStream
from batchmagic.runner.reap import become_subreaper, end_descendants
from batchmagic.runner.transfer import fetch_inputs, upload_outputs

if TYPE_CHECKING:
    from batchmagic.runner.gpu import GpuSample, GpuSampler

EXIT_OK = 0
EXIT_CELL_ERROR = 1
EXIT_SETUP_ERROR = 2
RESULT_PATIENCE = 120.0  # seconds the runner keeps trying to write its result through a storage outage
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it
EXIT_PREFLIGHT = 3  # the GPUs the machine should have are not visible: the cell did not run


#: Whether this runner is the subreaper of its descendants (:func:`run_task`): then what its cell left in its
#: process group is its descendant, and :func:`_end_stragglers` need not signal the group (itself included).
_SUBREAPER = False


class _Terminated(BaseException):
    """SIGTERM arrived (cancel or timeout): unwind so the log is flushed and a result written."""


def _forget_wakeup() -> None:
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # forked from a thread other than the main one: that is this child's main thread now
        pass


class _SigtermHandler:
    """Raise :class:`_Terminated` in the main thread, once, however SIGTERM lands.

    Python runs a signal handler between bytecodes, so a SIGTERM that lands just before a blocking call
    (the ``time.sleep(600)`` after a ``print``) waits until the call returns: a cancel would sit out the
    sleep and then be killed without a result. A watcher thread reads the signal's wakeup byte and, until
    the handler has run, signals the main thread again: that interrupts the call, and the handler runs.
    """

    def __init__(self) -> None:
        self.ran = False
        self._main = threading.main_thread().ident or 0

    def install(self) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self)
        # A process the cell forks (multiprocessing's workers) must not write its own SIGTERM into this
        # pipe: a Pool's workers are ended by one, and the runner would take it for its own.
        os.register_at_fork(after_in_child=_forget_wakeup)
        threading.Thread(target=self._watch, args=(read_end,), name="batchmagic-sigterm", daemon=True).start()

    def __call__(self, signum: int, frame: Any) -> None:
        if self.ran:
            return  # the watcher's nudge, or a second SIGTERM during the unwinding: once is enough
        self.ran = True
        raise _Terminated("the run was terminated (cancelled or out of time)")

    def _watch(self, read_end: int) -> None:
        while signal.SIGTERM not in os.read(read_end, 64):
            pass
        while not self.ran:
            time.sleep(0.2)
            if not self.ran:
                signal.pthread_kill(self._main, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--spec" and not argv[1].startswith("-"):
        return run_task(argv[1])  # as every backend starts it: no parser to build (2 ms of a runner's start)
    import argparse  # any other form: its --help, its errors

    parser = argparse.ArgumentParser(prog="python -m batchmagic.runner", description=__doc__)
    parser.add_argument("--spec", required=True, help="path or URL of the task spec (JSON)")
    args = parser.parse_args(argv)
    return run_task(args.spec)


#: Objects checked against their hash by the warm worker that forked this runner, by their file's path,
#: size, modification time and inode (:func:`check_objects`): a file whose stamp is the same was not touched.
_CHECKED: dict[tuple[str, int, int, int], str] = {}


def _stamp(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns, st.st_ino


def check_objects(where: str) -> None:
    """In a warm worker, before it forks the runner of the spec at ``where``: hash each big object the task
    reads from a store on this machine, once per file and stamp (:data:`_CHECKED`). The runners it forks
    then trust a file whose stamp is unchanged, as the client's hash cache does, instead of each hashing
    it again: the 21 tasks of a sweep over a 1 GB DataFrame each hashed it, 2-3 s apiece."""
    try:
        objects = TaskSpec.from_json(_read_spec(where)).objects.values()
    except Exception:  # noqa: BLE001 - the runner reads the spec itself and says what is wrong with it
        return
    for obj in objects:
        path = open_channel(obj.url).local_path()
        try:
            stamp = _stamp(path) if path is not None else None
            if stamp is not None and stamp not in _CHECKED and stamp[1] == obj.size:
                _CHECKED[stamp] = sha256_file(Path(stamp[0]))
        except OSError:
            continue  # the runner finds it missing and says so


def _sha256_of(path: Path) -> str:
    """``path``'s sha256: from :data:`_CHECKED` while the file is as the warm worker hashed it."""
    try:
        known = _CHECKED.get(_stamp(path))
    except OSError:
        known = None
    return known or sha256_file(path)


def warm_up() -> None:
    """Do once, in a warm worker before it forks runners, what every runner would do on first use: a
    forked runner then starts with it done (:func:`run_task`)."""
    codecs.lookup("cp437")  # zipfile reads the bundle's member names with it (an import on first use)
    import cloudpickle  # noqa: F401 - a runner imports it when it pickles (see _collect)


def run_task(where: str, *, raw_spec: bytes | None = None, bundle_copy: Path | None = None) -> int:
    """Run the task of the spec at ``where`` (a path or URL) and write its result; the exit code. What
    ``python -m batchmagic.runner --spec WHERE`` does, without a command line to parse (a warm worker's
    forked runner calls it: argparse's parser costs a runner 2 ms, a tenth of its start).

    A distributed run's node supervisor, which forks its ranks, passes what it has read once for the node:
    ``raw_spec``, the spec's bytes, and ``bundle_copy``, the run's bundle on this node's disk (read there,
    not downloaded again by each rank)."""
    # The task's command line runs with ``python -P``: the working directory holds the notebook folder's
    # skeleton (a rerun finds the first attempt's), and a folder named like a package there must never
    # stand in for the runner's own. The cell, as in the kernel, has the working directory first.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # What the cell leaves behind in a session of its own stays this runner's descendant (it is re-parented
    # here, not to a warm worker or a container's PID 1 that outlive the run): _end_stragglers ends it.
    global _SUBREAPER
    _SUBREAPER = become_subreaper()

    raw = raw_spec if raw_spec is not None else _read_spec(where)
    try:
        spec = TaskSpec.from_json(raw)
    except SpecVersionError as err:
        _refuse(raw, err)
        return EXIT_SETUP_ERROR
    if bundle_copy is not None:
        spec = replace(spec, bundle=bundle_copy.as_uri())  # checked against its manifest's hash all the same
    spill = os.getcwd() if os.access(os.getcwd(), os.W_OK) else None  # the node's disk, for a log backlog
    log_channel = open_channel(spec.log)
    log = LogSink(log_channel, interval=spec.log_interval, spill_dir=spill, close_timeout=spec.log_patience).start()
    try:
        again = log_channel.size() > 0  # the log has lines already: Batch runs this task again (retry, requeue)
    except OSError:
        again = False
    if again:
        log.add("e", "[batchmagic] the task started again (a retry, or its node restarted): its output starts over\n")
    result_channel = open_channel(spec.result)
    started = time.time()
    try:
        _SigtermHandler().install()  # in the try: a cancel that lands while it starts its thread is handled
        code, outcome = _run(spec, log)
    except _Terminated as err:
        code = EXIT_TERMINATED
        outcome = TaskOutcome(ok=False, phase="terminated", error=_where_terminated(err))
    except BaseException as err:  # the runner's own failure still ends in a result
        code = EXIT_SETUP_ERROR
        said = isinstance(err, NoIPythonError | WorkdirNotWritableError)  # all there is to say: no traceback
        error = _describe(err, None if said else err.__traceback__, cell_only=False)
        outcome = TaskOutcome(ok=False, phase="setup", error=error)
    finally:
        log.close()
    outcome = replace(
        outcome, task_id=spec.task_id, started=started, ended=time.time(), log_errors=log.errors, log_tail=log.tail
    )
    _write_result(result_channel, outcome)
    return code


def _refuse(raw: bytes, err: SpecVersionError) -> None:
    """One line on stderr (Batch keeps it), and as the task's result when the spec still names one:
    a newer client reads this runner's outcome."""
    print(f"batchmagic runner: {err}", file=sys.stderr)
    try:
        url = json.loads(raw)["result"]
        _write_result(
            open_channel(url), TaskOutcome(ok=False, phase="setup", error=TaskError("SpecVersionError", str(err)))
        )
    except Exception:  # nothing more can be said through a spec we cannot read
        pass


def _read_spec(where: str) -> bytes:
    if "://" in where:
        return open_channel(where).read()
    return Path(where).read_bytes()


def _run(spec: TaskSpec, log: LogSink) -> tuple[int, TaskOutcome]:
    os.environ.update(spec.env)  # --env: from the spec, never from the task definition
    # Before anything is downloaded: a GPU run whose container sees no GPU would run the cell on the CPU.
    if spec.gpus > 0:  # runner.gpu (nvidia-smi, its sampler) is imported by a runner that has GPUs only
        from batchmagic.runner.gpu import preflight

        problem = preflight(spec.gpus, spec.machine)
        if problem:
            log.add("e", f"[batchmagic] {problem}\n")
            return EXIT_PREFLIGHT, TaskOutcome(ok=False, phase="preflight", error=TaskError("GpuPreflight", problem))
    # The runner's own files (bundle, sources, big objects) go in a directory of their own, removed at
    # the end: in the task's working directory, unless this user cannot write it (a runner started as
    # another user than the task's, who owns it): then the temp dir.
    cwd = os.getcwd()
    workdir = Path(tempfile.mkdtemp(prefix=".azbatch-", dir=cwd if os.access(cwd, os.W_OK) else None))
    try:
        return _run_in(spec, log, cwd, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class WorkdirNotWritableError(PermissionError):
    """The runner cannot write the task's working directory: it runs as another user than its owner."""


def _check_writable(cwd: str) -> None:
    """The notebook folder's files and skeleton go in the task's working directory: say so plainly when this
    process cannot write it, before the first file fails with a bare PermissionError."""
    if not os.access(cwd, os.W_OK):
        raise WorkdirNotWritableError(
            f"the task's working directory {cwd} is not writable by this runner (uid {os.getuid()}; its owner "
            f"is uid {os.stat(cwd).st_uid}), so the notebook folder's files cannot be placed there: the runner "
            "must run as the user who owns it (the task's user, as Azure Batch and the local backend run a task)"
        )


def _place_files(spec: TaskSpec, log: LogSink, cwd: str) -> Snapshot:
    """The task's --input files and the notebook folder's skeleton in its working directory; the folder as
    it is then (what the cell changes in it is sent back)."""
    if spec.inputs or spec.folder is not None:
        _check_writable(cwd)
    if spec.inputs:
        fetch_inputs(spec.inputs, Path(cwd), concurrency=spec.input_concurrency, progress=progress(log))
    return prepare_folder(spec.folder, Path(cwd)) if spec.folder is not None else {}


def _run_in(spec: TaskSpec, log: LogSink, cwd: str, workdir: Path) -> tuple[int, TaskOutcome]:
    reader, bundle_path = _open_bundle(spec, workdir)
    manifest = reader.manifest

    source = reader.cell()
    _cache_lines(source, manifest.first_line)
    rich.prepare()  # before the values load: unpickling one may import matplotlib or IPython
    plots.apply(manifest.plot_settings)  # the notebook's style, rc and figure formats, once matplotlib is imported
    namespace = _namespace(reader, spec, workdir)
    reader.close()
    # A last expression's value is displayed, as in a notebook.
    if manifest.ipython:  # %time, !cmd: compiled as the kernel compiles it; tracebacks still show the cell's text
        source = ipython_cell(source, namespace)
    codes = rich.compile_cell(source, CELL_FILENAME, first_line=manifest.first_line)
    before = _place_files(spec, log, cwd)

    sampler = _gpu_sampler(spec, log)
    apply_state(_random_state(manifest, spec))  # the notebook's seeded generators, as if the cell ran there
    saved = sys.stdout, sys.stderr
    fds = FdCapture(log).__enter__()  # what C code and subprocesses write to fd 1/2 reaches the log too
    sys.stdout = TeeStream(fds.stdout, log, "o")
    sys.stderr = TeeStream(fds.stderr, log, "e")
    capture = rich.Capture(lambda output: log.add("d", output), keep_value=keeps_partial(spec))
    failed: TaskOutcome | None = None  # the cell raised, or exited non-zero
    try:
        with capture.active():
            try:
                for code in codes:
                    exec(code, namespace)
            except SystemExit as err:
                if err.code not in (None, 0):  # sys.exit(n): a non-zero exit of the cell, not an error
                    sys.stdout.flush()
                    failed = TaskOutcome(ok=False, phase="exit", error=TaskError("SystemExit", repr(err.code)))
            finally:
                capture.show_figures(only_new=True)  # figures left open, as the inline backend shows them
    except _Terminated:
        raise  # stopped mid-statement: nothing of the namespace is kept (see _after_cell)
    except BaseException as err:
        sys.stdout.flush()
        failed = TaskOutcome(ok=False, error=_describe(err, err.__traceback__))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved
        try:
            _end_stragglers()  # before the pipes close: a child still holding them would hold the runner too
        finally:  # a SIGTERM it held is raised as it ends
            fds.__exit__(None, None, None)
            if sampler is not None:
                sampler.stop()
    done = _after_cell(failed, namespace, manifest, spec, bundle_path, log)
    exit_code = EXIT_OK if failed is None else EXIT_CELL_ERROR
    if not sends_back(spec):  # its verdict only: what it printed and displayed is in its log
        return exit_code, done
    done = replace(done, displays=tuple(capture.outputs))
    if failed is None and capture.value is not rich.NO_VALUE:
        done = _with_value(done, capture.value, namespace, _received(manifest, spec))
    return exit_code, _with_files(done, spec, Path(cwd), workdir, before)


def _received(manifest: Manifest, spec: TaskSpec) -> tuple[str, ...]:
    """The names whose values the notebook holds too: a value the cell received and did not change (with
    ``--out``, none: without it, every value it changed comes back in outputs, or is skipped)."""
    return () if manifest.outputs is not None else (*manifest.values, *spec.objects)


def _cache_lines(source: str, first_line: int) -> None:
    """The cell's lines for tracebacks, numbered as where it was written (under a %%azbatch line, its first
    line is line 2)."""
    padding = ["\n"] * (max(1, first_line) - 1)
    linecache.cache[CELL_FILENAME] = (len(source), None, padding + source.splitlines(True), CELL_FILENAME)


def _open_bundle(spec: TaskSpec, workdir: Path) -> tuple[BundleReader, Path]:
    """The cell's bundle, checked, and its file: read where it is in a store on this machine (the local
    backend's: every task of a sweep reads the same file, none copies it), else downloaded into ``workdir``.
    Its local sources are importable."""
    channel = open_channel(spec.bundle)
    bundle_path = channel.local_path()
    if bundle_path is None:
        bundle_path = workdir / "bundle.zip"
        channel.download_to(bundle_path)
    reader = BundleReader(bundle_path)
    reader.verify()
    if reader.manifest.sources:
        reader.extract_sources(workdir / "src")
        sys.path.insert(0, str(workdir / "src"))
    return reader, bundle_path


def _namespace(reader: BundleReader, spec: TaskSpec, workdir: Path) -> dict[str, Any]:
    """The namespace the cell runs in: its modules, its values (shipped, and big ones by content), a
    sweep task's parameters; ``batchmagic.data`` given the run's own read URLs."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name, module in reader.manifest.modules.items():
        namespace[name] = importlib.import_module(module)
    for name in reader.manifest.values:
        with reader.open_value(name) as f:
            namespace[name] = pickle.load(f)  # noqa: S301 - the notebook's own values, checked by hash
    for name, obj in spec.objects.items():
        namespace[name] = _load_object(name, obj, workdir)
    data.grant(spec.grants)  # batchmagic.data reads az:// paths with the run's own SAS
    for name, text in spec.params.items():
        namespace[name] = pickle.loads(bytes.fromhex(text))  # noqa: S301 - the sweep's, in the run's spec
    return namespace


#: The largest pickled last-line value sent back to be the notebook's Out (a bigger one stays its display):
#: a name the cell binds comes back whatever its size, but a value shown in passing (``model.predict(X)``)
#: should not double the runner's memory and the result's size.
VALUE_LIMIT = 64 * 2**20


def _with_value(done: TaskOutcome, value: Any, namespace: dict[str, Any], received: Iterable[str]) -> TaskOutcome:
    """The cell's last expression's value in its outcome, to be the notebook's ``Out[n]``: a name that holds
    that very object, coming back or ``received`` and left alone (``df`` on the last line travels once, or
    not at all), else the value pickled. One that cannot be pickled, or is over :data:`VALUE_LIMIT`, stays a
    display, as before (the client shows its ``execute_result``)."""
    unchanged = [name for name in received if name not in done.outputs and name not in done.skipped]
    for name in (*done.outputs, *unchanged):
        if namespace.get(name) is value:
            return replace(done, value_name=name)
    import cloudpickle  # see _collect

    try:
        pickled = cloudpickle.dumps(value, protocol=5)
    except Exception:  # a lock, a generator: what the notebook shows of it is the display already made
        return done
    return replace(done, value=pickled) if len(pickled) <= VALUE_LIMIT else done


def keeps_partial(spec: TaskSpec) -> bool:
    """Whether a cell that raised sends back what it bound and changed before the raise, as the notebook
    keeps it: a single cell does; a sweep's task does not (its row shows the error), nor a distributed
    run's rank (when one rank fails the others are stopped mid-statement: no state worth keeping)."""
    return not spec.params and rank_of(spec.task_id) is None


def sends_back(spec: TaskSpec) -> bool:
    """Whether the task's names, value, displays and files go back to the notebook: not a distributed run's
    ranks other than 0. Rank 0's names come back; the others' outcome is only checked, so each writes its
    verdict, its error and its log's tail, never a pickle of its names (16 ranks each pickling and uploading
    a 2 GB state dict that no one reads) nor its --output files and the notebook folder's changes."""
    rank = rank_of(spec.task_id)
    return rank is None or rank == 0


def _random_state(manifest: Manifest, spec: TaskSpec) -> str:
    """The notebook's global generators, for a single cell only: a sweep's tasks and a run's ranks draw
    apart (each the same numbers would be no sweep)."""
    return manifest.random_state if keeps_partial(spec) else ""


def _after_cell(
    failed: TaskOutcome | None,
    namespace: dict[str, Any],
    manifest: Manifest,
    spec: TaskSpec,
    bundle_path: Path,
    log: LogSink,
) -> TaskOutcome:
    """The cell's outcome: its names back; when it raised (or exited), its error, with the names it bound
    and changed before the raise where :func:`keeps_partial` (the same ``--out`` and checks as a success)."""
    if not sends_back(spec):
        return failed if failed is not None else TaskOutcome(ok=True)
    if failed is None:
        return _names_back(namespace, manifest, spec, bundle_path)
    if not keeps_partial(spec):
        return failed
    try:
        kept = _names_back(namespace, manifest, spec, bundle_path, raised=True)
    except Exception as err:  # the cell's error is what matters: it is never lost to this
        log.add("e", f"[batchmagic] what the cell did before it raised cannot come back: {err}\n")
        return failed
    return replace(
        failed,
        outputs=kept.outputs,
        skipped=kept.skipped,
        deleted=kept.deleted,
        changed=kept.changed,
        random_state=kept.random_state,
    )


def _names_back(
    namespace: dict[str, Any], manifest: Manifest, spec: TaskSpec, bundle_path: Path, *, raised: bool = False
) -> TaskOutcome:
    """The names the cell bound, and the values it read and changed in place (see runner.changes).
    ``raised``: the cell stopped early, so a name it reads and would have bound after the raise may still
    hold what it received: such a name stays as it is in the notebook."""
    names = manifest.outputs if manifest.outputs is not None else manifest.bound
    outputs, skipped = _collect(namespace, names, together=not raised)  # raised: each compared to what it received

    def received(name: str) -> bytes | None:
        if name in manifest.values:
            with closing(BundleReader(bundle_path)) as reader, reader.open_value(name) as f:
                return f.read()
        obj = spec.objects.get(name)
        return open_channel(obj.url).read() if obj is not None else None

    if raised:
        for name in as_received(outputs, received, {k: obj.sha256 for k, obj in spec.objects.items()}):
            del outputs[name]
    tracked = {k: v for k, v in manifest.tracked.items() if k not in outputs and k not in spec.params}
    changed, unsent = changed_in_place(namespace, tracked, received, wanted=manifest.outputs)
    return TaskOutcome(
        ok=True,
        outputs={**outputs, **changed},
        skipped={**skipped, **unsent},
        deleted=tuple(n for n in manifest.deleted if n not in namespace),
        changed=tuple(changed),
        random_state=state_after(_random_state(manifest, spec)),
    )


def _end_stragglers() -> None:
    """End the processes the cell started and left running (``Popen`` without a wait, a server started in a
    session of its own): they must not outlive the cell (ports, GPU memory) nor keep its output pipes open.
    Every descendant of the runner: a runner is a subreaper (:func:`run_task`), so what a cell's child left
    behind in a session of its own is its descendant too; where it cannot be one, also those in the runner's
    process group, when it leads one (the local backend starts it in a session of its own).
    Also on SIGTERM (cancel, timeout): the unwinding of :class:`_Terminated` passes here. A SIGTERM that
    comes meanwhile (up to ``reap.TERM_GRACE`` seconds) waits until this is done, then is raised again."""
    own = not _SUBREAPER and os.getpgid(0) == os.getpid()  # not a group leader: the group is someone else's
    held: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    wakeup = signal.set_wakeup_fd(-1)  # nor may _SigtermHandler's watcher see a held one and pass it on
    try:
        if own:  # the group holds this runner too: its own SIGTERM is the first one held
            with contextlib.suppress(OSError):
                os.killpg(os.getpid(), signal.SIGTERM)
        end_descendants()
    finally:
        signal.set_wakeup_fd(wakeup, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, previous)
    if len(held) > own and not getattr(previous, "ran", False):
        signal.raise_signal(signal.SIGTERM)  # to the handler it was meant for: the run ends as terminated


def _load_object(name: str, obj: ObjectRef, workdir: Path) -> Any:
    """A large shipped value: downloaded in parallel ranges (or read where it is in a store on this
    machine), checked against its hash, unpickled."""
    channel = open_channel(obj.url)
    path = channel.local_path()
    copy = workdir / f"{name}.pkl"
    if path is None:
        path = copy
        channel.download_to(path, size=obj.size)
    if _sha256_of(path) != obj.sha256:
        raise BundleError(f"the object holding `{name}` does not match its hash: it was altered or truncated")
    with open(path, "rb") as f:
        value = pickle.load(f)  # noqa: S301 - checked against its hash above
    if path == copy:
        path.unlink()
    return value


def progress(log: LogSink) -> Callable[[str], None]:
    """Transfer progress travels as log records of their own stream, which the panel shows."""
    return lambda text: log.add("p", text)


def _gpu_sampler(spec: TaskSpec, log: LogSink) -> GpuSampler | None:
    """The GPUs' sampler, started: one per node (the ranks of a distributed run share its GPUs, and its first
    rank samples them all); None without GPUs."""
    if spec.gpus <= 0 or os.environ.get("LOCAL_RANK", "0") != "0":
        return None
    from batchmagic.runner.gpu import GpuSampler  # as the preflight's: a runner that has GPUs only

    return GpuSampler(_gpu_progress(log), interval=spec.gpu_interval).start()


def _gpu_progress(log: LogSink) -> Callable[[list[GpuSample]], None]:
    """GPU samples travel as progress records too: ``{"phase": "gpu", "gpus": [[index, util, used, total]]}``."""
    return lambda samples: log.add("p", Progress("gpu", gpus=tuple(tuple(s.to_list()) for s in samples)).to_json())


def _with_files(outcome: TaskOutcome, spec: TaskSpec, cwd: Path, workdir: Path, before: Snapshot) -> TaskOutcome:
    """The outcome with the --output files uploaded, and the files the cell created or changed in the
    notebook's folder (also after a failed cell: they may say why)."""
    if spec.outputs is not None:
        files, unmatched = upload_outputs(spec.outputs, cwd, skip=workdir)
        outcome = replace(outcome, files=files, unmatched=unmatched)
    if spec.folder is not None:
        written = upload_changed(spec.folder, cwd, before, uploaded=(path for path, _size in outcome.files))
        outcome = replace(outcome, written=written)
    return outcome


def _collect(
    namespace: dict[str, Any], names: list[str], *, together: bool = True
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Pickle each output separately, so one that can't travel doesn't sink the others; those that share
    objects (``fig, ax = plt.subplots()``), when ``together``, as one :class:`~batchmagic.protocol.SharedOutputs`
    that each of their entries holds, so that what they share stays shared."""
    outputs: dict[str, bytes] = {}
    skipped: dict[str, str] = {}
    names = [name for name in names if name in namespace]
    if not names:
        return outputs, skipped
    # Imported by a runner that pickles only: 5 ms of a runner's start that a cell that sends nothing back
    # does without. Unpickling needs no import of it (cloudpickle.load is pickle.load).
    import cloudpickle

    held: dict[str, list[Any]] = {}  # the objects each output holds that another could hold too
    # Noting costs a Python call per object pickled (about 3 times a plain pickle's time for a million small
    # objects): only where two outputs could share anything.
    together = together and len(names) > 1
    for name in names:
        value = namespace[name]
        if type(value).__module__.startswith("ipywidgets."):
            skipped[name] = "a widget cannot stay live after the remote cell ends; make it in a cell of its own"
            continue
        hung = getattr(value, "widget", None) if isinstance(value, types.FunctionType) else None
        if hung is not None and type(hung).__module__.startswith("ipywidgets."):
            del value.widget  # interact(f) hangs its widget on f: f comes back, its dead widget does not
        try:
            outputs[name], held[name] = _pickle_noting(value, noting=together)
        except Exception as err:
            skipped[name] = f"{type(value).__name__} cannot be pickled: {err}"
    for group in _sharing(held):
        try:
            shared = cloudpickle.dumps(SharedOutputs({name: namespace[name] for name in group}), protocol=5)
        except Exception:  # they went apart above: each comes back on its own
            continue
        outputs.update(dict.fromkeys(group, shared))
    return outputs, skipped


#: Objects whose sharing between two outputs is noted: containers and instances (not numbers, strings,
#: tuples, classes, functions or modules, which are immutable or travel by reference), at most this many.
_NOTED_MAX = 200_000


def _noting_pickler() -> type:
    """cloudpickle's pickler, noting the mutable objects a value holds (kept alive meanwhile: no id is
    reused); made when first needed, as cloudpickle is imported (see _collect)."""
    global _NOTING
    if _NOTING is None:
        import cloudpickle

        class NotingPickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle has no type hints
            def __init__(self, file: io.BytesIO, noted: list[Any]) -> None:
                super().__init__(file, protocol=5)
                self.noted = noted

            def persistent_id(self, obj: Any) -> None:
                if len(self.noted) < _NOTED_MAX and (
                    isinstance(obj, (list, dict, set, bytearray))
                    or (hasattr(obj, "__dict__") and not _by_reference(obj))
                ):
                    self.noted.append(obj)
                return None

        _NOTING = NotingPickler
    return _NOTING


_NOTING: type | None = None


def _by_reference(obj: Any) -> bool:
    return isinstance(obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType))


def _pickle_noting(value: Any, *, noting: bool) -> tuple[bytes, list[Any]]:
    import cloudpickle  # see _collect

    if not noting:
        return cloudpickle.dumps(value, protocol=5), []
    buffer, noted = io.BytesIO(), [value]
    _noting_pickler()(buffer, noted).dump(value)
    return buffer.getvalue(), noted


def _sharing(held: dict[str, list[Any]]) -> list[list[str]]:
    """The groups of outputs that hold an object in common (two names of one list, a figure and its axes)."""
    owner: dict[int, str] = {}
    group: dict[str, str] = {name: name for name in held}

    def root(name: str) -> str:
        while group[name] != name:
            name = group[name]
        return name

    for name, objects in held.items():
        for obj in objects:
            other = owner.setdefault(id(obj), name)
            if other != name:
                group[root(name)] = root(other)
    groups: dict[str, list[str]] = {}
    for name in held:
        groups.setdefault(root(name), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _describe(err: BaseException, tb: TracebackType | None, *, cell_only: bool = True) -> TaskError:
    """Type name, message and a traceback that starts at the cell's own frames."""
    if cell_only:
        while tb is not None and tb.tb_frame.f_code.co_filename != CELL_FILENAME:
            tb = tb.tb_next
        last = tb
        while last is not None and last.tb_next is not None:
            if last.tb_next.tb_frame.f_code.co_filename == __file__:  # our SIGTERM handler's frame
                last.tb_next = None
            else:
                last = last.tb_next
    cls = type(err)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    import traceback  # only when there is an error to describe

    return TaskError(name, str(err), tuple(traceback.format_exception(cls, err, tb)))


def _where_terminated(err: _Terminated) -> TaskError:
    """Where the cell was when SIGTERM came: its own frames only (the signal may land in the runner's
    log writer or handler, which say nothing to the user)."""
    import traceback  # as _describe's

    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == CELL_FILENAME]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames), f"{err}\n"]
    return TaskError("Terminated", str(err), tuple(lines))


def _write_result(channel: Channel, outcome: TaskOutcome) -> None:
    try:
        data = outcome.to_bytes()
    except Exception as err:  # e.g. a display that is not plain data
        data = TaskOutcome(ok=False, phase="result", error=_describe(err, None, cell_only=False)).to_bytes()
    deadline = time.monotonic() + RESULT_PATIENCE
    pause = 0.5
    while True:  # a whole-blob write is safe to repeat: wait out a storage outage rather than lose the run
        try:
            channel.write(data)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
