"""How the emulator runs a task's command line: on the host (``process``) or in Docker (``docker``).

An executor prepares a node when it starts (``prepare_node``: the docker executor pulls the pool's
``containerImageNames`` there) and starts one task attempt (``start``), returning a handle the
scheduler waits on and can kill.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "TaskContext",
    "TaskStartError",
    "RunningTask",
    "Executor",
    "ProcessExecutor",
    "DockerExecutor",
    "make_executor",
]

log = logging.getLogger("batchmagic.emulator")

#: The exit code reported for a task the emulator killed (SIGKILL, as a shell reports it).
KILLED_EXIT_CODE = 137


@dataclass
class TaskContext:
    """Everything an executor needs to run one task attempt."""

    job_id: str
    task_id: str
    pool_id: str
    node_id: str
    task_dir: Path
    command_line: str
    env: dict[str, str]
    """The task's own environment: AZ_BATCH_* and its environmentSettings (not the host's)."""
    container_settings: dict[str, Any] | None = None
    pool_container: dict[str, Any] | None = None
    gpus: int = 0
    """GPUs the node gives its container tasks (its size's, when its image has the NVIDIA driver)."""
    container_name: str = ""
    """A multi-instance task's container on this node: made by its first command (the coordination
    command), each command of the task on the node executed in it, removed when the task ends. So what a
    coordination command starts in the background (the service's "typical coordination command line
    launches a background service") keeps running for the application command."""
    user_identity: dict[str, Any] | None = None
    """The task's ``userIdentity`` (None: the pool's non-admin auto-user): whom its container runs as."""
    shared_dir: str = ""
    """A multi-instance task's ``AZ_BATCH_TASK_SHARED_DIR`` as the service gives it, one path on every node of
    the task (the primary's task directory), each node's own directory there. A container can have it: the
    docker executor mounts the node's task directory (``task_dir``) at this path. A command on the host
    cannot (the emulated nodes share this machine's one filesystem): it keeps its node's own directory,
    which ``env`` names, a different path on each node."""

    @property
    def wd(self) -> Path:
        """The task's working directory, ``<task_dir>/wd``."""
        return self.task_dir / "wd"


class TaskStartError(Exception):
    """A task could not be started; reported in the task's ``failureInfo``.

    Parameters
    ----------
    code : str
        The failureInfo code, e.g. ``"ContainerInvalidImage"``.
    message : str
        The failureInfo message.
    details : list of (str, str)
        ``failureInfo.details`` name/value pairs.
    """

    def __init__(self, code: str, message: str, details: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = list(details or [])


class RunningTask(Protocol):
    """A started task attempt."""

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds; return the exit code, or None while still running."""

    def kill(self) -> None:
        """Kill the attempt and everything it started."""


class Executor(Protocol):
    """The interface the scheduler uses to run tasks."""

    name: str

    def prepare_node(self, pool: dict[str, Any], node_id: str) -> dict[str, Any] | None:
        """Prepare a starting node; return a node ``errors`` entry to make it unusable, else None."""

    def start(self, ctx: TaskContext) -> RunningTask:
        """Start one attempt of a task (stdout/stderr go to ``task_dir``); raise TaskStartError on failure."""

    def adopt(self, identity: dict[str, Any]) -> RunningTask | None:
        """Find an attempt an earlier emulator process started (see ``--state``); None if it is gone."""

    def release_node(self, root: str) -> None:
        """A node left its pool (its VM is gone): end what its tasks left running (see :func:`end_node_processes`)."""

    def container_info(self, name: str) -> dict[str, Any] | None:
        """``containerInfo`` (a ``BatchTaskContainerExecutionInfo``) of the container ``name``; None without one."""

    def close(self) -> None:
        """Release resources (nothing to kill: the scheduler kills the running tasks itself)."""


#: The pool's non-admin auto-user (``_azbatch`` on the service's Linux nodes) as uid and gid, when the emulator
#: runs as root and so can give a task's files to another user. Batch Shipyard, written by the Batch team,
#: aligns its own ``_azbatch`` to 1000:1000 "to batch pool"; BATCHEMU_TASK_USER=UID:GID models another.
NONADMIN_USER = (1000, 1000)


def task_user(ctx: TaskContext) -> tuple[int, int]:
    """The uid and gid a task runs as. The service runs a task as its ``userIdentity`` (default: the pool's
    non-admin auto-user); on Linux it maps that user into a container task's container ("Batch maps the
    user/group permission to the container"; an auto-user of admin elevation runs as root there), and the
    task's files and directories are owned by that user. An emulator that is not root runs every task as
    itself, the only user it can be."""
    auto = (ctx.user_identity or {}).get("autoUser") or {}
    if str(auto.get("elevationLevel") or "nonadmin").lower() == "admin":
        return (0, 0) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    given = os.environ.get("BATCHEMU_TASK_USER", "")
    uid, _, gid = given.partition(":")
    return (int(uid), int(gid or uid)) if uid.isdigit() and (gid or uid).isdigit() else NONADMIN_USER


def own_task_dir(task_dir: Path, user: tuple[int, int]) -> None:
    """Give the task's directory and all in it (its working directory, its resource files) to its user, as
    the service's node agent does ("All files and directories of a task are owned by the task user").

    It runs as root while a task of the node may run as that user (a multi-instance task's coordination
    command, when its application command starts): each name is changed relative to its open directory,
    never through a link, and fwalk enters no directory swapped for a link since it was listed, so a link
    to root's files outside gives the task user none of them."""
    if os.geteuid() != 0:
        return
    for _here, dirs, files, dir_fd in os.fwalk(task_dir, follow_symlinks=False):
        with contextlib.suppress(OSError):
            os.chown(dir_fd, *user)
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                os.chown(name, *user, dir_fd=dir_fd, follow_symlinks=False)


def check_run_options(settings: dict[str, Any] | None) -> None:
    """The service refuses ``--gpus`` in a task's ``containerRunOptions``: it gives a GPU node's GPUs to the
    container itself. The task fails at its start with ``ContainerInvalidSettings`` (category UserError)."""
    options = shlex.split(str((settings or {}).get("containerRunOptions") or ""))
    if any(o == "--gpus" or o.startswith("--gpus=") for o in options):
        raise TaskStartError(
            "ContainerInvalidSettings",
            "At least one value of specified task container settings is invalid",
            [("Message", "--gpus is not allowed in containerRunOptions: Batch gives the container the node's GPUs")],
        )


@functools.cache
def host_gpus() -> int:
    """GPUs ``nvidia-smi -L`` lists on this host (0 without the NVIDIA driver): the docker executor passes
    them to the containers of GPU nodes."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in done.stdout.splitlines() if line.startswith("GPU ")) if done.returncode == 0 else 0


def node_processes(root: str) -> list[int]:
    """This machine's processes that were started for the node whose root directory is ``root``: the
    environment the emulator gives every command of a node names it (``AZ_BATCH_NODE_ROOT_DIR``)."""
    marker = f"AZ_BATCH_NODE_ROOT_DIR={root}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "environ"), "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            found.append(int(entry.name))
    return found


def end_node_processes(root: str) -> None:
    """Kill what a node's tasks left running on this machine when the node leaves its pool. On the service
    the node's VM goes, and with it whatever its tasks started and left behind: a job preparation task's
    "local service on the Node" (the reference's words) whose job's release task never ran, because the
    pool was deleted first."""
    for pid in node_processes(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _start_time(pid: int) -> str | None:
    """A process's start time (``/proc/<pid>/stat`` field 22), to tell it from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


class _Process:
    def __init__(self, proc: subprocess.Popen[bytes], on_kill: Any = None, exit_path: Path | None = None) -> None:
        self.proc = proc
        self.on_kill = on_kill
        self.exit_path = exit_path
        self.started = _start_time(proc.pid)
        self.container = ""
        """The attempt's own container (docker executor), which the task reports (``containerInfo``)."""

    @property
    def identity(self) -> dict[str, Any] | None:
        """What :meth:`ProcessExecutor.adopt` needs to find this attempt again after an emulator restart."""
        if self.exit_path is None or self.started is None:
            return None
        return {"pid": self.proc.pid, "started": self.started, "exit_path": str(self.exit_path)}

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return KILLED_EXIT_CODE if code == -signal.SIGKILL else (128 - code if code < 0 else code)

    def kill(self) -> None:
        if self.on_kill is not None:
            self.on_kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class _Adopted:
    """A task attempt started by an earlier emulator process: polled by pid, its exit code read from a file."""

    def __init__(self, pid: int, started: str, exit_path: Path) -> None:
        self.pid, self.started, self.exit_path = pid, started, exit_path

    def _alive(self) -> bool:
        return _start_time(self.pid) == self.started

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self._alive():
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        try:
            return int(self.exit_path.read_text().strip())
        except (OSError, ValueError):
            return KILLED_EXIT_CODE  # it ended without its wrapper writing a code: killed

    def kill(self) -> None:
        if self._alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


#: Runs the command line in a child shell and writes its exit code beside the task directory, so an
#: emulator restarted with --state can tell how a task that outlived the previous one ended.
_WRAPPER = 'rm -f "$2"; /bin/sh -c "$1"; code=$?; echo $code > "$2"; exit $code'


def _exit_path(ctx: TaskContext) -> Path:
    return ctx.task_dir.parent / f".{ctx.task_dir.name}.exitcode"


def _open_logs(ctx: TaskContext) -> tuple[Any, Any]:
    return open(ctx.task_dir / "stdout.txt", "wb"), open(ctx.task_dir / "stderr.txt", "wb")


def _launch(
    ctx: TaskContext, argv: list[str], env: dict[str, str], code: str, what: str, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, its output in the task's stdout.txt and stderr.txt; a
    launch that fails is the task's start error ``code``."""
    out, err = _open_logs(ctx)
    try:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
    except OSError as exc:
        raise TaskStartError(code, f"{what}: {exc}") from exc
    finally:
        out.close()
        err.close()


@dataclass
class ProcessExecutor:
    """Run command lines on the host with ``/bin/sh -c`` in their own process group.

    The directory of the emulator's ``sys.executable`` comes first on PATH, so ``python`` in a command
    line is the emulator's interpreter. Container settings are accepted but ignored.
    """

    python_bin_dir: str = ""
    name: str = "process"

    def prepare_node(self, pool: dict[str, Any], node_id: str) -> dict[str, Any] | None:
        return None

    def start(self, ctx: TaskContext) -> RunningTask:
        if ctx.container_settings:
            check_run_options(ctx.container_settings)
        env = {**os.environ, **ctx.env}
        if self.python_bin_dir:
            env["PATH"] = self.python_bin_dir + os.pathsep + env.get("PATH", os.defpath)
        argv = ["/bin/sh", "-c", _WRAPPER, "batch-task", ctx.command_line, str(_exit_path(ctx))]
        proc = _launch(ctx, argv, env, "CommandLaunchFailed", "The task command line could not be launched", cwd=ctx.wd)
        return _Process(proc, exit_path=_exit_path(ctx))

    def adopt(self, identity: dict[str, Any]) -> RunningTask | None:
        """The attempt described by ``identity`` (a handle's ``identity``) if it is still running, or if it
        ended while no emulator watched it: its wrapper wrote its exit code (it removes an earlier
        attempt's first), so it completed and must not run again. None: it is gone without a code
        (killed with the node), and goes back to its job's queue."""
        try:
            handle = _Adopted(int(identity["pid"]), str(identity["started"]), Path(identity["exit_path"]))
        except (KeyError, TypeError, ValueError):
            return None
        return handle if handle._alive() or handle.exit_path.exists() else None

    def release_node(self, root: str) -> None:
        end_node_processes(root)

    def container_info(self, name: str) -> dict[str, Any] | None:
        return None  # commands run on the host: there is no container to report

    def close(self) -> None:
        return None


def _registry_for(image: str, registries: list[dict[str, Any]]) -> dict[str, Any] | None:
    host = image.split("/", 1)[0] if "/" in image else ""
    for reg in registries:
        server = str(reg.get("registryServer") or "docker.io")
        if server == host or (not host and server in ("docker.io", "index.docker.io")):
            return reg
    return None


def docker_argv(ctx: TaskContext, image: str, name: str) -> list[str]:
    """The ``docker run`` (or ``docker create``) of a container task: its run options, the host's network
    unless they name one, the node's root mounted at the same path, the task's environment, and the node's
    GPUs when it has them and this host too (``--gpus all``: the service gives a GPU node's container every
    GPU)."""
    settings = ctx.container_settings or {}
    options = shlex.split(str(settings.get("containerRunOptions") or ""))
    argv = ["docker", "run", "--name", name]
    if "--rm" not in options:
        argv.append("--rm")
    if not any(o == "--network" or o.startswith(("--network=", "--net=")) or o == "--net" for o in options):
        argv += ["--network", "host"]
    # The node's whole root, as on the service: the task sees its node's startup and shared directories.
    mount = ctx.env.get("AZ_BATCH_NODE_ROOT_DIR") or str(ctx.task_dir)
    argv += ["-v", f"{mount}:{mount}"]
    if ctx.shared_dir and ctx.shared_dir != str(ctx.task_dir):
        argv += ["-v", f"{ctx.task_dir}:{ctx.shared_dir}"]  # AZ_BATCH_TASK_SHARED_DIR: this node's, one path
    if settings.get("workingDirectory", "taskWorkingDirectory") != "containerImageDefault":
        argv += ["-w", str(ctx.wd)]
    uid, gid = task_user(ctx)
    argv += ["-u", f"{uid}:{gid}"]  # the task's user, not the image's USER (run options may still set one)
    for key, value in ctx.env.items():
        argv += ["-e", f"{key}={value}"]
    if ctx.gpus and host_gpus():
        argv += ["--gpus", "all"]
    return argv + options + [image] + shlex.split(ctx.command_line)


@dataclass
class DockerExecutor:
    """Run container tasks in containers made with ``docker create`` and run with ``docker start -a`` (network
    host, the node's directory mounted at the same path).

    Images are pulled with the docker SDK (``DOCKER_HOST`` honoured), using the matching
    ``containerRegistries`` credentials. Tasks without ``containerSettings`` run on the host as with
    the process executor, as on a real container-enabled pool.
    """

    python_bin_dir: str = ""
    name: str = "docker"
    _client: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _docker(self) -> Any:
        with self._lock:
            if self._client is None:
                import docker  # the only module of the emulator that imports docker

                self._client = docker.from_env()
            return self._client

    def _ensure_image(self, image: str, registries: list[dict[str, Any]]) -> None:
        client = self._docker()
        try:
            client.images.get(image)
            return
        except Exception:  # noqa: BLE001 - not present locally (or engine error, surfaced by the pull)
            pass
        reg = _registry_for(image, registries)
        auth = None
        if reg and reg.get("username"):
            auth = {"username": reg["username"], "password": reg.get("password", "")}
        repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
        client.images.pull(repo, tag=tag or "latest", auth_config=auth)

    def prepare_node(self, pool: dict[str, Any], node_id: str) -> dict[str, Any] | None:
        cfg = (pool.get("virtualMachineConfiguration") or {}).get("containerConfiguration") or {}
        registries = list(cfg.get("containerRegistries") or [])
        for image in cfg.get("containerImageNames") or []:
            try:
                self._ensure_image(image, registries)
            except Exception as exc:  # noqa: BLE001 - any pull failure makes the node unusable
                log.warning("node %s: cannot pull %s: %s", node_id, image, exc)
                return {
                    "code": "ContainerInvalidImage",
                    "message": "One or more container images specified are invalid",
                    "errorDetails": [
                        {"name": "ContainerImage", "value": image},
                        {"name": "Message", "value": str(exc)[:1000]},
                    ],
                }
        return None

    def start(self, ctx: TaskContext) -> RunningTask:
        settings = ctx.container_settings
        if not settings:
            return ProcessExecutor(self.python_bin_dir).start(ctx)
        check_run_options(settings)
        if ctx.shared_dir:  # a multi-instance task: its container sees its node's task directory at one path
            ctx = replace(ctx, env={**ctx.env, "AZ_BATCH_TASK_SHARED_DIR": ctx.shared_dir})
        image = str(settings.get("imageName") or "")
        registries = list((ctx.pool_container or {}).get("containerRegistries") or [])
        if settings.get("registry"):
            registries.insert(0, settings["registry"])
        try:
            self._ensure_image(image, registries)
        except Exception as exc:  # noqa: BLE001
            raise TaskStartError(
                "ContainerInvalidImage",
                "One or more container images specified are invalid",
                [("ContainerImage", image), ("Message", str(exc)[:1000])],
            ) from exc
        own_task_dir(ctx.task_dir, task_user(ctx))
        if ctx.container_name:
            return self._exec_in_task_container(ctx, image)
        name = f"batchemu-{uuid.uuid4().hex[:12]}"
        argv = docker_argv(ctx, image, name)
        argv[1] = "create"  # made first (the task reports its container from its start), then run attached
        host_env = dict(os.environ)
        made = subprocess.run(argv, env=host_env, capture_output=True, timeout=120, check=False)
        if made.returncode != 0:
            raise TaskStartError(
                "ContainerInvalidSettings",
                "The task's container could not be created",
                [("Message", made.stderr.decode(errors="replace")[:1000])],
            )
        start = ["docker", "start", "-a", name]  # its exit code is the container's
        proc = _launch(ctx, start, host_env, "ContainerInvalidSettings", "docker start could not be launched")

        def kill_container() -> None:
            subprocess.run(["docker", "kill", name], env=host_env, capture_output=True, timeout=30, check=False)

        handle = _Process(proc, on_kill=kill_container)
        handle.container = name
        return handle

    def _exec_in_task_container(self, ctx: TaskContext, image: str) -> RunningTask:
        """``docker exec`` the command in the task's container on this node, made first if need be (idle:
        ``sleep infinity`` under docker's init, with the task's run options, network and mount)."""
        name, host_env = ctx.container_name, dict(os.environ)
        with self._lock:
            found = subprocess.run(
                ["docker", "container", "inspect", name], env=host_env, capture_output=True, timeout=60, check=False
            )
            if found.returncode != 0:
                idle = replace(ctx, command_line="infinity")
                argv = docker_argv(idle, image, name)
                argv[2:2] = ["-d", "--init", "--entrypoint", "sleep"]
                made = subprocess.run(argv, env=host_env, capture_output=True, timeout=120, check=False)
                if made.returncode != 0:
                    raise TaskStartError("ContainerInvalidSettings", made.stderr.decode(errors="replace")[:1000])
        uid, gid = task_user(ctx)
        argv = ["docker", "exec", "-u", f"{uid}:{gid}"]
        if (ctx.container_settings or {}).get("workingDirectory", "taskWorkingDirectory") != "containerImageDefault":
            argv += ["-w", str(ctx.wd)]
        for key, value in ctx.env.items():
            argv += ["-e", f"{key}={value}"]
        argv += [name, *shlex.split(ctx.command_line)]
        proc = _launch(ctx, argv, host_env, "ContainerInvalidSettings", "docker exec could not be launched")

        def remove_container() -> None:  # the task ended on this node: its container and all it ran go
            subprocess.run(["docker", "rm", "-f", name], env=host_env, capture_output=True, timeout=60, check=False)

        handle = _Process(proc, on_kill=remove_container)
        handle.container = name
        return handle

    def adopt(self, identity: dict[str, Any]) -> RunningTask | None:
        # A container run's exit code is not kept anywhere once its `docker start -a` client is gone.
        return None

    def release_node(self, root: str) -> None:
        """What the node's tasks left running goes with it: its processes on this machine, and the containers
        that have its root directory mounted (a task's own, or one a task started from the node)."""
        end_node_processes(root)
        host_env = dict(os.environ)
        found = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"volume={root}"],
            env=host_env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        containers = found.stdout.split() if found.returncode == 0 else []
        if containers:
            rm = ["docker", "rm", "-f", *containers]
            subprocess.run(rm, env=host_env, capture_output=True, timeout=120, check=False)

    def container_info(self, name: str) -> dict[str, Any] | None:
        """What ``docker inspect`` says of the container: its id, its status and its error, if any (the
        reference's ``containerId``, ``state`` "equivalent to the status field returned by docker inspect"
        and ``error``). None when docker knows no such container."""
        found = subprocess.run(
            ["docker", "container", "inspect", "--format", "{{json .}}", name],
            env=dict(os.environ), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if found.returncode != 0:
            return None
        try:
            data = json.loads(found.stdout)
        except ValueError:
            return None
        state = data.get("State") or {}
        info = {"containerId": str(data.get("Id") or name), "state": str(state.get("Status") or "")}
        if state.get("Error"):
            info["error"] = str(state["Error"])
        return info

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def make_executor(kind: str, python_bin_dir: str = "") -> Executor:
    """Return the executor named ``kind`` (``"process"`` or ``"docker"``)."""
    if kind == "process":
        return ProcessExecutor(python_bin_dir)
    if kind == "docker":
        return DockerExecutor(python_bin_dir)
    raise ValueError(f"unknown executor {kind!r}; use 'process' or 'docker'")
