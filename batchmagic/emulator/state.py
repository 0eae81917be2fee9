"""The emulator's in-memory Batch account: pools, nodes, jobs and tasks, and the scheduler thread.

Every resource keeps its REST representation (``data``, wire field names) plus the private
bookkeeping the state machines need. One re-entrant lock guards everything; task attempts run in
their own threads and take the lock only to record transitions.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

from batchmagic import vmsizes
from batchmagic.emulator.errors import ApiError, exists, invalid_property, missing_property, not_found
from batchmagic.emulator.executors import Executor, TaskContext, TaskStartError
from batchmagic.emulator.transfer import TransferError, download_resource_files, upload_output_files

__all__ = ["BatchState", "Pool", "Node", "Job", "Task", "parse_duration", "UNLIMITED_DURATION"]

log = logging.getLogger("batchmagic.emulator")

#: How the service renders an unlimited TimeSpan (TimeSpan.MaxValue).
UNLIMITED_DURATION = "P10675199DT2H48M5.4775807S"
_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_TICK = 0.05


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
    auto_job_id: str | None = None

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

    @property
    def id(self) -> str:
        return str(self.data["id"])


def _touch(data: dict[str, Any], now: float) -> None:
    data["eTag"] = new_etag()
    data["lastModified"] = iso(now)


def _transition(data: dict[str, Any], state: str, now: float, *, with_previous: bool = True) -> None:
    if data.get("state") == state:
        return
    if with_previous and "state" in data:
        data["previousState"] = data["state"]
        data["previousStateTransitionTime"] = data.get("stateTransitionTime")
    data["state"] = state
    data["stateTransitionTime"] = iso(now)


class BatchState:
    """The account's resources and the scheduler that moves them through their states.

    Parameters
    ----------
    account : str
        The Batch account name (``AZ_BATCH_ACCOUNT_NAME`` in tasks).
    url : str
        The account URL clients use; resource ``url`` fields and ``odata.metadata`` start with it.
    workdir : Path
        Where node and task directories are created.
    executor : Executor
        Runs task command lines.
    allocation_delay : float
        Seconds from a pool's (re)size request until its nodes are idle.
    core_quota : int or None
        The account's dedicated core quota; None for unlimited.
    low_priority_core_quota : int or None
        The account's low-priority/spot core quota; None for unlimited.
    empty_job_grace : float
        How long a job with ``onAllTasksComplete: terminatejob`` and no tasks waits for its first task
        before it completes (the real service completes such a job almost at once).
    """

    def __init__(
        self,
        *,
        account: str,
        url: str,
        workdir: Path,
        executor: Executor,
        allocation_delay: float = 1.0,
        core_quota: int | None = None,
        low_priority_core_quota: int | None = None,
        empty_job_grace: float = 5.0,
    ) -> None:
        self.account = account
        self.url = url.rstrip("/")
        self.workdir = Path(workdir)
        self.executor = executor
        self.allocation_delay = max(0.0, allocation_delay)
        self.core_quota = core_quota
        self.low_priority_core_quota = low_priority_core_quota
        self.empty_job_grace = empty_job_grace
        self.lock = threading.RLock()
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._node_seq = 0

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the scheduler thread."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="batch-emulator-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the scheduler and kill every running task; waits for their threads to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        threads = []
        with self.lock:
            for job in self.jobs.values():
                for task in job.tasks.values():
                    if task.thread is not None and task.thread.is_alive():
                        self._kill(task, "shutdown")
                        threads.append(task.thread)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.executor.close()

    def _run(self) -> None:
        while not self._stop.wait(_TICK):
            try:
                with self.lock:
                    self.tick(time.time())
            except Exception:  # noqa: BLE001 - the scheduler must survive a bug in one step
                log.exception("scheduler step failed")

    # ----------------------------------------------------------------- helpers
    def _pool(self, pool_id: str) -> Pool:
        pool = self.pools.get(pool_id)
        if pool is None:
            raise not_found("PoolNotFound")
        return pool

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise not_found("JobNotFound")
        return job

    def _task(self, job_id: str, task_id: str) -> Task:
        task = self._job(job_id).tasks.get(task_id)
        if task is None:
            raise not_found("TaskNotFound")
        return task

    def node_root(self, node_id: str) -> Path:
        """The root directory of a node (``AZ_BATCH_NODE_ROOT_DIR``)."""
        return self.workdir / "nodes" / node_id

    def task_rel_dir(self, job_id: str, task_id: str) -> str:
        """A task's directory relative to its node's root."""
        return f"tasks/{job_id}/job-1/{task_id}"

    def task_dir(self, job_id: str, task_id: str) -> Path | None:
        """The directory of a task that has been scheduled, else None."""
        with self.lock:
            task = self._task(job_id, task_id)
            info = task.data.get("nodeInfo")
            if not info:
                return None
            return self.node_root(str(info["nodeId"])) / self.task_rel_dir(job_id, task_id)

    @staticmethod
    def view(data: dict[str, Any]) -> dict[str, Any]:
        """A deep copy of a resource's wire representation, safe to serialise outside the lock.

        Like the real service, it never returns a secret: container registry passwords are left out.
        """
        return _without_passwords(copy.deepcopy(data))

    # ----------------------------------------------------------------- pools
    def _validate_pool_spec(self, spec: dict[str, Any], prefix: str = "") -> None:
        vm_size = spec.get("vmSize")
        if not vm_size:
            raise missing_property(prefix + "vmSize")
        if vmsizes.cores_for(str(vm_size)) is None:
            raise invalid_property(prefix + "vmSize", vm_size, f"The specified vmSize '{vm_size}' is not supported.")
        if not spec.get("virtualMachineConfiguration"):
            raise missing_property(prefix + "virtualMachineConfiguration")
        slots = spec.get("taskSlotsPerNode", 1)
        if not isinstance(slots, int) or slots < 1 or slots > 256:
            raise invalid_property(prefix + "taskSlotsPerNode", slots)
        for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            n = spec.get(key, 0)
            if not isinstance(n, int) or n < 0:
                raise invalid_property(prefix + key, n)

    def create_pool(self, body: dict[str, Any], *, auto_job_id: str | None = None) -> Pool:
        """Create a pool from a ``POST /pools`` body; allocation starts at once."""
        pool_id = body.get("id")
        if not pool_id:
            raise missing_property("id")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(pool_id)):
            raise invalid_property("id", pool_id)
        self._validate_pool_spec(body)
        now = time.time()
        with self.lock:
            if pool_id in self.pools:
                raise exists("PoolExists")
            data: dict[str, Any] = {
                "id": pool_id,
                "url": f"{self.url}/pools/{pool_id}",
                "creationTime": iso(now),
                "state": "active",
                "stateTransitionTime": iso(now),
                "allocationState": "resizing",
                "allocationStateTransitionTime": iso(now),
                "vmSize": str(body["vmSize"]).lower(),
                "resizeTimeout": body.get("resizeTimeout", "PT15M"),
                "currentDedicatedNodes": 0,
                "targetDedicatedNodes": int(body.get("targetDedicatedNodes", 0)),
                "currentLowPriorityNodes": 0,
                "targetLowPriorityNodes": int(body.get("targetLowPriorityNodes", 0)),
                "enableAutoScale": bool(body.get("enableAutoScale", False)),
                "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication", False)),
                "taskSlotsPerNode": int(body.get("taskSlotsPerNode", 1)),
                "taskSchedulingPolicy": body.get("taskSchedulingPolicy") or {"nodeFillType": "Spread"},
                "targetNodeCommunicationMode": body.get("targetNodeCommunicationMode", "default"),
            }
            vmc = copy.deepcopy(body["virtualMachineConfiguration"])
            vmc.setdefault("imageReference", {}).setdefault("version", "latest")
            data["virtualMachineConfiguration"] = vmc
            for key in (
                "displayName",
                "metadata",
                "startTask",
                "userAccounts",
                "networkConfiguration",
                "mountConfiguration",
                "applicationPackageReferences",
                "resourceTags",
            ):
                if key in body:
                    data[key] = copy.deepcopy(body[key])
            _touch(data, now)
            pool = Pool(data=data, auto_job_id=auto_job_id)
            self.pools[pool_id] = pool
            self._begin_allocation(pool, now)
            log.info("pool %s created (%s x %s)", pool_id, data["targetDedicatedNodes"], data["vmSize"])
            return pool

    def _cores_in_use(self, dedicated: bool, exclude: Pool) -> int:
        total = 0
        for pool in self.pools.values():
            if pool is exclude or pool.data["state"] == "deleting":
                continue
            cores = vmsizes.cores_for(pool.data["vmSize"]) or 0
            count = pool.alloc_dedicated if dedicated else pool.alloc_low
            if pool.alloc_start is None:
                count = pool.data["currentDedicatedNodes" if dedicated else "currentLowPriorityNodes"]
            total += cores * count
        return total

    def _begin_allocation(self, pool: Pool, now: float) -> None:
        data = pool.data
        cores = vmsizes.cores_for(data["vmSize"]) or 0
        errors: list[dict[str, Any]] = []
        want_d, want_l = data["targetDedicatedNodes"], data["targetLowPriorityNodes"]
        for dedicated, want, quota in (
            (True, want_d, self.core_quota),
            (False, want_l, self.low_priority_core_quota),
        ):
            have = data["currentDedicatedNodes" if dedicated else "currentLowPriorityNodes"]
            if quota is None or want <= have:
                continue
            if self._cores_in_use(dedicated, pool) + want * cores > quota:
                kind = "dedicated" if dedicated else "low-priority"
                errors.append(
                    {
                        "code": "AccountCoreQuotaReached" if dedicated else "AccountLowPriorityCoreQuotaReached",
                        "message": (
                            f"The specified account has reached its {kind} VM core quota. Please use a smaller "
                            "VM size or fewer nodes, or request a quota increase."
                        ),
                        "values": [
                            {"name": "Reason", "value": f"The {kind} core quota of the account is {quota}."},
                            {"name": "CoreQuota", "value": str(quota)},
                            {"name": "RequestedCores", "value": str(want * cores)},
                        ],
                    }
                )
                if dedicated:
                    want_d = have
                else:
                    want_l = have
        if errors:
            data["resizeErrors"] = errors
        else:
            data.pop("resizeErrors", None)
        pool.alloc_dedicated, pool.alloc_low = want_d, want_l
        pool.alloc_start = now
        if data["allocationState"] != "resizing":
            data["allocationState"] = "resizing"
            data["allocationStateTransitionTime"] = iso(now)

    def _new_node(self, pool: Pool, dedicated: bool, now: float) -> Node:
        self._node_seq += 1
        digest = hashlib.sha256(f"{pool.id}/{self._node_seq}/{uuid.uuid4()}".encode()).hexdigest()
        node_id = f"tvmps_{digest}_{'d' if dedicated else 'p'}"
        image = dict(pool.data["virtualMachineConfiguration"].get("imageReference") or {})
        image.setdefault("exactVersion", image.get("version", "latest"))
        data = {
            "id": node_id,
            "url": f"{self.url}/pools/{pool.id}/nodes/{node_id}",
            "state": "creating",
            "schedulingState": "enabled",
            "stateTransitionTime": iso(now),
            "allocationTime": iso(now),
            "ipAddress": f"10.0.{(self._node_seq // 250) % 250}.{self._node_seq % 250 + 4}",
            "affinityId": f"TVM:{node_id}",
            "vmSize": pool.data["vmSize"],
            "totalTasksRun": 0,
            "totalTasksSucceeded": 0,
            "runningTasksCount": 0,
            "runningTaskSlotsCount": 0,
            "isDedicated": dedicated,
            "endpointConfiguration": {
                "inboundEndpoints": [
                    {
                        "name": "SSHRule.0",
                        "protocol": "tcp",
                        "publicIPAddress": "127.0.0.1",
                        "publicFQDN": "localhost",
                        "frontendPort": 50000 + self._node_seq % 10000,
                        "backendPort": 22,
                    }
                ]
            },
            "virtualMachineInfo": {"imageReference": image},
        }
        node = Node(data=data, pool_id=pool.id, dedicated=dedicated)
        for sub in ("shared", "startup", "tasks"):
            (self.node_root(node_id) / sub).mkdir(parents=True, exist_ok=True)
        return node

    def _advance_pool(self, pool: Pool, now: float) -> None:
        data = pool.data
        if pool.alloc_start is None or data["state"] != "active":
            return
        elapsed = now - pool.alloc_start
        delay = self.allocation_delay
        current = [n for n in pool.nodes.values() if n.dedicated], [n for n in pool.nodes.values() if not n.dedicated]
        # Shrinking happens at once: idle nodes go first; tasks on removed nodes are requeued.
        for nodes, want in ((current[0], pool.alloc_dedicated), (current[1], pool.alloc_low)):
            extra = len(nodes) - want
            for node in sorted(nodes, key=lambda n: n.used_slots)[: max(0, extra)]:
                self._remove_node(pool, node)
        if elapsed >= delay / 3:
            for dedicated, want in ((True, pool.alloc_dedicated), (False, pool.alloc_low)):
                have = sum(1 for n in pool.nodes.values() if n.dedicated == dedicated)
                for _ in range(max(0, want - have)):
                    node = self._new_node(pool, dedicated, now)
                    pool.nodes[node.id] = node
        if elapsed >= 2 * delay / 3:
            for node in pool.nodes.values():
                if node.data["state"] == "creating":
                    _transition(node.data, "starting", now, with_previous=False)
                    node.preparing = True
                    threading.Thread(
                        target=self._prepare_node, args=(pool, node), name=f"prepare-{node.id[:16]}", daemon=True
                    ).start()
        if elapsed >= delay:
            data["currentDedicatedNodes"] = sum(1 for n in pool.nodes.values() if n.dedicated)
            data["currentLowPriorityNodes"] = sum(1 for n in pool.nodes.values() if not n.dedicated)
            data["allocationState"] = "steady"
            data["allocationStateTransitionTime"] = iso(now)
            pool.alloc_start = None
            _touch(data, now)

    def _prepare_node(self, pool: Pool, node: Node) -> None:
        try:
            error = self.executor.prepare_node(pool.data, node.id)
        except Exception as exc:  # noqa: BLE001 - a broken executor makes the node unusable, not the server
            error = {"code": "NodePreparationFailed", "message": str(exc)[:500], "errorDetails": []}
        # A node is not idle before the pool's allocation delay has passed.
        while not self._stop.is_set():
            with self.lock:
                if pool.alloc_start is None or time.time() - pool.alloc_start >= self.allocation_delay:
                    break
            time.sleep(_TICK)
        with self.lock:
            node.preparing = False
            if node.data["state"] != "starting":
                return
            now = time.time()
            if error:
                node.data["errors"] = [error]
                _transition(node.data, "unusable", now, with_previous=False)
            else:
                node.data["lastBootTime"] = iso(now)
                node.data["nodeAgentInfo"] = {"lastUpdateTime": iso(now), "version": "1.11.19"}
                _transition(node.data, "idle", now, with_previous=False)

    def _remove_node(self, pool: Pool, node: Node) -> None:
        for job_id, task_id in list(node.running):
            job = self.jobs.get(job_id)
            task = job.tasks.get(task_id) if job else None
            if task is not None:
                self._kill(task, "requeue")
        pool.nodes.pop(node.id, None)

    def get_pool(self, pool_id: str) -> dict[str, Any]:
        """The wire representation of a pool."""
        with self.lock:
            return self.view(self._pool(pool_id).data)

    def list_pools(self) -> list[dict[str, Any]]:
        """All pools, oldest first."""
        with self.lock:
            return [self.view(p.data) for p in self.pools.values()]

    def delete_pool(self, pool_id: str) -> None:
        """Mark a pool for deletion; its nodes go and running tasks are requeued."""
        with self.lock:
            pool = self._pool(pool_id)
            self._delete_pool(pool, time.time())

    def _delete_pool(self, pool: Pool, now: float) -> None:
        if pool.data["state"] == "deleting":
            return
        _transition(pool.data, "deleting", now, with_previous=False)
        pool.data["allocationState"] = "resizing"
        pool.data["allocationStateTransitionTime"] = iso(now)
        _touch(pool.data, now)
        pool.alloc_start = None
        for node in list(pool.nodes.values()):
            _transition(node.data, "leavingpool", now, with_previous=False)
            for job_id, task_id in list(node.running):
                task = self.jobs[job_id].tasks.get(task_id) if job_id in self.jobs else None
                if task is not None:
                    self._kill(task, "requeue")
        pool.delete_at = now + min(self.allocation_delay, 2.0) / 2

    def resize_pool(self, pool_id: str, body: dict[str, Any]) -> None:
        """Apply a ``POST /pools/{id}/resize`` body."""
        with self.lock:
            pool = self._pool(pool_id)
            if pool.data["state"] == "deleting":
                raise ApiError(409, "PoolBeingDeleted")
            if pool.data["allocationState"] != "steady":
                raise ApiError(409, "PoolNotSteady", "The specified pool is not in steady state.")
            now = time.time()
            for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
                if key in body:
                    value = body[key]
                    if not isinstance(value, int) or value < 0:
                        raise invalid_property(key, value)
                    pool.data[key] = value
            _touch(pool.data, now)
            self._begin_allocation(pool, now)

    def stop_resize(self, pool_id: str) -> None:
        """Stop a pool's resize: it becomes steady with the nodes it has."""
        with self.lock:
            pool = self._pool(pool_id)
            now = time.time()
            if pool.alloc_start is not None:
                pool.alloc_start = None
                pool.data["allocationState"] = "steady"
                pool.data["allocationStateTransitionTime"] = iso(now)
                pool.data["currentDedicatedNodes"] = sum(1 for n in pool.nodes.values() if n.dedicated)
                pool.data["currentLowPriorityNodes"] = sum(1 for n in pool.nodes.values() if not n.dedicated)
                _touch(pool.data, now)

    def update_pool(self, pool_id: str, body: dict[str, Any]) -> None:
        """Apply a ``PATCH /pools/{id}`` body (metadata, startTask, ...)."""
        with self.lock:
            pool = self._pool(pool_id)
            for key in ("metadata", "startTask", "applicationPackageReferences", "targetNodeCommunicationMode"):
                if key in body:
                    pool.data[key] = copy.deepcopy(body[key])
            _touch(pool.data, time.time())

    def list_nodes(self, pool_id: str) -> list[dict[str, Any]]:
        """The nodes of a pool."""
        with self.lock:
            return [self.view(n.data) for n in self._pool(pool_id).nodes.values()]

    def get_node(self, pool_id: str, node_id: str) -> dict[str, Any]:
        """One node of a pool."""
        with self.lock:
            node = self._pool(pool_id).nodes.get(node_id)
            if node is None:
                raise not_found("NodeNotFound")
            return self.view(node.data)

    def node_counts(self) -> list[dict[str, Any]]:
        """``GET /nodecounts``: node counts per pool and state."""
        states = [
            "creating", "idle", "offline", "preempted", "rebooting", "reimaging", "running", "starting",
            "startTaskFailed", "leavingPool", "unknown", "unusable", "waitingForStartTask", "deallocated",
            "deallocating", "upgradingOS",
        ]  # fmt: skip
        out = []
        with self.lock:
            for pool in self.pools.values():
                entry: dict[str, Any] = {"poolId": pool.id}
                for dedicated, key in ((True, "dedicated"), (False, "lowPriority")):
                    counts = dict.fromkeys(states, 0)
                    for node in pool.nodes.values():
                        if node.dedicated == dedicated:
                            name = "leavingPool" if node.data["state"] == "leavingpool" else node.data["state"]
                            counts[name] = counts.get(name, 0) + 1
                    counts["total"] = sum(counts.values())
                    entry[key] = counts
                out.append(entry)
        return out

    # ----------------------------------------------------------------- jobs
    def create_job(self, body: dict[str, Any]) -> Job:
        """Create a job from a ``POST /jobs`` body, with its auto pool if it asks for one."""
        job_id = body.get("id")
        if not job_id:
            raise missing_property("id")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(job_id)):
            raise invalid_property("id", job_id)
        pool_info = body.get("poolInfo")
        if not isinstance(pool_info, dict) or not (pool_info.get("poolId") or pool_info.get("autoPoolSpecification")):
            raise missing_property("poolInfo")
        constraints = dict(body.get("constraints") or {})
        try:
            wall = parse_duration(constraints.get("maxWallClockTime"))
        except ValueError as exc:
            raise invalid_property("maxWallClockTime", constraints.get("maxWallClockTime")) from exc
        auto = pool_info.get("autoPoolSpecification")
        if auto:
            if not auto.get("poolLifetimeOption"):
                raise missing_property("poolLifetimeOption")
            if not isinstance(auto.get("pool"), dict):
                raise missing_property("pool")
            self._validate_pool_spec(auto["pool"])
        now = time.time()
        with self.lock:
            if job_id in self.jobs:
                raise exists("JobExists")
            data: dict[str, Any] = {
                "id": job_id,
                "url": f"{self.url}/jobs/{job_id}",
                "creationTime": iso(now),
                "state": "active",
                "stateTransitionTime": iso(now),
                "priority": int(body.get("priority", 0)),
                "maxParallelTasks": int(body.get("maxParallelTasks", -1)),
                "usesTaskDependencies": bool(body.get("usesTaskDependencies", False)),
                "allowTaskPreemption": bool(body.get("allowTaskPreemption", False)),
                "constraints": {
                    "maxWallClockTime": constraints.get("maxWallClockTime", UNLIMITED_DURATION),
                    "maxTaskRetryCount": int(constraints.get("maxTaskRetryCount", 0)),
                },
                "poolInfo": copy.deepcopy(pool_info),
                "executionInfo": {"startTime": iso(now)},
                "onAllTasksComplete": body.get("onAllTasksComplete", "noaction"),
                "onTaskFailure": body.get("onTaskFailure", "noaction"),
            }
            for key in (
                "displayName", "metadata", "commonEnvironmentSettings", "jobManagerTask", "jobPreparationTask",
                "jobReleaseTask", "networkConfiguration",
            ):  # fmt: skip
                if key in body:
                    data[key] = copy.deepcopy(body[key])
            _touch(data, now)
            job = Job(data=data, deadline=(now + wall) if wall is not None else None, created=now)
            if auto:
                spec = copy.deepcopy(auto["pool"])
                prefix = auto.get("autoPoolIdPrefix") or "auto"
                pool_id = f"{prefix}_{uuid.uuid4()}"
                spec["id"] = pool_id
                pool = self.create_pool(spec, auto_job_id=job_id)
                job.auto_pool_id = pool.id
                job.auto_pool_lifetime = str(auto.get("poolLifetimeOption", "job")).lower()
                stored = data["poolInfo"]["autoPoolSpecification"]
                stored.setdefault("keepAlive", False)
                defaults = {
                    "taskSlotsPerNode": 1,
                    "taskSchedulingPolicy": {"nodeFillType": "Spread"},
                    "resizeTimeout": "PT15M",
                    "targetDedicatedNodes": 0,
                    "targetLowPriorityNodes": 0,
                    "enableAutoScale": False,
                    "enableInterNodeCommunication": False,
                }
                for key, value in defaults.items():
                    stored["pool"].setdefault(key, value)
                data["executionInfo"]["poolId"] = pool.id
            else:
                data["executionInfo"]["poolId"] = pool_info["poolId"]
            self.jobs[job_id] = job
            log.info("job %s created on pool %s", job_id, data["executionInfo"]["poolId"])
            return job

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The wire representation of a job."""
        with self.lock:
            return self.view(self._job(job_id).data)

    def list_jobs(self) -> list[dict[str, Any]]:
        """All jobs, oldest first."""
        with self.lock:
            return [self.view(j.data) for j in self.jobs.values()]

    def update_job(self, job_id: str, body: dict[str, Any], *, replace: bool = False) -> None:
        """Apply a ``PATCH`` (or ``PUT`` with ``replace``) body to a job."""
        with self.lock:
            job = self._job(job_id)
            if job.data["state"] in ("completed", "terminating", "deleting"):
                raise ApiError(409, "JobCompleted" if job.data["state"] == "completed" else "JobBeingTerminated")
            now = time.time()
            for key in ("priority", "maxParallelTasks", "onAllTasksComplete", "metadata", "allowTaskPreemption"):
                if key in body:
                    job.data[key] = copy.deepcopy(body[key])
            if "constraints" in body:
                constraints = dict(body["constraints"] or {})
                try:
                    wall = parse_duration(constraints.get("maxWallClockTime"))
                except ValueError as exc:
                    raise invalid_property("maxWallClockTime", constraints.get("maxWallClockTime")) from exc
                job.data["constraints"] = {
                    "maxWallClockTime": constraints.get("maxWallClockTime", UNLIMITED_DURATION),
                    "maxTaskRetryCount": int(constraints.get("maxTaskRetryCount", 0)),
                }
                job.deadline = job.created + wall if wall is not None else None
            _touch(job.data, now)

    def terminate_job(self, job_id: str, reason: str | None = None) -> None:
        """``POST /jobs/{id}/terminate``: kill running tasks; the job completes when they have stopped."""
        with self.lock:
            job = self._job(job_id)
            if job.data["state"] == "deleting":
                raise ApiError(409, "JobBeingDeleted")
            if job.data["state"] in ("completed", "terminating"):
                raise ApiError(409, "JobCompleted" if job.data["state"] == "completed" else "JobBeingTerminated")
            self._terminate_job(job, reason or "UserTerminate", time.time())

    def _terminate_job(self, job: Job, reason: str, now: float) -> None:
        _transition(job.data, "terminating", now)
        job.pending_reason = reason
        _touch(job.data, now)
        for task in job.tasks.values():
            if task.thread is not None and task.thread.is_alive():
                self._kill(task, "jobterminate")
        log.info("job %s terminating: %s", job.id, reason)

    def delete_job(self, job_id: str) -> None:
        """``DELETE /jobs/{id}``: kill running tasks; the job disappears once they have stopped."""
        with self.lock:
            job = self._job(job_id)
            now = time.time()
            _transition(job.data, "deleting", now)
            _touch(job.data, now)
            job.delete_requested = True
            for task in job.tasks.values():
                if task.thread is not None and task.thread.is_alive():
                    self._kill(task, "jobterminate")

    def task_counts(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}/taskcounts``."""
        with self.lock:
            job = self._job(job_id)
            counts = dict.fromkeys(("active", "running", "completed", "succeeded", "failed"), 0)
            slots = dict(counts)
            for task in job.tasks.values():
                state = task.data["state"]
                bucket = "running" if state in ("running", "preparing") else state
                n = int(task.data.get("requiredSlots", 1))
                counts[bucket] += 1
                slots[bucket] += n
                if state == "completed":
                    ok = (task.data.get("executionInfo") or {}).get("result") == "success"
                    counts["succeeded" if ok else "failed"] += 1
                    slots["succeeded" if ok else "failed"] += n
            return {"taskCounts": counts, "taskSlotCounts": slots}

    # ----------------------------------------------------------------- tasks
    def _new_task(self, job: Job, body: dict[str, Any], now: float) -> Task:
        task_id = body.get("id")
        if not task_id:
            raise missing_property("id")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(task_id)):
            raise invalid_property("id", task_id)
        if not body.get("commandLine"):
            raise missing_property("commandLine")
        constraints = dict(body.get("constraints") or {})
        try:
            parse_duration(constraints.get("maxWallClockTime"))
        except ValueError as exc:
            raise invalid_property("maxWallClockTime", constraints.get("maxWallClockTime")) from exc
        data: dict[str, Any] = {
            "id": task_id,
            "url": f"{self.url}/jobs/{job.id}/tasks/{task_id}",
            "creationTime": iso(now),
            "state": "active",
            "stateTransitionTime": iso(now),
            "commandLine": body["commandLine"],
            "userIdentity": body.get("userIdentity") or {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
            "constraints": {
                "maxWallClockTime": constraints.get("maxWallClockTime", UNLIMITED_DURATION),
                "retentionTime": constraints.get("retentionTime", "P7D"),
                "maxTaskRetryCount": int(
                    constraints.get("maxTaskRetryCount", job.data["constraints"].get("maxTaskRetryCount", 0))
                ),
            },
            "requiredSlots": int(body.get("requiredSlots", 1)),
            "executionInfo": {"retryCount": 0, "requeueCount": 0},
        }
        for key in (
            "displayName", "resourceFiles", "outputFiles", "environmentSettings", "containerSettings",
            "affinityInfo", "exitConditions", "dependsOn", "applicationPackageReferences", "multiInstanceSettings",
        ):  # fmt: skip
            if key in body:
                data[key] = copy.deepcopy(body[key])
        _touch(data, now)
        return Task(data=data, job_id=job.id)

    def _check_job_accepts_tasks(self, job: Job) -> None:
        state = job.data["state"]
        if state == "completed":
            raise ApiError(409, "JobCompleted")
        if state == "terminating":
            raise ApiError(409, "JobBeingTerminated")
        if state == "deleting":
            raise ApiError(409, "JobBeingDeleted")

    def add_task(self, job_id: str, body: dict[str, Any]) -> Task:
        """``POST /jobs/{id}/tasks``."""
        with self.lock:
            job = self._job(job_id)
            self._check_job_accepts_tasks(job)
            task = self._new_task(job, body, time.time())
            if task.id in job.tasks:
                raise exists("TaskExists")
            job.tasks[task.id] = task
            return task

    def add_task_collection(self, job_id: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``POST /jobs/{id}/addtaskcollection``: per-task results, as the service reports them."""
        with self.lock:
            job = self._job(job_id)
            self._check_job_accepts_tasks(job)
            results: list[dict[str, Any]] = []
            now = time.time()
            for body in bodies:
                task_id = str(body.get("id", ""))
                try:
                    task = self._new_task(job, body, now)
                    if task.id in job.tasks:
                        raise exists("TaskExists")
                except ApiError as err:
                    results.append({"status": "clienterror", "taskId": task_id, "error": err})
                    continue
                job.tasks[task.id] = task
                results.append(
                    {
                        "status": "success",
                        "taskId": task.id,
                        "eTag": task.data["eTag"],
                        "lastModified": task.data["lastModified"],
                        "location": task.data["url"],
                    }
                )
            return results

    def get_task(self, job_id: str, task_id: str) -> dict[str, Any]:
        """The wire representation of a task."""
        with self.lock:
            return self.view(self._task(job_id, task_id).data)

    def list_tasks(self, job_id: str) -> list[dict[str, Any]]:
        """A job's tasks in the order they were added."""
        with self.lock:
            return [self.view(t.data) for t in self._job(job_id).tasks.values()]

    def terminate_task(self, job_id: str, task_id: str) -> None:
        """``POST /jobs/{j}/tasks/{t}/terminate``: kill it if running; an active task completes at once."""
        with self.lock:
            task = self._task(job_id, task_id)
            now = time.time()
            if task.data["state"] == "completed":
                return
            if task.thread is not None and task.thread.is_alive():
                self._kill(task, "terminate")
                return
            info = task.data["executionInfo"]
            info["endTime"] = iso(now)
            info["result"] = "failure"
            info["failureInfo"] = _failure("TaskEnded", "Task Was Ended by User Request")
            _transition(task.data, "completed", now)
            _touch(task.data, now)

    def delete_task(self, job_id: str, task_id: str) -> None:
        """``DELETE /jobs/{j}/tasks/{t}``: kill it if running and forget it."""
        with self.lock:
            job = self._job(job_id)
            task = self._task(job_id, task_id)
            if task.thread is not None and task.thread.is_alive():
                self._kill(task, "terminate")
            job.tasks.pop(task_id, None)

    def _kill(self, task: Task, reason: str) -> None:
        if not task.kill_reason:
            task.kill_reason = reason
        task.kill_event.set()

    # ----------------------------------------------------------------- scheduler
    def tick(self, now: float) -> None:
        """One scheduler step (called with the lock held): pools, jobs, then task placement."""
        for pool in list(self.pools.values()):
            if pool.data["state"] == "deleting":
                if (
                    pool.delete_at is not None
                    and now >= pool.delete_at
                    and not any(n.running for n in pool.nodes.values())
                ):
                    for node in list(pool.nodes.values()):
                        self._remove_node(pool, node)
                    del self.pools[pool.id]
                    log.info("pool %s deleted", pool.id)
                continue
            self._advance_pool(pool, now)
        for job in list(self.jobs.values()):
            self._advance_job(job, now)
        self._schedule(now)

    def _advance_job(self, job: Job, now: float) -> None:
        state = job.data["state"]
        busy = any(t.thread is not None and t.thread.is_alive() for t in job.tasks.values())
        if state == "deleting":
            if not busy:
                del self.jobs[job.id]
                self._release_auto_pool(job, now)
                log.info("job %s deleted", job.id)
            return
        if state == "terminating":
            if not busy:
                info = job.data["executionInfo"]
                info["endTime"] = iso(now)
                info["terminateReason"] = job.pending_reason or "UserTerminate"
                _transition(job.data, "completed", now)
                _touch(job.data, now)
                self._release_auto_pool(job, now)
            return
        if state != "active":
            return
        if job.deadline is not None and now >= job.deadline:
            self._terminate_job(job, "MaxWallClockTimeExpiry", now)
            return
        if job.data.get("onAllTasksComplete") == "terminatejob":
            if job.tasks:
                if all(t.data["state"] == "completed" for t in job.tasks.values()):
                    self._terminate_job(job, "AllTasksComplete", now)
            elif now - job.created >= self.empty_job_grace:
                self._terminate_job(job, "AllTasksComplete", now)

    def _release_auto_pool(self, job: Job, now: float) -> None:
        if job.auto_pool_id and job.auto_pool_lifetime == "job":
            pool = self.pools.get(job.auto_pool_id)
            if pool is not None:
                self._delete_pool(pool, now)

    def _schedule(self, now: float) -> None:
        jobs = sorted(
            (j for j in self.jobs.values() if j.data["state"] == "active"), key=lambda j: -int(j.data["priority"])
        )
        for job in jobs:
            pool_id = job.data["executionInfo"].get("poolId")
            pool = self.pools.get(str(pool_id))
            if pool is None or pool.data["state"] != "active":
                continue
            limit = int(job.data.get("maxParallelTasks", -1))
            running = sum(1 for t in job.tasks.values() if t.data["state"] in ("preparing", "running"))
            slots_per_node = int(pool.data["taskSlotsPerNode"])
            pack = str(pool.data["taskSchedulingPolicy"].get("nodeFillType", "spread")).lower() == "pack"
            for task in job.tasks.values():
                if limit >= 0 and running >= limit:
                    break
                if task.data["state"] != "active" or (task.thread is not None and task.thread.is_alive()):
                    continue
                need = int(task.data.get("requiredSlots", 1))
                candidates = [
                    n
                    for n in pool.nodes.values()
                    if n.data["state"] in ("idle", "running")
                    and n.data["schedulingState"] == "enabled"
                    and slots_per_node - n.used_slots >= need
                ]
                if not candidates:
                    break
                node = (max if pack else min)(candidates, key=lambda n: n.used_slots)
                self._start_task(job, task, pool, node, now)
                running += 1

    def _start_task(self, job: Job, task: Task, pool: Pool, node: Node, now: float) -> None:
        need = int(task.data.get("requiredSlots", 1))
        node.used_slots += need
        node.running.add((job.id, task.id))
        node.data["runningTasksCount"] = len(node.running)
        node.data["runningTaskSlotsCount"] = node.used_slots
        _transition(node.data, "running", now, with_previous=False)
        task.node = node
        task.pool_id = pool.id
        task.kill_event = threading.Event()
        task.kill_reason = ""
        rel = self.task_rel_dir(job.id, task.id)
        task.data["nodeInfo"] = {
            "affinityId": node.data["affinityId"],
            "nodeUrl": node.data["url"],
            "poolId": pool.id,
            "nodeId": node.id,
            "taskRootDirectory": rel,
            "taskRootDirectoryUrl": f"{node.data['url']}/files/{rel}",
        }
        _transition(task.data, "preparing", now)
        _touch(task.data, now)
        thread = threading.Thread(
            target=self._run_task, args=(job, task, pool, node), name=f"task-{task.id}", daemon=True
        )
        task.thread = thread
        thread.start()

    # ----------------------------------------------------------------- task attempts
    def _task_env(self, job: Job, task: Task, pool: Pool, node: Node, task_dir: Path) -> dict[str, str]:
        root = self.node_root(node.id)
        env = {
            "AZ_BATCH_ACCOUNT_NAME": self.account,
            "AZ_BATCH_ACCOUNT_URL": self.url,
            "AZ_BATCH_POOL_ID": pool.id,
            "AZ_BATCH_NODE_ID": node.id,
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.dedicated else "false",
            "AZ_BATCH_NODE_ROOT_DIR": str(root),
            "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
            "AZ_BATCH_JOB_ID": job.id,
            "AZ_BATCH_TASK_ID": task.id,
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
            "AZ_BATCH_TASK_USER": "_azbatch",
            "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
            "AZ_BATCH_TASK_RESERVED_EPHEMERAL_PORTS": "",
        }
        for item in list(job.data.get("commonEnvironmentSettings") or []) + list(
            task.data.get("environmentSettings") or []
        ):
            if item.get("name"):
                env[str(item["name"])] = str(item.get("value") or "")
        return env

    def _run_task(self, job: Job, task: Task, pool: Pool, node: Node) -> None:
        try:
            self._attempts(job, task, pool, node)
        except Exception as exc:  # noqa: BLE001 - record an internal failure rather than losing the task
            log.exception("task %s/%s failed inside the emulator", job.id, task.id)
            self._finish(task, None, _failure("TaskEnded", f"Emulator error: {exc}", category="servererror"))

    def _attempts(self, job: Job, task: Task, pool: Pool, node: Node) -> None:
        task_dir = self.node_root(node.id) / self.task_rel_dir(job.id, task.id)
        with self.lock:
            data = copy.deepcopy(task.data)
            env = self._task_env(job, task, pool, node, task_dir)
            pool_container = (pool.data.get("virtualMachineConfiguration") or {}).get("containerConfiguration")
        (task_dir / "wd").mkdir(parents=True, exist_ok=True)
        for name in ("stdout.txt", "stderr.txt"):
            (task_dir / name).touch()
        try:
            download_resource_files(list(data.get("resourceFiles") or []), task_dir / "wd")
        except TransferError as err:
            self._finish(task, None, _failure(err.code, err.message, err.details))
            return
        wall = parse_duration(data["constraints"].get("maxWallClockTime"))
        max_retries = int(data["constraints"].get("maxTaskRetryCount", 0))
        ctx = TaskContext(
            job_id=job.id,
            task_id=task.id,
            pool_id=pool.id,
            node_id=node.id,
            task_dir=task_dir,
            command_line=str(data["commandLine"]),
            env=env,
            container_settings=data.get("containerSettings"),
            pool_container=pool_container,
        )
        retry = 0
        while True:
            now = time.time()
            with self.lock:
                if task.kill_event.is_set():
                    break
                info = task.data["executionInfo"]
                if retry == 0:
                    info["startTime"] = iso(now)
                else:
                    info["retryCount"] = retry
                    info["lastRetryTime"] = iso(now)
                _transition(task.data, "running", now)
                _touch(task.data, now)
            try:
                handle = self.executor.start(ctx)
            except TaskStartError as err:
                self._finish(task, None, _failure(err.code, err.message, err.details))
                return
            deadline = now + wall if wall is not None else None
            exit_code: int | None = None
            timed_out = False
            while exit_code is None:
                exit_code = handle.wait(_TICK)
                if exit_code is not None:
                    break
                if task.kill_event.is_set():
                    handle.kill()
                    exit_code = handle.wait(10.0)
                elif deadline is not None and time.time() >= deadline:
                    timed_out = True
                    handle.kill()
                    exit_code = handle.wait(10.0)
            killed = task.kill_event.is_set()
            if not killed and not timed_out and exit_code != 0 and (max_retries == -1 or retry < max_retries):
                retry += 1
                log.info("task %s/%s exited %s; retry %d", job.id, task.id, exit_code, retry)
                continue
            break
        if task.kill_reason in ("requeue", "shutdown"):
            self._requeue(task)
            return
        failure: dict[str, Any] | None = None
        if timed_out:
            failure = _failure(
                "TaskEnded",
                "Task was ended because it exceeded its maximum wall clock time (maxWallClockTime)",
                [("MaxWallClockTime", str(data["constraints"].get("maxWallClockTime")))],
            )
        elif killed:
            failure = _failure("TaskEnded", "Task Was Ended by User Request")
        elif exit_code != 0:
            failure = _failure(
                "FailureExitCode",
                "The task exited with an exit code representing a failure",
                [("Message", "The task exited with an exit code representing a failure")],
            )
        succeeded = failure is None
        if task.kill_reason != "shutdown":
            try:
                upload_output_files(list(data.get("outputFiles") or []), task_dir, succeeded)
            except TransferError as err:
                failure = failure or _failure(err.code, err.message, err.details)
        self._finish(task, exit_code, failure)

    def _release_node(self, task: Task) -> None:
        node = task.node
        if node is None:
            return
        if (task.job_id, task.id) in node.running:
            node.running.discard((task.job_id, task.id))
            node.used_slots -= int(task.data.get("requiredSlots", 1))
        node.data["runningTasksCount"] = len(node.running)
        node.data["runningTaskSlotsCount"] = node.used_slots
        if not node.running and node.data["state"] == "running":
            _transition(node.data, "idle", time.time(), with_previous=False)

    def _requeue(self, task: Task) -> None:
        with self.lock:
            now = time.time()
            self._release_node(task)
            info = task.data["executionInfo"]
            info["requeueCount"] = int(info.get("requeueCount", 0)) + 1
            info["lastRequeueTime"] = iso(now)
            task.data.pop("nodeInfo", None)
            _transition(task.data, "active", now)
            _touch(task.data, now)

    def _finish(self, task: Task, exit_code: int | None, failure: dict[str, Any] | None) -> None:
        with self.lock:
            now = time.time()
            self._release_node(task)
            info = task.data["executionInfo"]
            info.setdefault("startTime", iso(now))
            info["endTime"] = iso(now)
            if exit_code is not None:
                info["exitCode"] = exit_code
            if failure:
                info["failureInfo"] = failure
            info["result"] = "failure" if failure else "success"
            _transition(task.data, "completed", now)
            _touch(task.data, now)
            if task.node is not None:
                task.node.data["totalTasksRun"] += 1
                if not failure:
                    task.node.data["totalTasksSucceeded"] += 1
            log.info("task %s/%s completed: exit %s %s", task.job_id, task.id, exit_code, info["result"])

    # ----------------------------------------------------------------- files
    def remove_workdir(self) -> None:
        """Delete the node and task directories (used by ephemeral emulators)."""
        shutil.rmtree(self.workdir / "nodes", ignore_errors=True)


def _failure(
    code: str, message: str, details: list[tuple[str, str]] | None = None, *, category: str = "usererror"
) -> dict[str, Any]:
    out: dict[str, Any] = {"category": category, "code": code, "message": message}
    if details:
        out["details"] = [{"name": k, "value": v} for k, v in details]
    return out


def environ_path_dir(executable: str) -> str:
    """The directory of an interpreter, for putting it first on a task's PATH."""
    return os.path.dirname(os.path.abspath(executable))


def _without_passwords(value: Any) -> Any:
    if isinstance(value, dict):
        value.pop("password", None)
        for item in value.values():
            _without_passwords(item)
    elif isinstance(value, list):
        for item in value:
            _without_passwords(item)
    return value
