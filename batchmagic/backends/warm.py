"""The local backend's warm worker: runners forked from a process that already imported what the kernel did.

A fresh ``python -m batchmagic.runner`` imports numpy, pandas and scikit-learn again before the cell runs
(a second or two). A :class:`WarmWorker` is a process (:mod:`batchmagic.runner.warm`) that has imported the
runner and the third-party modules this kernel has imported, and forks each task's runner: the child
starts in milliseconds. Each request names the kernel's modules again, so the worker imports what the
kernel imported since. A forked runner has what a spawned one has: its own session and process group (so
the timeout and Cancel kill it as one), the task's working directory, environment and output files.

Its life (one worker costs the memory of what the kernel imported, often 200-500 MB):

- One per kernel process, interpreter and environment (:func:`shared_worker`), shared by every
  ``LocalBackend`` and ``Session`` of the process. A changed environment retires the worker of the old
  one: at most one per interpreter lives at a time.
- Started by the first run that would use it (not by making a backend or a Session): that run starts as
  a fresh process while the worker warms up beside it.
- Ended by ``Session.teardown`` (:func:`close_workers`), by this process's exit (atexit), and by itself
  when this process dies however it dies (the worker's parent-death signal, and its parent pid check).
- A runner still running when its worker ends goes on as a process of its own, as a fresh runner does
  when its kernel dies: its session and process group are its own, so the timeout and Cancel still end
  it, and :class:`Forked` then watches it through /proc and reads its exit from its result.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from batchmagic.runner.reap import alive, start_ticks

__all__ = ["WarmWorker", "Forked", "kernel_modules", "shared_worker", "close_workers", "live_workers", "ask"]

log = logging.getLogger("batchmagic.backends.warm")

#: Modules of a kernel that a runner never needs, and whose state must not be forked (event loops,
#: sockets, threads): the notebook's machinery.
_NOT_PRELOADED = frozenset(
    {
        "IPython", "ipykernel", "ipywidgets", "jupyter_client", "jupyter_core", "zmq", "tornado", "traitlets",
        "comm", "debugpy", "prompt_toolkit", "jedi", "parso", "pexpect", "ptyprocess", "matplotlib_inline",
        "jupyter_ui_poll", "widgetsnbextension", "nest_asyncio", "psutil", "azure", "docker", "batchmagic",
        "pytest", "_pytest", "pluggy", "urllib3", "requests", "certifi", "isodate",
    }
)  # fmt: skip


def kernel_modules() -> list[str]:
    """The third-party modules this process has imported (from site-packages: ``sklearn.tree`` as well as
    ``sklearn``, and the private modules a library loads on first use, like ``sklearn.utils._param_validation``),
    the notebook's own machinery aside: what a warm worker imports before it forks, a package before its
    modules. Read again only when ``sys.modules`` grew or shrank (a sweep asks once per task: 20-30 ms
    each to scan a kernel's thousands of modules)."""
    count = len(sys.modules)
    found = _scanned.get(count)
    if found is None:
        names = []
        for name, module in list(sys.modules.items()):
            parts = name.split(".")
            where = getattr(module, "__file__", None) or ""
            if parts[0] in _NOT_PRELOADED or parts[0].startswith("_") or "site-packages" not in where:
                continue
            names.append(name)
        found = sorted(names)
        _scanned.clear()
        _scanned[count] = found
    return list(found)


_scanned: dict[int, list[str]] = {}  # len(sys.modules) when kernel_modules last read it: what it found


class _Owner(Protocol):
    """The worker a runner was forked by, as :class:`Forked` sees it."""

    closed_on_purpose: bool


class Forked:
    """A runner forked by a warm worker: the parts of ``subprocess.Popen`` the local backend uses
    (``pid``, ``poll``, ``wait``), its exit code read from the worker's connection, or, when the worker
    ended first, from the runner's result once its process is gone. ``pid`` is the runner's pid as this
    process sees it (a warm container's runner has another one inside)."""

    def __init__(self, conn: socket.socket, reader: BinaryIO, pid: int, result: Path, worker: _Owner) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._conn = conn
        self._reader = reader  # the connection's buffered reader: it may hold the exit line already
        self._result = result
        self._worker = worker
        self._ticks = start_ticks(pid)
        self._ended = threading.Event()
        self._then: list[Callable[[], None]] = []  # called from the watcher thread once the runner ended
        self._then_lock = threading.Lock()
        threading.Thread(target=self._watch, name=f"warm-child-{pid}", daemon=True).start()

    def on_end(self, action: Callable[[], None]) -> None:
        """Call ``action`` once the runner has ended (its exit code set), from the thread that watches it:
        the local backend reaps a forked runner there, with no thread of its own per task (a thread's
        start waits for it to be scheduled, milliseconds on a busy machine at every task of a sweep)."""
        with self._then_lock:
            if not self._ended.is_set():
                self._then.append(action)
                return
        threading.Thread(target=action, daemon=True).start()  # it ended already: not in the caller's thread

    def _watch(self) -> None:
        try:
            line = self._reader.readline()
            code = int(json.loads(line)["exit"]) if line else None
        except (OSError, ValueError, KeyError):
            code = None
        finally:
            self._reader.close()  # the socket closes once its file does too
            self._conn.close()
        if code is None:
            code = self._orphaned()
        self.returncode = code
        with self._then_lock:
            self._ended.set()
            then, self._then = self._then, []
        for action in then:
            try:
                action()
            except Exception:  # noqa: BLE001 - the watcher's thread must say it, not die silently
                log.exception("after task runner %d ended", self.pid)

    def _orphaned(self) -> int:
        """The worker ended before this runner: it goes on (its own session), watched here until it ends."""
        if alive(self.pid, self._ticks):
            say = log.info if self._worker.closed_on_purpose else log.warning
            say("the warm worker ended while task runner %d ran: it goes on as a process of its own", self.pid)
        while alive(self.pid, self._ticks):
            self._ended.wait(0.1)
        return code_from_result(self._result)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"task runner {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


def code_from_result(result: Path) -> int:
    """The exit code of a runner that is not our child, from the result it wrote: 0 ok, 1 the cell failed,
    -9 no readable result (it ended without one, as a killed runner does)."""
    from batchmagic.protocol import TaskOutcome

    try:
        return 0 if TaskOutcome.from_bytes(result.read_bytes()).ok else 1
    except Exception:  # noqa: BLE001 - whatever is there, it is no result
        return -9


class WarmWorker:
    """One warm worker process for an interpreter and environment, started on first use (see the module).

    Parameters
    ----------
    python : str
        The interpreter runners run with (the worker is started with it).
    env : dict
        The worker's own environment (``PYTHONPATH`` to this batchmagic).
    """

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.python = python
        self.env = env
        self._dir = ""  # made when the worker starts: a backend that never runs a task leaves nothing behind
        self._socket = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._modules: list[str] = []  # the kernel's modules the worker was last told of
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.failed = False  # it could not start: tasks start as fresh processes from then on
        self.closed_on_purpose = False

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs (or starts), else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        """Start the worker in the background unless it runs (a worker that ended is started again);
        :meth:`fork` uses it once it is ready."""
        with self._lock:
            if self.failed or self.pid is not None:
                return
            self._discard()
            _close_at_exit()
            self.closed_on_purpose = False
            self._ready = threading.Event()
            self._dir = tempfile.mkdtemp(prefix="batchmagic-warm-")
            self._socket = os.path.join(self._dir, "worker.sock")
            self._modules = kernel_modules()
            self._process = process = subprocess.Popen(
                [self.python, "-m", "batchmagic.runner.warm", str(os.getpid()), self._socket, *self._modules],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=self._dir,
            )
        threading.Thread(target=self._await_ready, args=(process, self._ready), daemon=True).start()

    def _await_ready(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert process.stdout is not None
        # A module the worker imports may print first (a banner): read on to the worker's own line.
        said = b""
        while said != b"ready" and (line := process.stdout.readline()):
            said = line.strip()
        process.stdout.close()
        if said == b"ready":
            ready.set()
        elif process is self._process and not self.closed_on_purpose:
            log.warning("the warm worker did not start: tasks start as fresh processes")
            self.failed = True

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.pid is not None

    def fork(
        self, spec: Path, cwd: Path, env: dict[str, str], stdout: Path, stderr: Path, result: Path
    ) -> Forked | None:
        """A runner for ``spec`` forked by the worker; None when the worker is not ready (or failed): the
        caller then starts the runner as a fresh process (and the worker starts, for the next one)."""
        if not self.ready:
            self.start()
            return None
        request = task_request(spec, cwd, env, stdout, stderr)
        if request["modules"] == self._modules:
            del request["modules"]  # the worker has them: a kernel's 1,000-odd names, 40 kB a task, not again
        asked = ask(self._socket, request)
        if asked is None:
            return None
        self._modules = request.get("modules", self._modules)
        conn, reader, answer = asked
        return Forked(conn, reader, int(answer["pid"]), result, self)

    def close(self) -> None:
        """End the worker (its forked runners are sessions of their own: they go on); :meth:`start` may
        start it again."""
        with self._lock:
            self.closed_on_purpose = True
            process = self._process
            if process is not None and process.poll() is None:
                # One still importing the kernel's modules has forked nothing and is killed outright: a
                # SIGTERM waits for the import under way (a second or more for torch), or is lost in a
                # library's bare except, and the close waited its 5 s.
                if self._ready.is_set():
                    process.terminate()
                else:
                    process.kill()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._discard()

    def _discard(self) -> None:
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = self._socket = ""
        self._ready.clear()


def task_request(spec: Path, cwd: Path, env: dict[str, str], stdout: Path, stderr: Path) -> dict[str, Any]:
    """A worker's request for one task's runner (see batchmagic.runner.warm)."""
    return {
        "spec": str(spec), "cwd": str(cwd), "env": env, "stdout": str(stdout), "stderr": str(stderr),
        "modules": kernel_modules(),
    }  # fmt: skip


def ask(path: str, request: dict[str, Any]) -> tuple[socket.socket, BinaryIO, dict[str, Any]] | None:
    """Send ``request`` to the worker listening on ``path``: its connection (kept open: the exit line comes
    on it), the connection's reader and the worker's answer with a ``pid``; None, said in the log, when the
    worker cannot be reached or refuses (the caller then starts the runner as a fresh process)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    reader = conn.makefile("rb")
    try:
        conn.connect(path)
        conn.sendall(json.dumps(request).encode() + b"\n")
        answer = json.loads(reader.readline() or b"{}")
    except (OSError, ValueError) as err:
        reader.close()
        conn.close()
        log.warning("the warm worker could not fork a runner (%s): a fresh process instead", err)
        return None
    if "pid" not in answer:
        reader.close()
        conn.close()
        log.warning("the warm worker refused a task (%s): a fresh process instead", answer.get("error"))
        return None
    return conn, reader, answer


# This process's workers, by (interpreter, environment); a forked child of this process starts with none.
_workers: dict[tuple[str, tuple[tuple[str, str], ...]], WarmWorker] = {}
_workers_lock = threading.Lock()
_at_exit = threading.Event()


def shared_worker(python: str, env: dict[str, str]) -> WarmWorker:
    """This process's worker for ``python`` started with ``env`` (made, not started, on first call); the
    worker of the same interpreter under another environment is closed (the kernel's environment
    changed: its modules would have read the old one)."""
    key = (python, tuple(sorted(env.items())))
    with _workers_lock:
        worker = _workers.get(key)
        retired = [w for k, w in _workers.items() if k != key and k[0] == python]
        if worker is None:
            worker = _workers[key] = WarmWorker(python, env)
        for old in retired:
            del _workers[(old.python, tuple(sorted(old.env.items())))]
    for old in retired:
        old.close()
    return worker


def live_workers() -> list[WarmWorker]:
    """This process's workers that run now."""
    with _workers_lock:
        return [w for w in _workers.values() if w.pid is not None]


def close_workers(python: str | None = None) -> None:
    """End this process's workers (of ``python`` only, when given); the next run starts one again."""
    with _workers_lock:
        workers = [w for (p, _), w in _workers.items() if python is None or p == python]
    for worker in workers:
        worker.close()


def _close_at_exit() -> None:
    if not _at_exit.is_set():
        _at_exit.set()
        atexit.register(close_workers)


def _forget_in_child() -> None:
    """A fork of this process (multiprocessing's) owns none of its parent's workers: it must never close them."""
    global _workers_lock
    _workers.clear()
    _workers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
