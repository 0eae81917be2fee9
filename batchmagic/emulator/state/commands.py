"""Running a command on a node, with retries: the one path every kind of task the service runs shares.

A pool's start task, a job's tasks, a multi-instance task's coordination command and a job's
preparation and release tasks all run the same way on the service: the resource files are downloaded
into the task's directory, the command line starts (through the executor: on the host or in a
container), and an attempt that exits non-zero runs again until ``maxTaskRetryCount`` retries are
spent (-1: without limit). An attempt is killed when the caller says it must stop (terminate, reboot,
shutdown) or when it passes its ``maxWallClockTime``; neither is retried.

What differs between them (where the state is recorded, what stops them) stays with the caller, in
the hooks :func:`run_command` takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchmagic.emulator.executors import RunningTask, TaskContext, TaskStartError
from batchmagic.emulator.state.model import TICK, Node, failure_info, parse_duration
from batchmagic.emulator.transfer import TransferError, download_resource_files

__all__ = [
    "CommandRun",
    "CommandResult",
    "run_command",
    "wait_for",
    "node_env",
    "exit_failure",
    "started_container",
    "container_ended",
]

#: How long a killed attempt is given to be reaped before it is reported as gone.
_KILL_WAIT = 10.0


@dataclass
class CommandRun:
    """One command to run on one node.

    Parameters
    ----------
    ctx : TaskContext
        The executor's view of the attempt (command line, directories, environment, container settings).
    resource_files : list of dict
        ``resourceFiles`` entries, downloaded into ``resource_dir`` before the first attempt.
    resource_dir : Path or None
        Where the resource files go; the working directory (``ctx.wd``) when None.
    max_retries : int
        ``maxTaskRetryCount``: retries after a non-zero exit; -1 retries without limit.
    max_wall_clock_time : str or None
        ``maxWallClockTime`` (an ISO 8601 duration, counted from each attempt's start); None for unlimited.
    deadline : float or None
        When the command must have ended (the emulated clock), instead of ``max_wall_clock_time``: a
        multi-instance task's attempt counts its wall clock from its coordination commands' start.
    """

    ctx: TaskContext
    resource_files: list[dict[str, Any]] = field(default_factory=list)
    resource_dir: Path | None = None
    max_retries: int = 0
    max_wall_clock_time: str | None = None
    deadline: float | None = None

    @property
    def wall_clock(self) -> float | None:
        """``max_wall_clock_time`` in seconds; None for unlimited."""
        return parse_duration(self.max_wall_clock_time)


@dataclass
class CommandResult:
    """How a command ended: its last exit code and the ``failureInfo`` the service would report."""

    exit_code: int | None
    failure: dict[str, Any] | None
    stopped: bool = False
    """The caller stopped it (its ``should_stop`` became true)."""
    timed_out: bool = False
    """It ran past its ``maxWallClockTime``."""
    retries: int = 0

    @property
    def succeeded(self) -> bool:
        """No failure: the command exited 0."""
        return self.failure is None


def started_container(executor: Any, handle: RunningTask) -> dict[str, Any] | None:
    """The ``containerInfo`` of an attempt that runs in a container of its own (docker inspect's id and status,
    once docker has started it: "set only if the Task runs in a container context"); None without one."""
    name = str(getattr(handle, "container", "") or "")
    info: dict[str, Any] | None = executor.container_info(name) if name else None
    for _ in range(40):
        if info is None or info.get("state") != "created":
            break
        time.sleep(0.05)  # being started by `docker start -a`
        info = executor.container_info(name)
    return info


def container_ended(info: dict[str, Any] | None) -> None:
    """A ``containerInfo`` whose command ended: its container's processes exited (it is removed then), which
    is the status docker inspect gave it last."""
    if info:
        info["state"] = "exited"


def exit_failure() -> dict[str, Any]:
    """The ``failureInfo`` of a command that exited non-zero."""
    return failure_info(
        "FailureExitCode",
        "The task exited with an exit code representing a failure",
        [("Message", "The task exited with an exit code representing a failure")],
    )


def _wall_clock_failure(run: CommandRun) -> dict[str, Any]:
    return failure_info(
        "TaskEnded",
        "Task was ended because it exceeded its maximum wall clock time (maxWallClockTime)",
        [("MaxWallClockTime", str(run.max_wall_clock_time))],
    )


def wait_for(
    handle: RunningTask, should_stop: Callable[[], bool], deadline: float | None, now: Callable[[], float]
) -> tuple[int | None, bool, bool]:
    """Wait for an attempt, killing it when ``should_stop()`` or past ``deadline``.

    Returns
    -------
    (exit_code, stopped, timed_out)
    """
    while True:
        exit_code = handle.wait(TICK)
        if exit_code is not None:
            return exit_code, False, False
        stopped = should_stop()
        timed_out = not stopped and deadline is not None and now() >= deadline
        if stopped or timed_out:
            handle.kill()
            return handle.wait(_KILL_WAIT), stopped, timed_out


def run_command(
    executor: Any,
    run: CommandRun,
    *,
    now: Callable[[], float],
    should_stop: Callable[[], bool],
    before_attempt: Callable[[int], bool] | None = None,
    started: Callable[[RunningTask], None] | None = None,
) -> CommandResult:
    """Download the resource files, then run the command until it succeeds or its retries are spent.

    Parameters
    ----------
    executor : Executor
        Starts each attempt.
    run : CommandRun
        What to run.
    now : callable
        The emulated clock (for the wall-clock limit).
    should_stop : callable
        True when the command must be killed (not retried).
    before_attempt : callable, optional
        Called with the retry number (0 for the first attempt) before each attempt starts; returning
        False ends the command as stopped. Callers record ``startTime``/``retryCount`` here.
    started : callable, optional
        Called with each attempt's handle once it runs (to kill it from elsewhere, or to find it again).

    An empty command line only downloads the resource files.
    """
    try:
        download_resource_files(run.resource_files, run.resource_dir or run.ctx.wd)
    except TransferError as err:
        return CommandResult(None, failure_info(err.code, err.message, err.details))
    if not run.ctx.command_line:
        return CommandResult(0, None)  # nothing to run: a multi-instance task without coordination command
    retry = 0
    while True:
        if before_attempt is not None and not before_attempt(retry):
            return CommandResult(None, failure_info("TaskEnded", "Task Was Ended by User Request"), stopped=True)
        try:
            handle = executor.start(run.ctx)
        except TaskStartError as err:
            return CommandResult(None, failure_info(err.code, err.message, err.details), retries=retry)
        if started is not None:
            started(handle)
        wall = run.wall_clock
        deadline = run.deadline if run.deadline is not None else now() + wall if wall is not None else None
        exit_code, stopped, timed_out = wait_for(handle, should_stop, deadline, now)
        if stopped:
            failure = failure_info("TaskEnded", "Task Was Ended by User Request")
            return CommandResult(exit_code, failure, stopped=True, retries=retry)
        if timed_out:
            return CommandResult(exit_code, _wall_clock_failure(run), timed_out=True, retries=retry)
        if exit_code == 0:
            return CommandResult(0, None, retries=retry)
        if run.max_retries != -1 and retry >= run.max_retries:
            return CommandResult(exit_code, exit_failure(), retries=retry)
        retry += 1


def node_env(
    *,
    account: str,
    url: str,
    pool_id: str,
    node: Node,
    root: Path,
    task_dir: Path,
    extra: dict[str, str] | None = None,
    settings: list[Any] | None = None,
) -> dict[str, str]:
    """The environment the service gives every task on a node (``AZ_BATCH_*`` and ``extra``), then
    ``environmentSettings`` (which may override them)."""
    env = {
        "AZ_BATCH_ACCOUNT_NAME": account,
        "AZ_BATCH_ACCOUNT_URL": url,
        "AZ_BATCH_POOL_ID": pool_id,
        "AZ_BATCH_NODE_ID": node.id,
        "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.dedicated else "false",
        "AZ_BATCH_NODE_ROOT_DIR": str(root),
        "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
        "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
        "AZ_BATCH_TASK_DIR": str(task_dir),
        "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
        "AZ_BATCH_TASK_USER": "_azbatch",
        **(extra or {}),
    }
    for item in settings or []:
        if isinstance(item, dict) and item.get("name"):
            env[str(item["name"])] = str(item.get("value") or "")
    return env
