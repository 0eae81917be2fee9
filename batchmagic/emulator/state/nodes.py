"""Nodes: booting with the pool's start task, reboot, reimage, scheduling, removal and node users.

A node boots (when allocated, rebooted or reimaged) in its own thread: ``starting`` until the pool's
allocation delay has passed, then the start task, if the pool has one, runs in
``AZ_BATCH_NODE_STARTUP_DIR`` (``<node>/startup``, working directory ``startup/wd``, ``stdout.txt`` and
``stderr.txt`` beside it) with both executors. With ``waitForSuccess`` the node is
``waitingforstarttask`` meanwhile and ends ``idle``, or ``starttaskfailed`` (no task is scheduled
there) once the start task has failed ``maxTaskRetryCount`` retries; without it the node is ``idle``
at once. ``startTaskInfo`` records every run.

Reboot, reimage and disable scheduling act on the node's running tasks as the service documents:
``requeue`` kills them and puts them back in their job's queue, ``terminate`` ends them (failed,
``TaskEnded``), ``taskcompletion`` (and ``retaineddata``) let them finish while no new task starts there.
"""

from __future__ import annotations

import copy
import logging
import shutil
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from batchmagic.emulator.errors import ApiError, invalid_property, missing_property, not_found
from batchmagic.emulator.executors import RunningTask, TaskContext
from batchmagic.emulator.state.commands import (
    CommandResult,
    CommandRun,
    container_ended,
    node_env,
    run_command,
    started_container,
)
from batchmagic.emulator.state.model import TICK, Node, Pool, iso, parse_duration, touch, transition
from batchmagic.emulator.state.pools import PoolsMixin

__all__ = ["NodesMixin"]

log = logging.getLogger("batchmagic.emulator")

_TASK_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
#: The node state while an operation is under way.
_OP_STATES = {"reboot": "rebooting", "reimage": "reimaging", "deallocate": "deallocating"}


class NodesMixin(PoolsMixin):
    """Node lifecycles and node operations."""

    # ----------------------------------------------------------------- booting
    def _prepare_node(self, pool: Pool, node: Node) -> None:
        try:
            error = self.executor.prepare_node(pool.data, node.id)
        except Exception as exc:  # noqa: BLE001 - a broken executor makes the node unusable, not the server
            error = {"code": "NodePreparationFailed", "message": str(exc)[:500], "errorDetails": []}
        # A node is not up before the pool's allocation delay has passed.
        while not self._stop.is_set():
            with self.lock:
                if pool.alloc_start is None or self.now() - pool.alloc_start >= self.allocation_delay:
                    break
            self._stop.wait(TICK)
        self._boot(pool, node, error)

    def _boot(self, pool: Pool, node: Node, error: dict[str, Any] | None = None) -> None:
        with self.lock:
            node.preparing = False
            if node.data["state"] != "starting" or self._stop.is_set():
                return
            now = self.now()
            if error:
                node.data["errors"] = [error]
                transition(node.data, "unusable", now, with_previous=False)
                return
            node.data.pop("errors", None)
            node.data["lastBootTime"] = iso(now)
            node.data["nodeAgentInfo"] = {"lastUpdateTime": iso(now), "version": "1.11.19"}
            start_task = copy.deepcopy(pool.data.get("startTask"))
            if not start_task or not start_task.get("commandLine"):
                node.data.pop("startTaskInfo", None)
                transition(node.data, "idle", now, with_previous=False)
                return
            wait = bool(start_task.get("waitForSuccess", True))
            transition(node.data, "waitingforstarttask" if wait else "idle", now, with_previous=False)
            node.data["startTask"] = start_task
            node.data["startTaskInfo"] = {"state": "running", "startTime": iso(now), "retryCount": 0}
            pool_container = (pool.data.get("virtualMachineConfiguration") or {}).get("containerConfiguration")
        ok = self._run_start_task(pool, node, start_task, pool_container)
        with self.lock:
            if wait and node.data["state"] == "waitingforstarttask":
                transition(node.data, "idle" if ok else "starttaskfailed", self.now(), with_previous=False)

    def _run_start_task(
        self, pool: Pool, node: Node, spec: dict[str, Any], pool_container: dict[str, Any] | None
    ) -> bool:
        root = self.node_root(node.id)
        startup = root / "startup"
        (startup / "wd").mkdir(parents=True, exist_ok=True)
        env = node_env(
            account=self.account,
            url=self.url,
            pool_id=pool.id,
            node=node,
            root=root,
            task_dir=startup,
            settings=list(spec.get("environmentSettings") or []),
        )
        ctx = TaskContext(
            job_id="",
            task_id="starttask",
            pool_id=pool.id,
            node_id=node.id,
            task_dir=startup,
            command_line=str(spec["commandLine"]),
            env=env,
            container_settings=spec.get("containerSettings"),
            pool_container=pool_container,
            user_identity=spec.get("userIdentity"),
        )
        run = CommandRun(
            ctx,
            resource_files=list(spec.get("resourceFiles") or []),
            max_retries=int(spec.get("maxTaskRetryCount", 0) or 0),
        )

        def before_attempt(retry: int) -> bool:
            if retry:
                with self.lock:
                    info = node.data["startTaskInfo"]
                    info["retryCount"] = retry
                    info["lastRetryTime"] = info["startTime"] = iso(self.now())
                    info.pop("endTime", None)
            return True

        def started(handle: RunningTask) -> None:
            container = started_container(self.executor, handle)
            with self.lock:
                node.start_handle = handle
                if container is not None:
                    node.data["startTaskInfo"]["containerInfo"] = container

        def should_stop() -> bool:
            # The node went away under its start task (reboot, reimage, removal) or the emulator stops.
            return self._stop.is_set() or node.data["state"] not in ("waitingforstarttask", "idle", "running")

        result = run_command(
            self.executor, run, now=self.now, should_stop=should_stop, before_attempt=before_attempt, started=started
        )
        return self._record_start_task(node, result)

    def _record_start_task(self, node: Node, result: CommandResult) -> bool:
        """Write a finished start task into the node's ``startTaskInfo``; True if it succeeded."""
        with self.lock:
            info = node.data["startTaskInfo"]
            info["state"] = "completed"
            info["endTime"] = iso(self.now())
            if result.exit_code is not None:
                info["exitCode"] = result.exit_code
            if result.failure:
                info["failureInfo"] = result.failure
            info["result"] = "success" if result.succeeded else "failure"
            container_ended(info.get("containerInfo"))
            node.start_handle = None
        log.info("node %s: start task %s (exit %s)", node.id, info["result"], result.exit_code)
        return result.succeeded

    # ----------------------------------------------------------------- reboot and reimage
    def _node(self, pool_id: str, node_id: str) -> tuple[Pool, Node]:
        pool = self._pool(pool_id)
        node = pool.nodes.get(node_id)
        if node is None:
            raise not_found("NodeNotFound")
        return pool, node

    @staticmethod
    def _option(body: dict[str, Any] | None, key: str) -> str:
        option = (body or {}).get(key) or "requeue"
        if option not in _TASK_OPTIONS:
            raise invalid_property(key, option)
        return str(option)

    def _check_node_ready(self, node: Node) -> None:
        state = node.data["state"]
        busy = {
            "rebooting": "NodeBeingRebooted",
            "reimaging": "NodeBeingReimaged",
            "creating": "NodeBeingCreated",
            "starting": "NodeBeingStarted",
            "waitingforstarttask": "NodeBeingStarted",
            "unusable": "NodeStateUnusable",
        }
        if node.pending_op:
            raise ApiError(409, "NodeBeingReimaged" if node.pending_op == "reimage" else "NodeBeingRebooted")
        if state in busy:
            raise ApiError(409, busy[state])
        if state not in ("idle", "running", "starttaskfailed", "offline"):
            raise ApiError(409, "OperationNotValidOnNode")

    def _stop_tasks(self, node: Node, option: str) -> None:
        if option not in ("requeue", "terminate"):
            return
        for job_id, task_id in list(node.running):
            job = self.jobs.get(job_id)
            task = job.tasks.get(task_id) if job else None
            if task is not None:
                self._kill(task, option)

    def reboot_node(self, pool_id: str, node_id: str, body: dict[str, Any] | None) -> None:
        """``POST .../nodes/{n}/reboot``: tasks per ``nodeRebootOption``, then the node boots again."""
        self._restart(pool_id, node_id, "reboot", self._option(body, "nodeRebootOption"))

    def reimage_node(self, pool_id: str, node_id: str, body: dict[str, Any] | None) -> None:
        """``POST .../nodes/{n}/reimage``: like a reboot, on a wiped disk (task and startup files go)."""
        self._restart(pool_id, node_id, "reimage", self._option(body, "nodeReimageOption"))

    def deallocate_node(self, pool_id: str, node_id: str, body: dict[str, Any] | None) -> None:
        """``POST .../nodes/{n}/deallocate``: tasks per ``nodeDeallocateOption``, then ``deallocated``."""
        self._restart(pool_id, node_id, "deallocate", self._option(body, "nodeDeallocateOption"))

    def start_node(self, pool_id: str, node_id: str) -> None:
        """``POST .../nodes/{n}/start``: a deallocated node boots again (start task included)."""
        with self.lock:
            pool, node = self._node(pool_id, node_id)
            if node.data["state"] != "deallocated":
                raise ApiError(409, "OperationNotValidOnNode")
            transition(node.data, "starting", self.now(), with_previous=False)
            node.preparing = True
            threading.Thread(target=self._boot, args=(pool, node), name=f"start-{node.id[:16]}", daemon=True).start()

    def _restart(self, pool_id: str, node_id: str, op: str, option: str) -> None:
        with self.lock:
            _, node = self._node(pool_id, node_id)
            self._check_node_ready(node)
            node.pending_op = op
            if option in ("requeue", "terminate"):
                transition(node.data, _OP_STATES[op], self.now(), with_previous=False)
            self._stop_tasks(node, option)
            log.info("node %s: %s (%s)", node.id, op, option)

    def _advance_nodes(self, pool: Pool, now: float) -> None:
        for node in list(pool.nodes.values()):
            if node.pending_op and not node.running and node.data["state"] != "leavingpool":
                op, node.pending_op = node.pending_op, None
                transition(node.data, _OP_STATES[op], now, with_previous=False)
                if node.start_handle is not None:
                    node.start_handle.kill()
                node.preparing = True
                threading.Thread(
                    target=self._restart_thread, args=(pool, node, op), name=f"{op}-{node.id[:16]}", daemon=True
                ).start()

    def _restart_thread(self, pool: Pool, node: Node, op: str) -> None:
        # A reboot or a deallocation takes a third of the allocation delay of emulated time; a reimage two thirds.
        self._stop.wait(self.clock.real(self.allocation_delay / (1.5 if op == "reimage" else 3)))
        if op == "deallocate":
            with self.lock:
                node.preparing = False
                if node.data["state"] == "deallocating":
                    transition(node.data, "deallocated", self.now(), with_previous=False)
            return
        if op == "reimage":
            root = self.node_root(node.id)
            for sub in ("tasks", "startup"):
                shutil.rmtree(root / sub, ignore_errors=True)
                (root / sub).mkdir(parents=True, exist_ok=True)
        with self.lock:
            if node.data["state"] not in ("rebooting", "reimaging"):
                node.preparing = False
                return
            transition(node.data, "starting", self.now(), with_previous=False)
        self._boot(pool, node)

    def _advance_pool(self, pool: Pool, now: float) -> None:
        self._advance_nodes(pool, now)
        super()._advance_pool(pool, now)

    # ----------------------------------------------------------------- scheduling state
    def disable_scheduling(self, pool_id: str, node_id: str, body: dict[str, Any] | None) -> None:
        """``POST .../disablescheduling``: no new task there; running ones per the option."""
        option = self._option(body, "nodeDisableSchedulingOption")
        with self.lock:
            _, node = self._node(pool_id, node_id)
            if node.data["schedulingState"] == "disabled":
                raise ApiError(409, "NodeAlreadyInTargetSchedulingState")
            node.data["schedulingState"] = "disabled"
            self._stop_tasks(node, option)

    def enable_scheduling(self, pool_id: str, node_id: str) -> None:
        """``POST .../enablescheduling``."""
        with self.lock:
            _, node = self._node(pool_id, node_id)
            if node.data["schedulingState"] == "enabled":
                raise ApiError(409, "NodeAlreadyInTargetSchedulingState")
            node.data["schedulingState"] = "enabled"

    # ----------------------------------------------------------------- removal
    def remove_nodes(self, pool_id: str, body: dict[str, Any]) -> None:
        """``POST /pools/{id}/removenodes``: the pool resizes down by exactly those nodes."""
        ids = body.get("nodeList")
        if not isinstance(ids, list) or not ids:
            raise missing_property("nodeList")
        if len(ids) > 100:
            raise invalid_property("nodeList", f"{len(ids)} nodes", "At most 100 nodes may be removed per request.")
        if body.get("resizeTimeout") is not None:
            try:
                timeout = parse_duration(str(body["resizeTimeout"]))
            except ValueError:
                timeout = 0.0
            if timeout is not None and timeout < 300:
                raise invalid_property("resizeTimeout", body["resizeTimeout"], "The minimum value is 5 minutes.")
        option = self._option(body, "nodeDeallocationOption")
        with self.lock:
            pool = self._pool(pool_id)
            if pool.data["state"] == "deleting":
                raise ApiError(409, "PoolBeingDeleted")
            if pool.data["allocationState"] != "steady":
                raise ApiError(409, "PoolBeingResized")
            nodes = []
            for node_id in ids:
                node = pool.nodes.get(str(node_id))
                if node is None:
                    raise not_found("NodeNotFound")
                nodes.append(node)
            now = self.now()
            for node in nodes:
                key = "targetDedicatedNodes" if node.dedicated else "targetLowPriorityNodes"
                pool.data[key] = max(0, int(pool.data[key]) - 1)
                self._deallocate_node(pool, node, option, now)
            touch(pool.data, now)
            self._begin_allocation(pool, now)

    # ----------------------------------------------------------------- users
    def add_node_user(self, pool_id: str, node_id: str, body: dict[str, Any]) -> None:
        """``POST .../users``: an account on the node (kept, never shown, as on the service)."""
        name = body.get("name")
        if not name or not isinstance(name, str):
            raise missing_property("name")
        with self.lock:
            _, node = self._node(pool_id, node_id)
            self._check_user_node(node)
            if name in node.users:
                raise ApiError(409, "NodeUserExists")
            node.users[name] = self._user(body)

    def replace_node_user(self, pool_id: str, node_id: str, name: str, body: dict[str, Any]) -> None:
        """``PUT .../users/{name}``: replaces every updatable property (omitted ones take defaults)."""
        with self.lock:
            _, node = self._node(pool_id, node_id)
            self._check_user_node(node)
            if name not in node.users:
                raise not_found("NodeUserNotFound")
            node.users[name] = {**self._user(body), "isAdmin": node.users[name]["isAdmin"]}

    def delete_node_user(self, pool_id: str, node_id: str, name: str) -> None:
        """``DELETE .../users/{name}``."""
        with self.lock:
            _, node = self._node(pool_id, node_id)
            self._check_user_node(node)
            if node.users.pop(name, None) is None:
                raise not_found("NodeUserNotFound")

    def _check_user_node(self, node: Node) -> None:
        if node.data["state"] not in ("idle", "running"):
            raise ApiError(409, "OperationNotValidOnNode")

    def _user(self, body: dict[str, Any]) -> dict[str, Any]:
        expiry = body.get("expiryTime")
        if expiry is None:
            expiry = iso((datetime.fromtimestamp(self.now(), UTC) + timedelta(days=1)).timestamp())
        return {
            "isAdmin": bool(body.get("isAdmin", False)),
            "expiryTime": expiry,
            "sshPublicKey": body.get("sshPublicKey"),
            "hasPassword": bool(body.get("password")),
        }
