"""A node's warm worker for one job: it imports what the cell needs once and forks each task's runner.

``python3 -P -m batchmagic.runner.nodewarm [MODULE ...]`` is started by the job's preparation task on each
node (see :func:`batchmagic.backends.azure.requests.job_preparation`), in the training image, with the
task environment's ``AZ_BATCH_NODE_SHARED_DIR`` and ``AZ_BATCH_JOB_ID``. It binds its Unix socket at once
(``<shared>/batchmagic-warm/<socket_name(job)>``: a task that connects while it still imports waits
for it rather than importing the same modules itself), imports the runner and ``MODULE ...``, then forks
one runner per connection (:mod:`batchmagic.runner.node` is the other side). A request is one JSON line
``{"argv", "cwd", "env", "identity"}`` with the task's standard streams attached (``SCM_RIGHTS``); the worker
answers ``{"ready": true}``, forks once the task says ``go`` (a task that gave up waiting, its request
queued while the worker imported, has closed its connection and runs fresh: it gets no second runner),
answers ``{"pid": N}`` once the child leads its session (a signal passed on at once finds its group), then
``{"exit": CODE}`` (negative: the signal that ended the child), or ``{"error"}`` for a task whose
interpreter is not its own (:func:`~batchmagic.runner.node.identity`) or whose working directory it cannot
write (the task's user, who owns it, is not the worker's), which then runs fresh.

When a child ends it names the modules its cell imported that the worker had not (from site-packages: a
library, not the cell's own code), and the worker imports them before the next fork: a module the kernel
never imported costs its import once per node, not once per task.

The child has a runner's isolation: its own session and process group, the task's working directory,
environment and streams. While it runs the worker reads its connection: ``{"signal": N}`` is passed to
the child's process group; the end of the connection (the task's process was killed, its container
removed) kills the group, as the end of a task's container kills a fresh runner. What the cell started in
a session of its own ends with the runner too (:mod:`batchmagic.runner.reap`): the runner is its subreaper
and ends its descendants, and the worker, a subreaper too, kills what a runner killed outright left to it.

The worker leaves when its socket is removed or replaced (the job's release task; a preparation task run
again on the node), on SIGTERM, and after :data:`IDLE_LIMIT` seconds without a task.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from types import FrameType, ModuleType
from typing import Any

from batchmagic.runner.node import identity, socket_dir, socket_name
from batchmagic.runner.reap import become_subreaper, end_orphans
from batchmagic.runner.warm import WARM_UPS, await_session, child_exit

__all__ = ["serve", "main", "IDLE_LIMIT"]

#: Seconds without a task after which the worker leaves on its own (a job whose release never comes).
IDLE_LIMIT = 600.0


class Leave(SystemExit):
    """The worker ends now (SIGTERM)."""


@dataclass
class _Child:
    pid: int
    conn: socket.socket
    learn: int  # the read end of the pipe on which the child names the modules it imported
    buffer: bytearray = field(default_factory=bytearray)


#: The most bytes of module names a child sends back (a pipe's capacity: the child never waits on it).
LEARN_BYTES = 60_000


def _learned(before: set[str]) -> str:
    """The modules this process imported since ``before`` that a worker may import too: from site-packages
    (not the cell's own, nor the bundle's local sources), none private, one a line."""
    names = []
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None) or ""
        if name not in before and "site-packages" in where and not any(p.startswith("_") for p in name.split(".")):
            names.append(name)
    return "\n".join(sorted(names, key=lambda n: (n.count("."), n)))


def _preload(modules: list[str]) -> None:
    """Import ``modules`` (one that fails to import here is the cell's to import, not ours), then do what
    each runner would do on first use (the runner's own, the libraries' of :data:`WARM_UPS`) once, here."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Leave:
            raise
        except BaseException:  # noqa: BLE001 - a module that cannot load here is skipped
            continue
    importlib.import_module("batchmagic.runner.main").warm_up()
    for module, function in WARM_UPS.items():
        if module in sys.modules:
            with contextlib.suppress(Exception):  # another version of the library: each runner pays it
                getattr(sys.modules[module], function)()


def _bind(name: str) -> tuple[socket.socket, int]:
    """Listen on ``name`` in the working directory (a stale socket of an earlier worker replaced); the
    socket file's inode, to notice its removal or replacement."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(64)
    return listener, os.stat(name).st_ino


def _child(
    runner: ModuleType, request: dict[str, Any], fds: list[int], closing: list[socket.socket], learn: int
) -> None:
    """In the forked child: become the task's runner, tell the worker what the cell imported that it has
    not (so the next tasks find it imported), then leave without returning into the worker."""
    before = set(sys.modules)
    code = child_exit(lambda: _become(runner, request, fds, closing))
    with contextlib.suppress(Exception):
        os.write(learn, _learned(before).encode()[:LEARN_BYTES])
    os._exit(code)


def _become(runner: ModuleType, request: dict[str, Any], fds: list[int], closing: list[socket.socket]) -> int:
    """The child's side: let go of the worker's sockets and signals, take the task's session, streams, folder
    and environment, and run its command line; its exit code."""
    for sock in closing:
        sock.close()
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    gc.enable()
    os.setsid()  # its own session and process group: a signal to the group reaches what the cell starts
    os.close(request["session_fd"])  # the worker answers our pid now: a signal to our group finds it
    for target, fd in zip((0, 1, 2), fds, strict=False):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = list(request["argv"])
    sys.argv = [str(runner.__file__), *argv]
    code: int = runner.main(argv)  # the task's own `--spec FILE` is run without argparse (runner.main)
    return code


#: How long the worker waits for a task's go once it said it is ready (the task answers at once, or is gone).
GO_TIMEOUT = 10.0


def _go(conn: socket.socket) -> bool:
    """Tell the task the worker is ready to fork its runner; True when it answers ``go``. A task that waited
    past its ANSWER_TIMEOUT (its request queued while the worker imported) has gone to run fresh: its
    connection is closed, and it must not get a second runner."""
    said = b""
    try:
        conn.sendall(b'{"ready": true}\n')
        conn.settimeout(GO_TIMEOUT)
        while not said.endswith(b"\n"):
            more = conn.recv(16)
            if not more:
                return False
            said += more
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            conn.settimeout(None)
    return said == b"go\n"


def _accept(listener: socket.socket, runner: ModuleType, children: dict[int, _Child]) -> None:
    """Take one task: fork its runner and answer with the child's pid (a bad request: an error line)."""
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
        while not data.endswith(b"\n"):
            more = conn.recv(1 << 20)
            if not more:
                raise ConnectionError("the request ended early")
            data += more
        request = json.loads(data)
        if request.get("identity") != identity():
            raise ValueError(f"this worker runs {identity()}, the task {request.get('identity')}")
        if not os.access(str(request.get("cwd")), os.W_OK):  # the task's user is not this worker's: run fresh
            raise PermissionError(f"this worker (uid {os.getuid()}) cannot write the task's directory")
        if not _go(conn):
            raise ConnectionError("the task no longer waits (it runs fresh)")
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()  # the worker's objects out of the collector's reach: the pages children share stay shared
        learn_r, learn_w = os.pipe()
        session_r, request["session_fd"] = os.pipe()
        pid = os.fork()
    except Exception as err:  # noqa: BLE001 - one bad request must not end the worker
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"error": str(err)}).encode() + b"\n")
        conn.close()
        for fd in fds:
            os.close(fd)
        return
    if pid == 0:
        os.close(learn_r)
        os.close(session_r)
        _child(runner, request, fds, [listener, conn, *(c.conn for c in children.values())], learn_w)
    for fd in (*fds, learn_w, request["session_fd"]):
        os.close(fd)
    await_session(pid, session_r)  # the task learns the pid, and may pass a signal on, once its group exists
    os.set_blocking(learn_r, False)  # a process the cell forked may hold the write end after the child ends
    children[pid] = _Child(pid, conn, learn_r)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _heard(child: _Child) -> None:
    """The task's process spoke: a signal to pass on, or its end (killed): the runner's group goes too."""
    try:
        chunk = child.conn.recv(4096)
    except OSError:
        chunk = b""
    if not chunk:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        return
    child.buffer += chunk
    while b"\n" in child.buffer:
        line, _, rest = bytes(child.buffer).partition(b"\n")
        child.buffer[:] = rest
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(child.pid, int(json.loads(line)["signal"]))


def _reap(children: dict[int, _Child]) -> list[str]:
    """Tell each ended child's task its exit code, and close its connection; the modules the ended
    children imported that this worker has not. Every ended child is reaped, a runner or not: an orphan a
    runner left, killed by end_orphans, stays a zombie until then (after the last runner too)."""
    learned: list[str] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        child = children.pop(pid, None)
        if child is None:
            continue  # an orphan of a cell's, reparented to the worker (its container's first process)
        with contextlib.suppress(OSError):
            child.conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
        child.conn.close()
        with contextlib.suppress(OSError):
            learned += [n for n in os.read(child.learn, LEARN_BYTES + 1).decode().split("\n") if n]
        os.close(child.learn)
    return [name for name in learned if name not in sys.modules]


def _still_ours(name: str, inode: int) -> bool:
    try:
        return os.stat(name).st_ino == inode
    except OSError:
        return False


def serve(name: str, modules: list[str]) -> None:
    """Bind ``name`` (in the working directory), import the runner and ``modules``, then fork a runner for
    each task that connects, until the socket is removed or replaced, or nothing came for IDLE_LIMIT."""
    listener, inode = _bind(name)
    try:
        _serve(listener, name, inode, modules)
    finally:
        listener.close()
        if _still_ours(name, inode):  # a worker that took its place keeps its own
            os.unlink(name)


def _serve(listener: socket.socket, name: str, inode: int, modules: list[str]) -> None:
    gc.disable()  # until the child: no collection leaves holes in the pages the children share
    runner = importlib.import_module("batchmagic.runner.main")
    _preload(modules)
    become_subreaper()  # what a runner killed outright left comes here (not to init): end_orphans kills it
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a child's end wakes the loop through the pipe
    children: dict[int, _Child] = {}
    last = time.monotonic()
    print(f"ready: {len(sys.modules)} modules", flush=True)
    while _still_ours(name, inode) and (children or time.monotonic() - last < IDLE_LIMIT):
        watched = {c.conn.fileno(): c for c in children.values()}
        ready, _, _ = select.select([listener.fileno(), wake_r, *watched], [], [], 1.0)
        if wake_r in ready:
            os.read(wake_r, 512)
        for fd in ready:
            if fd in watched:
                _heard(watched[fd])
        learned = _reap(children)
        end_orphans(children)
        if learned:  # what a cell imported, imported here once: the next tasks start with it
            _preload(learned)
        if listener.fileno() in ready:
            _accept(listener, runner, children)
            last = time.monotonic()


def _leave(_signum: int, _frame: FrameType | None) -> None:
    raise Leave(0)


def main(argv: list[str] | None = None) -> None:
    """Serve the job named by ``AZ_BATCH_JOB_ID`` on this node, preloading the modules named in ``argv``."""
    modules = sys.argv[1:] if argv is None else argv
    where, job = socket_dir(os.environ), os.environ.get("AZ_BATCH_JOB_ID", "")
    if not where or not job:
        sys.exit("batchmagic.runner.nodewarm: AZ_BATCH_NODE_SHARED_DIR and AZ_BATCH_JOB_ID must be set")
    os.makedirs(where, exist_ok=True)
    os.chdir(where)  # the socket is bound by its short name: its full path may pass a socket's 108 bytes
    name = socket_name(job)
    signal.signal(signal.SIGTERM, _leave)
    with contextlib.suppress(Leave):
        serve(name, modules)


if __name__ == "__main__":
    main()
