"""The warm worker inside the training image, for ``--backend local --container`` runs.

Without it, each run and each sweep task of a ``--container`` run is a ``docker run`` of its own: the
container starts, then the interpreter, then the imports (a second or more). A :class:`ContainerWorker` is
one long-lived container of the run's image, started by ``docker run -d`` with the options a run's own
container gets (:func:`batchmagic.backends.local.container_options`: host network, this user's uid, the
store mounted at the same path, the GPUs and a large /dev/shm on a GPU machine), running the warm worker
(:mod:`batchmagic.runner.warm`); runners are forked in it as on the host, through a Unix socket in a
folder mounted at the same path in the container. What makes it a container's:

- Its life. Linux gives no parent-death signal across a container's walls, so the kernel holds a
  connection to the worker (the *lifeline*): when the kernel ends, however it ends, the worker sees the
  connection end, takes no more tasks, waits for the runners it forked (they end with it: it is the
  container's PID 1), and ends; ``docker run --rm`` then removes the container. ``Session.teardown``,
  ``%azbatch_teardown`` and this process's exit (atexit) also ``docker rm -f`` it when none of its runners
  runs. A run in another image (the environment changed) retires it once it is idle (it neither starts,
  nor forks, nor runs a task), for good: a run still holding it runs in a container of its own. One per
  kernel and image in use, and an idle one only for the image last used.
- Pids. Each forked runner is a process of the host too: the client finds its host pid (its parent's
  children in /proc, whose ``NSpid`` says the pid inside) before the runner may start (it waits for the
  client's ``go``), so the timeout, Cancel and a later client's adoption signal its process group from
  the host, as for a runner on the host; the container goes on.
- Its name and labels: ``batchmagic-warm-<kernel pid>-<hash>`` (the hash of the kernel's start time and
  the container's options), labelled ``batchmagic.warm-worker=<kernel pid>``.
- Its socket folder: ``$TMPDIR/batchmagic-cwarm-<kernel pid>-<start ticks>-<random>``. The worker cannot
  remove it (a mount point in its container): the kernel does, and a kernel that was killed leaves it to
  the next container's start on this machine (:func:`clear_stale_folders`).

When it cannot be used (the image's batchmagic has no such worker, the engine runs on another machine or
in a VM so its processes are not this machine's, Docker refuses), it says so in the log only and runs
start their own container, as before.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchmagic.backends.warm import Forked, ask, kernel_modules, task_request
from batchmagic.runner.reap import alive, start_ticks

__all__ = ["ContainerPlan", "ContainerWorker", "shared_container", "close_containers", "host_pid", "LABEL"]

log = logging.getLogger("batchmagic.backends.warm_container")

LABEL = "batchmagic.warm-worker"
_START_SECONDS = 180.0  # a container that imports scikit-learn and pandas on a busy 2-core machine
_DOCKER_SECONDS = 120.0


@dataclass(frozen=True)
class ContainerPlan:
    """What a warm container is made of: one per kernel for each different plan (the last one used lives).

    Parameters
    ----------
    image : str
        The training image.
    options : tuple of str
        ``docker run`` options a run's own container would get (network, user, mounts, GPUs, /dev/shm).
    engine : str
        ``DOCKER_HOST`` ("" for Docker's default).
    """

    image: str
    options: tuple[str, ...]
    engine: str = ""

    def name(self, kernel_pid: int, kernel_ticks: int) -> str:
        """The container's name: this kernel's (its pid and start time) for this plan."""
        said = "\0".join([str(kernel_ticks), self.image, self.engine, *self.options])
        return f"batchmagic-warm-{kernel_pid}-{hashlib.sha256(said.encode()).hexdigest()[:12]}"

    def run_argv(self, name: str, folder: str, modules: list[str]) -> list[str]:
        """``docker run -d`` of the warm worker listening on ``folder/worker.sock`` (``folder`` mounted at
        the same path), preloading ``modules``."""
        return [
            # --init=false: the worker is the container's PID 1 whatever the engine's default (it reaps the
            # cells' orphans, and its parent is no process of the container's, which is how it runs there).
            "docker", "run", "-d", "--rm", "--init=false", "--name", name, "--label", f"{LABEL}={os.getpid()}",
            *self.options, "-v", f"{folder}:{folder}", "-w", folder, "-e", "PYTHONUNBUFFERED=1",
            self.image, "python3", "-P", "-m", "batchmagic.runner.warm", "0", f"{folder}/worker.sock", *modules,
        ]  # fmt: skip


class ContainerWorker:
    """A warm worker in a container of ``plan``'s image, started on first use (see the module).

    Parameters
    ----------
    plan : ContainerPlan
        The image and options of the container.
    env : dict
        The environment of the ``docker`` commands (``DOCKER_HOST``...).
    """

    def __init__(self, plan: ContainerPlan, env: dict[str, str]) -> None:
        self.plan = plan
        self.env = env
        self.name = ""
        self._boots = 0
        self.failed = False  # it could not start: runs start their own containers from then on
        self.closed_on_purpose = False
        self.retired = False  # a run in another image let it go: it never starts again (not in _containers)
        self._folder = ""
        self._lifeline: socket.socket | None = None
        self._host_pid = 0  # the worker (the container's PID 1) as this machine sees it
        self._starting = False
        self._pending = 0  # forks asked of the worker, not yet in _forked (the /proc scan, the go)
        self._lock = threading.Lock()
        self._forked: weakref.WeakSet[Forked] = weakref.WeakSet()
        self._modules: list[str] = []  # the kernel's modules the worker was last told of

    @property
    def ready(self) -> bool:
        return self._lifeline is not None

    @property
    def busy(self) -> bool:
        """Whether it starts, forks a runner, or a runner forked in it runs: it must not be retired now."""
        return self._starting or self._pending > 0 or any(f.poll() is None for f in list(self._forked))

    @property
    def pid(self) -> int | None:
        """The worker's pid on this machine while it runs, else None."""
        return self._host_pid if self.ready else None

    def retire(self) -> bool:
        """Retire it for good unless it is busy (checked and set together with :meth:`fork`'s count, so a
        runner forked meanwhile is never removed with it); True when retired: :meth:`close` it then."""
        with self._lock:
            if not self.busy:
                self.retired = True
            return self.retired

    def start(self) -> None:
        """Start the container in the background unless it runs, starts or was retired (a caller still
        holding it then runs in a container of its own); :meth:`fork` uses it once ready."""
        with self._lock:
            if self.failed or self.retired or self._starting or self.ready:
                return
            self._starting = True
            self.closed_on_purpose = False
            _close_at_exit()
        threading.Thread(target=self._boot, name="warm-container", daemon=True).start()

    def _boot(self) -> None:
        self._remove()  # what a worker that ended by itself left (its folder)
        self._boots += 1  # a new name: one that ended on purpose may still finish its runners
        self.name = f"{self.plan.name(os.getpid(), start_ticks(os.getpid()))}-{self._boots}"
        lifeline = None
        try:
            clear_stale_folders(Path(tempfile.gettempdir()))
            self._folder = tempfile.mkdtemp(prefix=folder_prefix(os.getpid(), start_ticks(os.getpid())))
            self._modules = kernel_modules()
            started = self._docker(*self.plan.run_argv(self.name, self._folder, self._modules)[1:])
            if started.returncode != 0:
                raise OSError(started.stderr.decode(errors="replace").strip()[-300:])
            lifeline = self._hold(f"{self._folder}/worker.sock")
            self._host_pid = self._worker_pid()
        except (OSError, ValueError, subprocess.SubprocessError) as err:
            if not self.closed_on_purpose:
                log.info("no warm container for %s (%s): each run starts its own container", self.plan.image, err)
                self.failed = True
        with self._lock:
            self._starting = False  # with the lifeline set: a start() between them would start a second one
            kept = lifeline is not None and not self.closed_on_purpose  # closed while it started: it goes
            if kept:
                self._lifeline = lifeline
        if not kept:
            if lifeline is not None:
                lifeline.close()
            self._remove()
            return
        threading.Thread(target=self._watch, args=(lifeline,), name="warm-container-lifeline", daemon=True).start()

    def _hold(self, path: str) -> socket.socket:
        """Connect once the worker listens (it has imported what it preloads) and hold the lifeline."""
        deadline = time.monotonic() + _START_SECONDS
        checked = time.monotonic()
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(path)
                break
            except OSError:
                conn.close()
            if self.closed_on_purpose or time.monotonic() > deadline:
                raise OSError("the worker did not listen")
            if time.monotonic() - checked > 1.0:  # a container that ended will never listen
                checked = time.monotonic()
                if self._inspect("{{.State.Running}}") != "true":
                    raise OSError("the container ended: " + self._logs())
            time.sleep(0.05)
        conn.sendall(b'{"hold": true}\n')
        conn.settimeout(_DOCKER_SECONDS)
        with conn.makefile("rb") as said:
            answer = said.readline()
        conn.settimeout(None)
        if not answer.startswith(b'{"held"'):
            conn.close()
            raise OSError("the image's batchmagic has no container worker")
        return conn

    def _worker_pid(self) -> int:
        """The worker's pid on this machine: the engine's, when its processes are this machine's processes."""
        pid = int(self._inspect("{{.State.Pid}}") or 0)
        if pid <= 0 or _nspid(pid)[-1:] != [1]:
            raise OSError("the engine's processes are not this machine's (a remote engine or a VM)")
        try:
            os.kill(pid, 0)  # the timeout and Cancel signal its runners from here
        except PermissionError as err:
            raise OSError("this user may not signal the container's processes (user namespaces)") from err
        return pid

    def _watch(self, lifeline: socket.socket) -> None:
        """The worker closes its end when it ends (or its container is removed): not ready from then on."""
        try:
            while lifeline.recv(64):
                pass
        except OSError:
            pass
        with self._lock:
            if self._lifeline is lifeline:
                self._lifeline = None
        lifeline.close()

    def fork(
        self, spec: Path, cwd: Path, env: dict[str, str], stdout: Path, stderr: Path, result: Path
    ) -> Forked | None:
        """A runner for ``spec`` forked in the container, with ``env`` added to the image's environment;
        None when the container is not ready (it starts, for the next run) or failed: the caller then runs
        the task in a container of its own."""
        with self._lock:
            asking = self.ready and not self.retired
            if asking:
                self._pending += 1  # busy from now on: a run in another image must not retire it under us
        if not asking:
            self.start()
            return None
        try:
            return self._fork(task_request(spec, cwd, env, stdout, stderr), result)
        finally:
            with self._lock:
                self._pending -= 1

    def _fork(self, task: dict[str, Any], result: Path) -> Forked | None:
        request = {**task, "merge_env": True, "go": True}
        if request["modules"] == self._modules:
            del request["modules"]  # the worker has them (a kernel's 1,000-odd names, 40 kB a task)
        asked = ask(f"{self._folder}/worker.sock", request)
        if asked is None:
            return None
        self._modules = request.get("modules", self._modules)
        conn, reader, answer = asked
        pid = host_pid(self._host_pid, int(answer["pid"]))
        try:
            conn.sendall(b"go\n" if pid else b"stop\n")
        except OSError:
            pid = None
        if pid is None:
            reader.close()
            conn.close()
            log.info("a runner forked in the warm container could not be found on this machine: its own container")
            return None
        forked = Forked(conn, reader, pid, result, self)
        self._forked.add(forked)
        return forked

    def drop_lifeline(self) -> None:
        """Close this process's copy of the lifeline (in a fork of the kernel: the kernel's stays open)."""
        lifeline, self._lifeline = self._lifeline, None
        if lifeline is not None:
            lifeline.close()

    def close(self) -> None:
        """Let go of the container: its worker ends once its runners have; removed now when none runs."""
        with self._lock:
            self.closed_on_purpose = True
            lifeline, self._lifeline = self._lifeline, None
        if lifeline is not None:
            try:
                lifeline.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            lifeline.close()
        if not any(f.poll() is None for f in list(self._forked)):
            self._remove()

    def _remove(self) -> None:
        if not self.name:
            return
        try:
            self._docker("rm", "-f", self.name)
        except (OSError, subprocess.SubprocessError):
            pass  # no engine: no container either
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = ""

    def _docker(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, timeout=_DOCKER_SECONDS, check=False
        )

    def _inspect(self, template: str) -> str:
        return self._docker("inspect", "-f", template, self.name).stdout.decode().strip()

    def _logs(self) -> str:
        done = self._docker("logs", "--tail", "5", self.name)
        return (done.stdout + done.stderr).decode(errors="replace").strip()[-300:] or "no output"


#: A warm container's socket folder on this machine: ``<prefix><kernel pid>-<its start ticks>-<random>``.
FOLDER_PREFIX = "batchmagic-cwarm-"


def folder_prefix(kernel_pid: int, kernel_ticks: int) -> str:
    """The start of the name of a socket folder of the kernel ``kernel_pid`` started at ``kernel_ticks``."""
    return f"{FOLDER_PREFIX}{kernel_pid}-{kernel_ticks}-"


def stale_folders(names: list[str], alive_now: Callable[[int, int], bool]) -> list[str]:
    """The socket folders among ``names`` whose kernel is gone (``alive_now(pid, ticks)`` says it is not):
    the worker cannot remove its own (a mount point in its container), and a killed kernel never did."""
    stale = []
    for name in names:
        parts = name[len(FOLDER_PREFIX) :].split("-") if name.startswith(FOLDER_PREFIX) else []
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():  # mkdtemp's part has no "-"
            if not alive_now(int(parts[0]), int(parts[1])):
                stale.append(name)
    return stale


def clear_stale_folders(tmp: Path) -> None:
    """Remove this user's socket folders in ``tmp`` whose kernel is gone (done at a container's start)."""
    try:
        names = [e.name for e in os.scandir(tmp) if e.name.startswith(FOLDER_PREFIX) and e.stat().st_uid == os.getuid()]
    except OSError:
        return
    for name in stale_folders(names, alive):
        shutil.rmtree(tmp / name, ignore_errors=True)


def _nspid(pid: int) -> list[int]:
    """A process's pids, this machine's first, then in each pid namespace below it ([] when gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return []
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return [pid]


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: every process's parent
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue
        return found


def _session(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return 0


def host_pid(parent: int, inner: int, *, wait: float = 5.0) -> int | None:
    """This machine's pid of the child of ``parent`` (this machine's pid) whose pid in its container is
    ``inner``, once it leads its own session (which it makes before it waits for go): then the host can
    signal its process group. None if there is no such child."""
    deadline = time.monotonic() + wait
    while True:
        for pid in _children(parent):
            if _nspid(pid)[-1:] == [inner] and _session(pid) == pid:
                return pid
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)


# This process's warm containers, by plan; a forked child of this process starts with none.
_containers: dict[ContainerPlan, ContainerWorker] = {}
_containers_lock = threading.Lock()
_at_exit = threading.Event()


def shared_container(plan: ContainerPlan, env: dict[str, str]) -> ContainerWorker:
    """This process's warm container for ``plan`` (made, not started, on first call); those of other plans
    are closed when idle (another image: the environment changed). One that starts or runs a task is kept:
    two runs in two images at once (a sweep in the background, a cell in another image) each keep theirs,
    instead of each task retiring the other's container, and paying a ``docker run`` retired before ready."""
    with _containers_lock:
        worker = _containers.get(plan)
        retired = [w for p, w in _containers.items() if p != plan and w.retire()]
        if worker is None:
            worker = _containers[plan] = ContainerWorker(plan, env)
        for old in retired:
            del _containers[old.plan]
    for old in retired:
        old.close()
    return worker


def live_containers() -> list[ContainerWorker]:
    """This process's warm containers that run now."""
    with _containers_lock:
        return [w for w in _containers.values() if w.ready]


def close_containers() -> None:
    """Let go of this process's warm containers (removed now when none of their runners runs)."""
    with _containers_lock:
        workers = list(_containers.values())
    for worker in workers:
        worker.close()


def _close_at_exit() -> None:
    if not _at_exit.is_set():
        _at_exit.set()
        atexit.register(close_containers)


def _forget_in_child() -> None:
    """A fork of this process (multiprocessing's) owns none of its parent's containers, and must not hold
    their lifelines: a worker would outlive its kernel as long as the fork lives."""
    global _containers_lock
    for worker in _containers.values():
        worker.drop_lifeline()
    _containers.clear()
    _containers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
