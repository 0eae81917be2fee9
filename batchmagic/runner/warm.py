"""A warm worker: a process that has imported what the kernel imported and forks a fresh runner per task.

``python -m batchmagic.runner.warm PARENT SOCKET [MODULE ...]`` first ties its life to its parent (the
kernel, pid ``PARENT``): on Linux the kernel sends it a signal when the parent dies (``PR_SET_PDEATHSIG``),
and everywhere its loop checks that its parent is still ``PARENT`` (which also covers a parent that died
before the signal was asked for). Then it imports the runner and the modules named, and listens on the
Unix socket ``SOCKET`` (multiprocessing's forkserver is the model). Each connection asks for one task, as
one JSON line: ``{"spec", "cwd", "env", "stdout", "stderr", "modules"}``. The worker first imports the
``modules`` it has not imported yet (the kernel imported more since), then forks. The child starts a
session of its own (its own process group: the backend's timeout and Cancel kill it as one), takes the
task's working directory, environment and output files, and runs the runner as
``python -m batchmagic.runner --spec SPEC`` would, in a process that paid for no import. The worker
answers ``{"pid": N}`` once the child leads its session (a cancel sent at once finds its process group),
and ``{"exit": CODE}`` when the child ends (negative: the signal that ended it), then closes the connection.
The worker is a subreaper: what a runner killed outright (SIGKILL) left behind comes to it, and it kills
that (:func:`batchmagic.runner.reap.end_orphans`); a runner ends what its cell left itself (it is the
subreaper of its own descendants).

When the worker ends (its parent died, or SIGTERM) it removes its socket and folder; a runner still
running goes on, as a fresh runner does when its kernel dies: the client that started it watches it by
its pid and reads its result (batchmagic.backends.warm.Forked), or a later client adopts it.

In a container (``--container`` runs: batchmagic.backends.warm_container) the kernel is no process the
worker can see, so ``PARENT`` is 0 and three more request fields serve it:

- ``{"hold": true}``: this connection is the kernel's lifeline. The worker answers ``{"held": PID}`` and
  keeps it; when it ends (the kernel closed it, or died and Linux closed it), the worker stops taking
  requests, waits for the runners it forked (they would die with it: it is the container's PID 1), and
  ends, and the container with it.
- ``"go": true`` on a task: the child waits, in its own session already, until the client has found its
  pid as the host sees it and says ``go`` (or ``stop``: the child is killed) on the connection; a runner
  that ended before the client looked would leave it with a pid it cannot check.
- ``"merge_env": true``: the task's variables are added to the worker's own environment (the image's),
  as ``docker run -e`` adds them, instead of replacing it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

from batchmagic.runner.reap import become_subreaper, end_orphans

__all__ = ["serve", "main", "await_session", "child_exit"]

#: The signal Linux sends the worker when the thread that started it ends (PR_SET_PDEATHSIG): a thread,
#: not the process, so its handler checks whether the parent process is really gone.
PARENT_DIED = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1
#: How long a forked child waits for its client's go (a client that died meanwhile never sends it).
GO_SECONDS = 30.0
#: How long a worker with no parent to watch (PARENT 0: in a container) waits for its lifeline once ready:
#: a kernel that died while the container started never sends it, and nothing else would end the worker.
#: Its client connects as soon as the worker listens (it polls every 50 ms).
HOLD_SECONDS = 20.0
#: The worker's environment as it started (the image's, in a container): a merge_env task's base.
_BASE_ENV: dict[str, str] = {}


class Leave(SystemExit):
    """The worker ends now (raised from a signal handler): SIGTERM from its client's close."""


class ParentGone(Leave):
    """The kernel that started this worker is gone: the worker ends (raised from the signal handler)."""


def die_with(parent: int) -> None:
    """End this process when ``parent`` ends, even by SIGKILL: raise :class:`ParentGone` now if it is gone."""

    def check(_signum: int = 0, _frame: FrameType | None = None) -> None:
        if os.getppid() != parent:
            raise ParentGone(0)

    signal.signal(PARENT_DIED, check)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(PARENT_DIED), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the loop's check alone
    check()  # the parent died before the signal was asked for: nobody would send it


def _preload(modules: list[str], done: set[str]) -> None:
    """Import what the kernel has that this process has not: a module that fails to import is skipped."""
    for name in modules:
        if name in done:
            continue
        done.add(name)
        try:
            importlib.import_module(name)
        except Leave:
            raise
        except BaseException:  # noqa: BLE001 - a module that cannot load here is the cell's to import, not ours
            continue


#: What a library does on its first use that every forked runner would do again, done once in the worker:
#: a cached call, by module. narwhals (which scikit-learn calls on every fit to check its input) scans every
#: installed distribution's entry points on first use: 30-50 ms, in each task that fits a model.
WARM_UPS = {"narwhals.plugins": "_discover_entrypoints"}


def _warm_up(done: set[str]) -> None:
    """Run the first-use calls of the libraries imported so far, once each (a missing one is skipped)."""
    for module, name in WARM_UPS.items():
        if module in sys.modules and module not in done:
            done.add(module)
            try:
                getattr(sys.modules[module], name)()
            except Exception:  # noqa: BLE001 - another version of the library: the runner pays it, as before
                continue


def child_exit(become: Callable[[], int]) -> int:
    """In a forked child: ``become()`` the task's runner and run it; its exit code whatever it raised (a
    traceback on its stderr and 2 for anything but SystemExit), its streams flushed. The caller's next step
    is ``os._exit``: a child must never return into its worker's loop."""
    try:
        return become()
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must never return into the worker's loop
        import traceback

        traceback.print_exc()
        return 2
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # leaving anyway
                stream.flush()


def _child(
    runner: ModuleType, request: dict[str, Any], listener: socket.socket | None, conn: socket.socket, wake: int
) -> None:
    """In the forked child: become the task's runner, then leave without running the worker's exit code."""
    os._exit(child_exit(lambda: _become(runner, request, listener, conn, wake)))


def _become(
    runner: ModuleType, request: dict[str, Any], listener: socket.socket | None, conn: socket.socket, wake: int
) -> int:
    """The child's side: let go of the worker's sockets and signals, take the task's session, streams,
    folder and environment, and run its runner; its exit code."""
    if listener is not None:
        listener.close()
    conn.close()
    os.close(wake)
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, PARENT_DIED, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    gc.enable()
    os.setsid()  # its own session and process group, as the backend's Popen(start_new_session=True)
    os.close(request["session_fd"])  # the worker answers our pid now: a signal to our group finds it
    if "go_fd" in request:  # the worker closes it when the client says go (it kills us on stop)
        os.read(request["go_fd"], 1)
        os.close(request["go_fd"])
    os.chdir(request["cwd"])
    base = _BASE_ENV if request.get("merge_env") else {}
    os.environ.clear()
    os.environ.update({**base, **request["env"]})
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, fd)
        os.close(out)
    sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
    sys.argv = [str(runner.__file__), "--spec", request["spec"]]
    code: int = runner.run_task(request["spec"])
    return code


def _reap(children: dict[int, socket.socket]) -> None:
    """Tell each ended child's connection its exit code, and close it. Every ended child is reaped, ours or
    not: in a container the worker is PID 1, the parent of whatever a cell left behind."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            except OSError:
                pass
            conn.close()


def _read_request(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the request ended early")
        data += chunk
    request: dict[str, Any] = json.loads(data)
    return request


def serve(parent: int, path: str, modules: list[str]) -> None:
    """Import ``modules``, then fork a runner for each request on the socket ``path`` while ``parent`` lives
    (and, once a lifeline was held, until it ends and the runners forked so far have ended)."""
    gc.disable()  # until the child: no collection leaves holes in the pages the children share (gc.freeze)
    runner = importlib.import_module("batchmagic.runner.main")  # before any fork: every child has it loaded
    runner.warm_up()
    done: set[str] = set()
    warmed: set[str] = set()
    _preload(modules, done)
    _warm_up(warmed)
    become_subreaper()  # what a runner killed outright left comes here, not to init: end_orphans kills it
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(64)
    listener: socket.socket | None = listening
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a child's end wakes the loop through the pipe
    children: dict[int, socket.socket] = {}
    lifeline: socket.socket | None = None
    unheld = time.monotonic() + HOLD_SECONDS if parent == 0 else float("inf")
    print("ready", flush=True)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # nobody reads the worker's stdout after this line: what an import prints goes nowhere
    os.close(quiet)
    while os.getppid() == parent:
        watched = [wake_r, *(s.fileno() for s in (listener, lifeline) if s is not None)]
        ready, _, _ = select.select(watched, [], [], 1.0)
        if wake_r in ready:
            os.read(wake_r, 512)
        _reap(children)
        end_orphans(children)
        if lifeline is not None and lifeline.fileno() in ready and not _still_held(lifeline):
            lifeline.close()
            lifeline = None
            if listener is not None:
                listener.close()
                listener = None
                _tidy(path)  # no new task: the kernel is gone
        if listener is None or (lifeline is None and time.monotonic() > unheld):
            if not children:
                return  # the last runner ended: the worker (and its container) may go
            continue
        if listener.fileno() in ready:
            conn, _ = listener.accept()
            held = _take(conn, runner, listener, wake_r, (done, warmed), children)
            lifeline = held or lifeline


def _still_held(lifeline: socket.socket) -> bool:
    """Whether the kernel still holds its lifeline (it sends nothing on it: readable means it ended)."""
    try:
        return bool(lifeline.recv(64))
    except OSError:
        return False


def _take(
    conn: socket.socket,
    runner: ModuleType,
    listener: socket.socket,
    wake: int,
    imported: tuple[set[str], set[str]],
    children: dict[int, socket.socket],
) -> socket.socket | None:
    """Answer one connection: fork a task's runner, or keep the kernel's lifeline (returned)."""
    go_w = session_r = -1
    try:
        request = _read_request(conn)
        if request.get("hold"):
            conn.sendall(json.dumps({"held": os.getpid()}).encode() + b"\n")
            return conn
        _preload(request.get("modules", []), imported[0])
        _warm_up(imported[1])
        runner.check_objects(request["spec"])  # a sweep's shared big inputs: hashed here once, not per task
        sys.stdout.flush()
        sys.stderr.flush()
        if request.get("go"):
            request["go_fd"], go_w = os.pipe()
        session_r, request["session_fd"] = os.pipe()
        # The worker's objects out of the collector's reach (Python's advice for fork without exec): a
        # child's collections then never write to the pages it shares with the worker, which stay shared.
        gc.freeze()
        pid = os.fork()
    except Exception as err:  # noqa: BLE001 - one bad request must not end the worker
        try:
            conn.sendall(json.dumps({"error": str(err)}).encode() + b"\n")
        except OSError:
            pass
        conn.close()
        return None
    if pid == 0:
        for fd in (go_w, session_r):
            if fd >= 0:
                os.close(fd)
        _child(runner, request, listener, conn, wake)
    children[pid] = conn
    os.close(request["session_fd"])
    await_session(pid, session_r)
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass  # the client is gone: the child is reaped as any other
    if go_w >= 0:
        os.close(request["go_fd"])
        _await_go(conn, pid, go_w)
    _reap(children)
    return None


def await_session(pid: int, session: int) -> None:
    """Wait until the child ``pid`` leads its own session (it closes its end of the ``session`` pipe then,
    or by ending): only then does its client learn its pid. A cancel or timeout that came between the fork
    and the child's ``setsid`` would find no process group to signal, and be lost. A child that does not
    get there in :data:`GO_SECONDS` is killed (by pid: it is our child, not reaped yet, so its pid is its own)."""
    there, _, _ = select.select([session], [], [], GO_SECONDS)
    os.close(session)
    if not there:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _await_go(conn: socket.socket, pid: int, go_w: int) -> None:
    """Let the child run once its client says go; kill it on stop, silence, or a client that left."""
    conn.settimeout(GO_SECONDS)
    try:
        said = conn.recv(64)
    except OSError:
        said = b""
    conn.settimeout(None)
    if said.strip() != b"go":
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.close(go_w)


def _tidy(path: str) -> None:
    """Remove the socket and its folder (the client made it for this worker alone)."""
    for remove in (os.unlink, lambda p: os.rmdir(os.path.dirname(p))):
        try:
            remove(path)
        except OSError:
            pass


def _leave(_signum: int, _frame: FrameType | None) -> None:
    raise Leave(0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    parent, path, modules = int(args[0]), args[1], args[2:]
    _BASE_ENV.update(os.environ)  # before any import changes it
    try:
        signal.signal(signal.SIGTERM, _leave)  # the client's close: leave through the finally
        die_with(parent)
        serve(parent, path, modules)
    except Leave:
        pass
    finally:
        _tidy(path)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Straight out, its socket gone: an interpreter's shutdown with the kernel's thousands of modules
    # (torch, pandas, ...) loaded takes a second or more, and the client's close waits for it. The worker
    # holds nothing to flush: its forked runners are processes of their own.
    os._exit(0)
