"""The emulator's resource records and the small helpers every resource module shares.

Every resource keeps its REST representation (``data``, wire field names) plus the private bookkeeping
its state machine needs. Timestamps come from the emulator's one clock (``batchmagic.emulator.clock``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

from batchmagic.emulator.autoscale import Formula, MetricHistory

__all__ = [
    "Node",
    "Pool",
    "Task",
    "Job",
    "JobSchedule",
    "UNLIMITED_DURATION",
    "TICK",
    "parse_duration",
    "iso",
    "rfc1123",
    "new_etag",
    "touch",
    "transition",
    "failure_info",
    "without_passwords",
    "environ_path_dir",
]

UNLIMITED_DURATION = "P10675199DT2H48M5.4775807S"
_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
#: Seconds between scheduler steps and between polls of a running task.
TICK = 0.05


def parse_duration(value: str | None) -> float | None:
    """Parse an ISO 8601 duration (``PT1H30M``, ``P1D``...) to seconds; None when absent or unlimited.

    Raises
    ------
    ValueError
        When ``value`` is not a duration.
    """
    if not value or value == UNLIMITED_DURATION:
        return None
    m = _DURATION.match(value.strip().upper())
    if not m or value.strip().upper() in ("P", "PT"):
        raise ValueError(value)
    parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    seconds = parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    return None if seconds >= 10675199 * 86400 else seconds


def iso(ts: float) -> str:
    """A timestamp as the service writes it: ``2026-01-22T20:27:10.949589Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc1123(ts: float) -> str:
    """A timestamp as an HTTP date (``Last-Modified``)."""
    return formatdate(ts, usegmt=True)


_etag_lock = threading.Lock()
_etag_last = 0


def new_etag() -> str:
    """A fresh, strictly increasing ETag in the service's ``0x8D...`` style."""
    global _etag_last
    with _etag_lock:
        _etag_last = max(_etag_last + 1, time.time_ns() // 100)
        return "0x8D" + format(_etag_last, "X")[-13:]


@dataclass
class Node:
    """A compute node of a pool."""

    data: dict[str, Any]
    pool_id: str
    dedicated: bool
    used_slots: int = 0
    running: set[tuple[str, str]] = field(default_factory=set)
    preparing: bool = False
    #: "reboot" or "reimage" while the node waits for its tasks to stop (no new task starts there).
    pending_op: str | None = None
    #: The running start task attempt (an executor handle), to kill it when the node goes.
    start_handle: Any = None
    #: Node user accounts by name (never shown, as on the service).
    users: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.data["id"])


@dataclass
class Pool:
    """A pool and its allocation bookkeeping."""

    data: dict[str, Any]
    nodes: dict[str, Node] = field(default_factory=dict)
    alloc_start: float | None = None
    alloc_dedicated: int = 0
    alloc_low: int = 0
    delete_at: float | None = None
    #: While ``allocationState`` is ``stopping`` (after a stop resize): when it becomes ``steady``.
    stop_at: float | None = None
    auto_job_id: str | None = None
    #: What happens to the tasks of nodes the next shrink removes (resize's or the formula's option).
    deallocation: str = "requeue"
    formula: Formula | None = None
    evaluation_interval: float = 900.0
    next_evaluation: float | None = None
    history: MetricHistory = field(default_factory=MetricHistory)

    @property
    def id(self) -> str:
        return str(self.data["id"])


@dataclass
class Task:
    """A task and the handle of its running attempt."""

    data: dict[str, Any]
    job_id: str
    node: Node | None = None
    pool_id: str | None = None
    kill_event: threading.Event = field(default_factory=threading.Event)
    kill_reason: str = ""
    thread: threading.Thread | None = None
    #: A multi-instance task's other nodes (its subtasks'), held while it runs.
    extra_nodes: list[Node] = field(default_factory=list)
    #: A multi-instance task's subtasks, as ``GET .../subtasksinfo`` lists them.
    subtasks: list[dict[str, Any]] = field(default_factory=list)
    #: The primary's coordination command (the subtasks keep theirs): what it left running on the primary
    #: node (a background service) is stopped when the task ends.
    primary_coordination: Any = None
    #: How the executor can find the running attempt again (pid, start time, exit-code file), for --state.
    process: dict[str, Any] | None = None

    job_manager: bool = False
    """The task the service made from its job's ``jobManagerTask``."""

    @property
    def id(self) -> str:
        return str(self.data["id"])


@dataclass
class Job:
    """A job, its tasks and its auto pool."""

    data: dict[str, Any]
    tasks: dict[str, Task] = field(default_factory=dict)
    deadline: float | None = None
    auto_pool_id: str | None = None
    auto_pool_lifetime: str | None = None
    pending_reason: str | None = None
    delete_requested: bool = False
    created: float = 0.0
    prep_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Node id -> the job preparation/release status entry the service lists for that node."""
    prep_failed: set[str] = field(default_factory=set)
    """Nodes where the job preparation task failed: no task of this job runs there."""
    release_state: str = ""
    """"" until the job ends, then "running" while its release tasks run, then "done"."""

    @property
    def id(self) -> str:
        return str(self.data["id"])


@dataclass
class JobSchedule:
    """A job schedule and its recurrence bookkeeping."""

    data: dict[str, Any]
    next_run: float | None = None
    job_count: int = 0
    job_ids: list[str] = field(default_factory=list)
    auto_pool_id: str | None = None

    @property
    def id(self) -> str:
        return str(self.data["id"])


def touch(data: dict[str, Any], now: float) -> None:
    data["eTag"] = new_etag()
    data["lastModified"] = iso(now)


def transition(data: dict[str, Any], state: str, now: float, *, with_previous: bool = True) -> None:
    if data.get("state") == state:
        return
    if with_previous and "state" in data:
        data["previousState"] = data["state"]
        data["previousStateTransitionTime"] = data.get("stateTransitionTime")
    data["state"] = state
    data["stateTransitionTime"] = iso(now)


def failure_info(
    code: str, message: str, details: list[tuple[str, str]] | None = None, *, category: str = "usererror"
) -> dict[str, Any]:
    out: dict[str, Any] = {"category": category, "code": code, "message": message}
    if details:
        out["details"] = [{"name": k, "value": v} for k, v in details]
    return out


def environ_path_dir(executable: str) -> str:
    """The directory of an interpreter, for putting it first on a task's PATH."""
    return os.path.dirname(os.path.abspath(executable))


#: Properties the service takes and never returns. Seen on the live service: user and registry
#: passwords, a blobfuse mount's ``accountKey`` (issue 20). By the same rule, not seen: an Azure Files
#: mount's ``accountKey``, a ``sasKey``, a certificate's password, a VM extension's ``protectedSettings``
#: (ARM never returns those).
SECRETS = frozenset({"password", "accountKey", "sasKey", "protectedSettings"})


def without_passwords(value: Any) -> Any:
    """``value`` with every secret the service never returns (:data:`SECRETS`) removed, in place."""
    if isinstance(value, dict):
        for key in SECRETS:
            value.pop(key, None)
        for item in value.values():
            without_passwords(item)
    elif isinstance(value, list):
        for item in value:
            without_passwords(item)
    return value
