"""The local backend: each task is a ``python -m batchmagic.runner`` subprocess on this machine.

It mirrors a Batch node: a fresh working directory per task, the run's data in a
:class:`~batchmagic.storage.LocalStore`, the process's own stdout/stderr in ``stdout.txt`` and
``stderr.txt`` beside it, and a wall-clock limit enforced by killing the process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batchmagic.backends.base import (
    STOPPED_AFTER,
    Backend,
    BackendStatus,
    Phase,
    TaskStatus,
    TaskSubmission,
    exit_reason,
    format_duration,
)
from batchmagic.backends.warm import Forked, WarmWorker, close_workers, code_from_result, shared_worker
from batchmagic.backends.warm_container import ContainerPlan, ContainerWorker, close_containers, shared_container
from batchmagic.config import SECRET_NAME, inherited_environment
from batchmagic.distributed import DEFAULT_SHM_SIZE, ENV_NAMES, rank_environment, rank_of, thread_budget
from batchmagic.protocol import Layout
from batchmagic.runner.gpu import host_gpus
from batchmagic.runner.rankwatch import CANCELLED_FILE, stopped_note
from batchmagic.runner.reap import end_processes_with, start_ticks
from batchmagic.storage import LocalStore

log = logging.getLogger("batchmagic.backends.local")

# Secrets of the client never reach a task's environment (unless passed on purpose with --env, in the
# spec): anything that names a key, a secret, a password, a token, a SAS or a connection string.
_SECRET_ENV = SECRET_NAME
_GRACE_SECONDS = 3.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class _Alarm:
    """One task's ``--timeout``: ``action`` runs at ``due`` (time.monotonic) unless cancelled first."""

    def __init__(self, due: float, action: Callable[[], None]) -> None:
        self.due = due
        self.action = action
        self.cancelled = False

    def __lt__(self, other: _Alarm) -> bool:
        return self.due < other.due

    def cancel(self) -> None:
        self.cancelled = True


class _Watchdog:
    """Every task's ``--timeout``, kept by one thread: a ``threading.Timer`` per task is a thread per task,
    whose start waits until it is scheduled (milliseconds on a busy machine, at each task of a sweep)."""

    def __init__(self) -> None:
        self._alarms: list[_Alarm] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def after(self, seconds: float, action: Callable[[], None]) -> _Alarm:
        alarm = _Alarm(time.monotonic() + seconds, action)
        with self._changed:
            heapq.heappush(self._alarms, alarm)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="batchmagic-timeouts", daemon=True)
                self._thread.start()
            self._changed.notify()
        return alarm

    def _loop(self) -> None:
        while True:
            with self._changed:
                while self._alarms and self._alarms[0].cancelled:
                    heapq.heappop(self._alarms)  # a task that ended in time: forgotten
                wait = self._alarms[0].due - time.monotonic() if self._alarms else None
                if wait is None or wait > 0:
                    self._changed.wait(wait)
                    continue
                alarm = heapq.heappop(self._alarms)
            # Apart from the loop: stopping a task takes its grace period, and others may be due meanwhile.
            threading.Thread(target=alarm.action, name="batchmagic-timeout", daemon=True).start()


@dataclass
class _Task:
    task_id: str
    spec_path: Path
    dir: Path
    process: subprocess.Popen[bytes] | Forked | _Adopted | None = None
    started: float | None = None
    ended: float | None = None
    failure: str = ""
    timer: _Alarm | None = None  # the --timeout watchdog, cancelled when the process ends


@dataclass
class _LocalRun:
    submission: TaskSubmission
    tasks: dict[str, _Task]
    cancelled: bool = False
    watch_only: bool = False  # another client holds the run's lease: its pending tasks are that client's to start
    may_take_over: bool = False  # a watcher that takes the lease once its holder is gone (not a status read)
    lease: _Lease | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    master_port: int = 0  # a distributed run's rank 0 port: a free one, as torchrun --standalone picks
    watcher: subprocess.Popen[bytes] | None = None  # a distributed run's rank watcher, which outlives this process


class LocalBackend(Backend):
    """Run tasks as subprocesses, at most ``slots_per_node`` (times ``nodes``) at once.

    Parameters
    ----------
    home : Path
        batchmagic's state directory; run data goes under ``home/runs``.
    python : str, optional
        The interpreter that runs the runner. Default: this one.
    warm : bool, optional
        Fork runners from this process's warm worker (:mod:`batchmagic.backends.warm`), started by the
        first run; False: every runner is a fresh interpreter (``AzBatch.warm_worker = 'off'``).
    """

    name = "local"
    poll_intervals = (0.05, 0.5)
    store: LocalStore

    def __init__(self, home: Path, *, python: str | None = None, warm: bool = True) -> None:
        self.home = Path(home)
        self.store = LocalStore(self.home)
        self.python = python or sys.executable
        self._runs: dict[str, _LocalRun] = {}
        self._warm = warm
        self._watchdog = _Watchdog()

    @property
    def warm(self) -> WarmWorker | None:
        """The warm worker runners are forked from: this process's one for the interpreter and the current
        environment, shared with every other backend (None when switched off). Made, not started: the
        first run starts it."""
        return shared_worker(self.python, _worker_environment()) if self._warm else None

    def close(self) -> None:
        """End this process's warm worker of this interpreter and its warm container (Session.teardown): the
        next run starts them again."""
        if self._warm:
            close_workers(self.python)
            close_containers()

    def warm_container(self, submission: TaskSubmission) -> ContainerWorker | None:
        """The warm container a ``--container`` run's tasks are forked in (:mod:`batchmagic.backends.warm_container`):
        this process's one for the run's image and container options (None when switched off, and for a
        distributed run, whose ranks each start fresh). Made, not started: the first run starts it."""
        if not self._warm or not submission.image or submission.distributed:
            return None
        env = inherited_environment(_SECRET_ENV)
        options = tuple(container_options(submission, self.store.root.resolve()))
        return shared_container(ContainerPlan(submission.image, options, env.get("DOCKER_HOST", "")), env)

    def _worker(self, run: _LocalRun) -> WarmWorker | ContainerWorker | None:
        """What a task of ``run`` is forked from, if anything."""
        if run.submission.image:
            return self.warm_container(run.submission)
        # A distributed run's ranks start fresh: each sets its share of the cores (OMP_NUM_THREADS...)
        # before numpy or torch reads it, which a forked runner has done already.
        return None if run.submission.distributed else self.warm

    def default_slots(self, tasks: int) -> int:
        """As many tasks at once as this machine has cores (a sweep's tasks are independent processes), and
        one more when the warm worker forks them: at each task's end the hand-off (its end seen, the next
        runner forked and set up, a chain of three processes) otherwise leaves a core idle for milliseconds,
        which at a fork's start of a few milliseconds is much of a short task's time (bench/warm_start.py)."""
        return max(1, min((os.cpu_count() or 1) + (1 if self._warm else 0), tasks))

    def gpus(self, vm_size: str, *, container: bool = True) -> int:
        """With ``--container``, this machine's NVIDIA GPUs (``nvidia-smi -L``), whatever ``--vm`` says: the
        container gets them all and the runner checks it sees them. Without, none: the cell runs in the
        kernel's own environment on this machine, which batchmagic does not second-guess."""
        return host_gpus() if container else 0

    def submit(self, submission: TaskSubmission) -> None:
        tasks = {}
        for task_id in submission.task_ids:
            spec_path = self.store.path(submission.spec_keys[task_id])
            tasks[task_id] = _Task(task_id, spec_path, spec_path.parent)
        run = _LocalRun(submission, tasks, master_port=_free_port() if submission.distributed else 0)
        run.lease = self._lease(submission.run_id)
        run.lease.take()  # a new run's: nobody else knows it yet
        self._runs[submission.run_id] = run
        self._start_ready(run)

    def _lease(self, run_id: str) -> _Lease:
        return _Lease(self.store.path(Layout.run_prefix(run_id)) / _LEASE_FILE)

    def attach(self, submission: TaskSubmission, *, take_over: bool = True) -> None:
        """Follow a local run another client submitted: a task whose runner still runs is adopted (its pid
        file), one that ended is read from its result. The tasks that never started are started by the
        one client that holds the run's lease (its submitter while it lives): with ``take_over``, this
        one takes the lease when it is free (now, or later when its holder dies), else it only watches."""
        tasks = {}
        for task_id in submission.task_ids:
            spec_path = self.store.path(submission.spec_keys[task_id])
            task = _Task(task_id, spec_path, spec_path.parent)
            adopted = _Adopted.of(task.dir)
            if adopted is not None:
                task.process, task.started = adopted, adopted.started
            tasks[task_id] = task
        run = _LocalRun(submission, tasks, may_take_over=take_over, lease=self._lease(submission.run_id))
        run.watch_only = not (take_over and run.lease is not None and run.lease.take())
        self._runs[submission.run_id] = run
        for task in tasks.values():  # a rank that fails ends the others, whoever started them
            if task.process is not None:
                threading.Thread(target=self._reap, args=(run, task), daemon=True).start()
        self._start_ready(run)

    def _start_ready(self, run: _LocalRun) -> None:
        with run.lock:
            if run.cancelled or run.watch_only:
                return
            running = sum(1 for t in run.tasks.values() if t.process is not None and t.process.poll() is None)
            slots = max(1, run.submission.slots_per_node) * max(1, run.submission.nodes)
            if run.submission.distributed:
                slots = len(run.tasks)  # the ranks start together: they wait for each other
            spawned = False
            for task in run.tasks.values():
                if running >= slots:
                    break
                if task.process is None:
                    self._spawn(run, task)
                    running, spawned = running + 1, True
            if spawned and run.submission.distributed and all(t.process is not None for t in run.tasks.values()):
                self._watch_ranks(run)

    def _watch_ranks(self, run: _LocalRun) -> None:
        """Start the run's rank watcher (:mod:`batchmagic.runner.rankwatch`): in a session of its own, it
        outlives this process, so a rank that fails ends the others whether or not any client watches."""
        run_dir = self.store.path(Layout.run_prefix(run.submission.run_id))
        ranks = [
            f"{t.task_id}={_container_name(run.submission.run_id, t.task_id)}" if run.submission.image else t.task_id
            for t in run.tasks.values()
        ]
        env = inherited_environment(_SECRET_ENV) | {"PYTHONPATH": _PACKAGE_ROOT}
        with open(run_dir / "rankwatch.txt", "ab") as out:
            argv = [self.python, "-P", "-m", "batchmagic.runner.rankwatch", str(run_dir), *ranks]
            run.watcher = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        threading.Thread(target=run.watcher.wait, name="rankwatch-reap", daemon=True).start()

    def _spawn(self, run: _LocalRun, task: _Task) -> None:
        workdir = task.dir / "wd"
        workdir.mkdir(parents=True, exist_ok=True)
        env = inherited_environment(_SECRET_ENV)
        env["PYTHONPATH"] = _PACKAGE_ROOT  # the runner is the client's own batchmagic, whatever is installed
        env.update(
            AZ_BATCH_TASK_ID=task.task_id,
            AZ_BATCH_JOB_ID=run.submission.run_id,
            AZ_BATCH_TASK_WORKING_DIR=str(workdir),
            PYTHONUNBUFFERED="1",
        )
        env.update(_rank_environment(run, task))
        argv = [self.python, "-P", "-m", "batchmagic.runner", "--spec", str(task.spec_path)]
        if run.submission.image:  # --container: the same runner, in the training image, via the local engine
            argv = _container_argv(run.submission, task, workdir, self.store.root.resolve())
        with open(task.dir / "stdout.txt", "wb") as out, open(task.dir / "stderr.txt", "wb") as err:
            forked = None
            worker = self._worker(run)
            if worker is not None:
                given = env
                if isinstance(worker, ContainerWorker):  # what `docker run -e KEY` would add to the image's
                    given = {k: env[k] for k in container_env_names(run.submission) if k in env}
                out_path, err_path = task.dir / "stdout.txt", task.dir / "stderr.txt"
                forked = worker.fork(task.spec_path, workdir, given, out_path, err_path, task.dir / "result")
            task.process = forked or subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, killed as one
            )
        task.started = time.time()
        (task.dir / _PID_FILE).write_text(f"{task.process.pid} {start_ticks(task.process.pid)} {task.started}")
        task.timer = self._watchdog.after(run.submission.timeout, lambda: self._time_out(run, task))
        if isinstance(task.process, Forked):  # reaped from the thread that watches it: no thread of its own
            task.process.on_end(lambda: self._reap(run, task))
        else:
            threading.Thread(target=self._reap, args=(run, task), name=f"reap-{task.task_id}", daemon=True).start()

    def _reap(self, run: _LocalRun | None, task: _Task) -> None:
        """When a task's process ends: note it, stop its watchdog, start the next pending task (a sweep goes
        on whether or not anyone polls)."""
        assert task.process is not None
        code = task.process.wait()
        if run is not None and run.submission.distributed and not task.failure:
            task.failure = stopped_note(task.dir)  # the rank watcher stopped it after another rank failed
        try:  # whatever the cell started and the runner could not end goes with it (SIGKILL ignores no one)
            os.killpg(task.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if code < 0 and not isinstance(task.process, Forked):
            # A fresh runner killed outright ended nothing, and is no warm worker's: what its cell started in
            # a session of its own went to init. The task's working directory, in its environment, names it.
            end_processes_with("AZ_BATCH_TASK_WORKING_DIR", str(task.dir / "wd"))
        self._finished(task)
        if run is not None:
            self._end_ranks_after(run, task)
            self._start_ready(run)

    def _end_ranks_after(self, run: _LocalRun, task: _Task) -> None:
        """A rank that failed ends the others at once: they would wait for it in their next collective
        (PyTorch's timeout is 30 minutes) instead of failing."""
        if not run.submission.distributed or run.cancelled or task.process is None:
            return
        code = task.process.poll()
        if (code == 0 and not task.failure) or task.failure.startswith(STOPPED_AFTER):
            return
        with run.lock:
            others = [t for t in run.tasks.values() if t is not task and t.process is not None and t.ended is None]
            for other in others:
                if not other.failure:
                    other.failure = f"{STOPPED_AFTER} {task.task_id} failed"
        self._stop_all(run, others)

    @staticmethod
    def _finished(task: _Task) -> None:
        if task.ended is None:
            task.ended = time.time()
            if task.timer is not None:
                task.timer.cancel()

    def _stop(self, run: _LocalRun, task: _Task) -> None:
        """End a task: its process group, and its container when it runs in one."""
        self._stop_all(run, [task])

    @staticmethod
    def _stop_all(run: _LocalRun, tasks: list[_Task]) -> None:
        """End tasks together: every process group gets SIGTERM at once and the one grace period, then SIGKILL
        (a rank blocked in a collective does not see SIGTERM: one by one, each would take the grace period
        while the caller waits). Then their containers (the docker CLI going away does not stop a container
        that ignores the signal); one forked in the warm container stays, it is the worker's."""
        _kill_groups([task.process for task in tasks if task.process is not None])
        if run.submission.image:
            names = [
                _container_name(run.submission.run_id, t.task_id) for t in tasks if not isinstance(t.process, Forked)
            ]
            if names:
                subprocess.run(["docker", "rm", "-f", *names], capture_output=True, timeout=60, check=False)

    def _time_out(self, run: _LocalRun, task: _Task) -> None:
        if task.process is not None and task.process.poll() is None:
            task.failure = f"stopped after its --timeout of {format_duration(run.submission.timeout)}"
            self._stop(run, task)

    def poll(self, run_id: str) -> BackendStatus:
        run = self._runs[run_id]
        if run.watch_only and run.may_take_over and not run.cancelled and run.lease and run.lease.take():
            run.watch_only = False  # the lease's holder is gone: what it would still have started is ours
        self._start_ready(run)
        statuses = {}
        for task in run.tasks.values():
            if task.process is None and run.watch_only and (adopted := _Adopted.of(task.dir)) is not None:
                task.process, task.started = adopted, adopted.started  # its own client started it since
            status = TaskStatus(task.task_id, node=_node_name(run, task), started=task.started)
            process = task.process
            if process is None:
                status.state = "completed" if run.cancelled else "pending"
                status.failure = "cancelled before it started" if run.cancelled else ""
            elif (code := process.poll()) is None:
                status.state = "running"
            else:
                self._finished(task)
                status.state, status.exit_code, status.ended = "completed", code, task.ended
                if run.submission.distributed and not task.failure:
                    task.failure = stopped_note(task.dir)
                status.failure = task.failure or _docker_gpu_failure(run.submission, task, code) or exit_reason(code)
            statuses[task.task_id] = status
        states = {s.state for s in statuses.values()}
        if states == {"completed"} and run.lease is not None:
            run.lease.release()  # nothing is left to start: no file descriptor held per finished run
        phase = Phase.RUNNING if "running" in states or states == {"completed"} else Phase.QUEUED
        return BackendStatus(phase=phase, tasks=statuses)

    def cancel(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is None:
            return
        if run.submission.distributed:  # the rank watcher leaves the ranks to the cancel
            with contextlib.suppress(OSError):
                (self.store.path(Layout.run_prefix(run_id)) / CANCELLED_FILE).touch()
        with run.lock:
            run.cancelled = True
            alive = [t for t in run.tasks.values() if t.process is not None and t.process.poll() is None]
            for task in alive:
                task.failure = "cancelled"
            self._stop_all(run, alive)

    def release(self, run_id: str) -> list[str]:
        run = self._runs.get(run_id)
        if run is None:
            return []
        alive = [t for t in run.tasks.values() if t.process is not None and t.process.poll() is None]
        self.cancel(run_id)
        if run.lease is not None:
            run.lease.release()
        for task in run.tasks.values():
            if task.timer is not None:
                task.timer.cancel()
        return [f"local process {t.process.pid} (task {t.task_id})" for t in alive if t.process]

    def task_log_hint(self, run_id: str, task_id: str) -> str:
        return f"its own stderr is in {self.store.path(Layout.local_process_file(run_id, task_id, 'stderr.txt'))}"


_PID_FILE = "pid"
_LEASE_FILE = "lease"


class _Lease:
    """Which client starts a run's pending tasks: the one holding an exclusive ``flock`` on the run's
    ``lease`` file. Taking it is atomic, and it is let go when its holder's process ends however it ends
    (the kernel drops the lock of a killed process), so the holder's liveness needs no pid check and no
    expiry. The file says who holds it (pid, host), for a reader."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def take(self) -> bool:
        """Hold the lease if no live client does; True if this one holds it now."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False  # the run's directory is gone: nothing is left to start
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError:
            pass  # a full disk: the lock is what counts
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rank_environment(run: _LocalRun, task: _Task) -> dict[str, str]:
    """A distributed run's rank's variables: every "node" is this machine (``MASTER_ADDR`` 127.0.0.1)."""
    sub = run.submission
    rank = rank_of(task.task_id)
    if not sub.distributed or rank is None:
        return {}
    node, local = divmod(rank, max(1, sub.procs_per_node))
    # Every rank shares this machine's cores, unless the environment the rank inherits already says how.
    threads = thread_budget(os.cpu_count() or 1, len(sub.task_ids), inherited_environment(_SECRET_ENV))
    return threads | rank_environment(
        node_rank=node,
        local_rank=local,
        nodes=sub.nodes,
        procs_per_node=sub.procs_per_node,
        master_addr="127.0.0.1",
        master_port=run.master_port,
    )


def _node_name(run: _LocalRun, task: _Task) -> str:
    rank = rank_of(task.task_id)
    if not run.submission.distributed or rank is None:
        return "localhost"
    return f"localhost (node {rank // max(1, run.submission.procs_per_node)})"


class _Adopted:
    """A task's runner started by another client (a kernel that is gone): not our child, so it is
    watched through /proc, and its exit code is read from its result (0 ok, 1 the cell failed)."""

    def __init__(self, pid: int, ticks: int, started: float, result: Path) -> None:
        self.pid = pid
        self.ticks = ticks
        self.started = started
        self._result = result
        self.returncode: int | None = None

    @classmethod
    def of(cls, task_dir: Path) -> _Adopted | None:
        try:
            pid, ticks, started = (task_dir / _PID_FILE).read_text().split()
        except (OSError, ValueError):
            return None  # never started
        return cls(int(pid), int(ticks), float(started), task_dir / "result")

    def poll(self) -> int | None:
        if self.returncode is None and not (self.ticks and start_ticks(self.pid) == self.ticks):
            self.returncode = code_from_result(self._result)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("runner", timeout or 0)
            time.sleep(0.2)
        return code


def _container_name(run_id: str, task_id: str) -> str:
    return f"batchmagic-{run_id}-{task_id}"


def _container_argv(submission: TaskSubmission, task: _Task, workdir: Path, store_root: Path) -> list[str]:
    """``docker run`` of the runner in ``submission.image`` (see :func:`container_options`), named so it can
    be killed, in the task's working directory, with the task's variables by name only (``-e KEY``: their
    values come from the client's environment, never its command line); ``--env`` values come in the spec."""
    argv = ["docker", "run", "--rm", "--name", _container_name(submission.run_id, task.task_id)]
    argv += [*container_options(submission, store_root), "-w", str(workdir)]
    for key in container_env_names(submission):
        argv += ["-e", key]
    return argv + [submission.image, "python3", "-P", "-m", "batchmagic.runner", "--spec", str(task.spec_path)]


def container_options(submission: TaskSubmission, store_root: Path) -> list[str]:
    """The ``docker run`` options every container of a run gets, its own or the warm one it is forked in:
    host network, this user's uid, the store mounted at the same path (so the spec's file:// URLs work: the
    run's directory, and the content-addressed inputs and objects beside it). On a machine with NVIDIA GPUs
    the container gets them all (``--gpus all``: the CLI's form of the Docker API's
    ``DeviceRequest(count=-1, capabilities=[["gpu"]])``), as a Batch GPU node gives its task's container."""
    home = store_root
    options = ["--network", "host", "--user", f"{os.getuid()}:{os.getgid()}", "-v", f"{home}:{home}"]
    if submission.distributed or submission.gpus:  # NCCL and DataLoader workers want more than 64 MB of /dev/shm
        options += ["--shm-size", submission.shm_size or DEFAULT_SHM_SIZE]
    if submission.gpus:
        options += ["--gpus", "all"]
    return options


def container_env_names(submission: TaskSubmission) -> list[str]:
    """The variables a task's runner gets in a container, from the task's environment."""
    names = ["AZ_BATCH_TASK_ID", "AZ_BATCH_JOB_ID", "AZ_BATCH_TASK_WORKING_DIR", "PYTHONUNBUFFERED"]
    if submission.distributed:  # the ranks reach each other over the host's loopback
        names += [*ENV_NAMES, "OMP_NUM_THREADS"]
    return names


#: What Docker says when it cannot hand a container the GPUs (no NVIDIA Container Toolkit, or its runtime not set up).
_NO_GPU_RUNTIME = ("could not select device driver", "nvidia-container-cli", "unknown or invalid runtime name: nvidia")


def _docker_gpu_failure(submission: TaskSubmission, task: _Task, code: int) -> str:
    """One line for a GPU container Docker could not start (``docker run`` exits 125 before the runner runs);
    "" for anything else."""
    if code != 125 or not submission.gpus or not submission.image:
        return ""
    try:
        said = (task.dir / "stderr.txt").read_text(encoding="utf-8", errors="replace")[-4000:]
    except OSError:
        return ""
    if not any(marker in said for marker in _NO_GPU_RUNTIME):
        return ""
    return (
        "Docker could not give the container this machine's GPUs (docker run --gpus all failed: is the NVIDIA "
        "Container Toolkit installed and Docker restarted since?): install nvidia-container-toolkit, or run "
        "without --container"
    )


#: Variables that change while a kernel lives and that no import reads: left out of the warm worker's
#: environment, so that a change of them does not retire the worker (each forked runner gets its task's
#: whole environment, these included).
_NOT_THE_WORKERS = ("BATCHMAGIC_", "AZ_BATCH_", "PYTEST_", "JPY_", "COLUMNS", "LINES")


def _worker_environment() -> dict[str, str]:
    """The warm worker's own environment: a task's, without what is the task's own (each forked runner
    gets its task's whole environment)."""
    env = {k: v for k, v in inherited_environment(_SECRET_ENV).items() if not k.startswith(_NOT_THE_WORKERS)}
    env.update(PYTHONPATH=_PACKAGE_ROOT, PYTHONUNBUFFERED="1")
    return env


def _kill_groups(processes: list[subprocess.Popen[bytes] | Forked | _Adopted]) -> None:
    """SIGTERM every task's process group (each runner flushes its log), then one grace period for all of
    them, then SIGKILL the groups that linger."""
    signalled = []
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            signalled.append(process)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + _GRACE_SECONDS
    lingering = []
    for process in signalled:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            lingering.append(process)
    # SIGKILL them all before waiting for any: waiting for each in turn (a forked runner's end is known once
    # its warm worker reports it, slow on a busy machine) would leave the later ones running past the grace.
    for process in lingering:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    for process in lingering:
        process.wait()
