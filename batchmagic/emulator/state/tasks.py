"""Tasks: add, list, terminate, delete, task counts, placement on nodes and the attempts that run them."""

from __future__ import annotations

import copy
import logging
import threading
from pathlib import Path
from typing import Any

from batchmagic.emulator import schema
from batchmagic.emulator.errors import ApiError, exists, invalid_property, missing_property
from batchmagic.emulator.executors import TaskContext
from batchmagic.emulator.images import pool_gpus
from batchmagic.emulator.limits import check_display_name, check_id, taken
from batchmagic.emulator.state.commands import CommandResult, CommandRun, node_env, run_command, started_container
from batchmagic.emulator.state.files import FilesMixin
from batchmagic.emulator.state.model import (
    UNLIMITED_DURATION,
    Job,
    Node,
    Pool,
    Task,
    failure_info,
    iso,
    parse_duration,
    touch,
    transition,
)
from batchmagic.emulator.transfer import TransferError, upload_output_files

__all__ = ["TasksMixin"]

log = logging.getLogger("batchmagic.emulator")


#: The most nodes a multi-instance task can ask for: the service's limit on the nodes of a pool with
#: inter-node communication ("Pool size limits", Batch service quotas and limits: 100 in Batch service
#: pool allocation mode, the emulator's).
MAX_INSTANCES = 100


def check_multi_instance(body: dict[str, Any]) -> None:
    """Refuse a multi-instance task the service cannot run: ``requiredSlots`` other than 1 ("for multi-instance
    Tasks, this must be 1"), ``numberOfInstances`` below 1 or above :data:`MAX_INSTANCES` (400
    ``InvalidPropertyValue``; omitted, it is 1)."""
    if int(body.get("requiredSlots", 1)) != 1:
        raise invalid_property("requiredSlots", body.get("requiredSlots"))
    count = (body.get("multiInstanceSettings") or {}).get("numberOfInstances")
    if count is not None and not 1 <= int(count) <= MAX_INSTANCES:
        raise invalid_property(
            "numberOfInstances", count, f"A multi-instance task runs on 1 to {MAX_INSTANCES} compute nodes"
        )


class TasksMixin(FilesMixin):
    """Tasks of jobs. ``_schedule`` places active tasks on free node slots; each attempt runs in a thread."""

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

    def _new_task(self, job: Job, body: dict[str, Any], now: float) -> Task:
        task_id = check_id(body)
        check_display_name(body)
        if not body.get("commandLine"):
            raise missing_property("commandLine")
        if body.get("multiInstanceSettings"):
            check_multi_instance(body)
        self._check_new_task(job, body)
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
        # Every other property of the create body is kept and answered, as the service does.
        for key in schema.models()["BatchTaskCreateOptions"]["properties"]:
            if key in body and key not in data and body[key] is not None:
                data[key] = copy.deepcopy(body[key])
        touch(data, now)
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
            task = self._new_task(job, body, self.now())
            if taken(job.tasks, task.id):
                raise exists("TaskExists")
            job.tasks[task.id] = task
            return task

    def add_task_collection(self, job_id: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``POST /jobs/{id}/addtaskcollection``: per-task results, as the service reports them."""
        with self.lock:
            job = self._job(job_id)
            self._check_job_accepts_tasks(job)
            results: list[dict[str, Any]] = []
            now = self.now()
            for body in bodies:
                task_id = str(body.get("id", ""))
                try:
                    task = self._new_task(job, body, now)
                    if taken(job.tasks, task.id):
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
            now = self.now()
            if task.data["state"] == "completed":
                return
            if task.thread is not None and task.thread.is_alive():
                self._kill(task, "terminate")
                return
            info = task.data["executionInfo"]
            info["endTime"] = iso(now)
            info["result"] = "failure"
            info["failureInfo"] = failure_info("TaskEnded", "Task Was Ended by User Request")
            transition(task.data, "completed", now)
            touch(task.data, now)

    def replace_task(self, job_id: str, task_id: str, body: dict[str, Any]) -> None:
        """``PUT /jobs/{j}/tasks/{t}``: replace the task's constraints, the one updatable part of a task.

        Constraints the body omits go back to their defaults (unlimited wall clock, seven days'
        retention, the job's retry count). A completed task refuses with 409 ``TaskCompleted``.
        """
        with self.lock:
            job = self._job(job_id)
            task = self._task(job_id, task_id)
            if task.data["state"] == "completed":
                raise ApiError(409, "TaskCompleted")
            constraints = dict(body.get("constraints") or {})
            for key in ("maxWallClockTime", "retentionTime"):
                try:
                    parse_duration(constraints.get(key))
                except ValueError as exc:
                    raise invalid_property(f"constraints.{key}", constraints.get(key)) from exc
            retries = int(constraints.get("maxTaskRetryCount", job.data["constraints"].get("maxTaskRetryCount", 0)))
            if retries < -1:
                raise invalid_property("constraints.maxTaskRetryCount", retries)
            task.data["constraints"] = {
                "maxWallClockTime": constraints.get("maxWallClockTime", UNLIMITED_DURATION),
                "retentionTime": constraints.get("retentionTime", "P7D"),
                "maxTaskRetryCount": retries,
            }
            touch(task.data, self.now())

    def reactivate_task(self, job_id: str, task_id: str) -> None:
        """``POST /jobs/{j}/tasks/{t}/reactivate``: a failed task becomes active again, its retry count reset.

        Only a completed task that failed can be reactivated, and only in a job that is not ending;
        otherwise the service answers 409. Its previous exit code and failure information are gone.
        """
        with self.lock:
            job = self._job(job_id)
            task = self._task(job_id, task_id)
            self._check_job_accepts_tasks(job)
            info = task.data["executionInfo"]
            if task.data["state"] != "completed" or info.get("result") != "failure":
                raise ApiError(
                    409,
                    "OperationInvalidForCurrentState",
                    "Only a task that completed with a failure can be reactivated.",
                    [("TaskState", str(task.data["state"])), ("TaskResult", str(info.get("result")))],
                )
            now = self.now()
            for key in ("exitCode", "failureInfo", "result", "endTime", "startTime", "lastRetryTime", "containerInfo"):
                info.pop(key, None)
            info["retryCount"] = 0
            task.data.pop("nodeInfo", None)
            task.node = None
            task.kill_reason = ""
            transition(task.data, "active", now)
            touch(task.data, now)

    def delete_task(self, job_id: str, task_id: str) -> None:
        """``DELETE /jobs/{j}/tasks/{t}``: kill it if running and forget it."""
        with self.lock:
            job = self._job(job_id)
            task = self._task(job_id, task_id)
            if task.thread is not None and task.thread.is_alive():
                self._kill(task, "terminate")
            job.tasks.pop(task_id, None)

    def _check_new_task(self, job: Job, body: dict[str, Any]) -> None:
        """Hook: refuse a task its job cannot take (see ``dependencies.py``)."""

    def _dependencies_met(self, job: Job, task: Task) -> bool:
        """Hook: whether the tasks ``task`` depends on are done (see ``dependencies.py``)."""
        return True

    def _task_completed(self, task: Task) -> None:
        """Hook, lock held: a task has completed (exit conditions act on its job, see ``dependencies.py``)."""

    def _prepare_job_on_node(self, job: Job, pool: Pool, node: Node) -> bool:
        """Hook: run the job's preparation task on ``node`` if needed (see ``jobprep.py``)."""
        return True

    def _node_accepts_job(self, job: Job, node: Node) -> bool:
        """Hook: whether ``node`` may run tasks of ``job`` (not after its preparation task failed there)."""
        return True

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
                if not self._dependencies_met(job, task):
                    continue
                if task.data.get("multiInstanceSettings") and not (
                    pool.data.get("enableInterNodeCommunication") and slots_per_node == 1
                ):
                    continue  # the service leaves such a task active: its pool cannot run it
                need = int(task.data.get("requiredSlots", 1))
                candidates = [
                    n
                    for n in pool.nodes.values()
                    if n.data["state"] in ("idle", "running")
                    and n.data["schedulingState"] == "enabled"
                    and not n.pending_op
                    and self._node_accepts_job(job, n)
                    and slots_per_node - n.used_slots >= need
                ]
                instances = self._instances(task)
                if len(candidates) < instances:
                    if instances > 1 and candidates:
                        continue  # a multi-instance task waits for enough nodes; smaller tasks may fit
                    break
                candidates.sort(key=lambda n: n.used_slots, reverse=pack)
                for extra in candidates[1:instances]:
                    self._hold_node(job, task, extra, now)
                    task.extra_nodes.append(extra)
                self._start_task(job, task, pool, candidates[0], now)
                running += 1

    @staticmethod
    def _instances(task: Task) -> int:
        return max(1, int((task.data.get("multiInstanceSettings") or {}).get("numberOfInstances") or 1))

    def _hold_node(self, job: Job, task: Task, node: Node, now: float) -> None:
        node.used_slots += int(task.data.get("requiredSlots", 1))
        node.running.add((job.id, task.id))
        node.data["runningTasksCount"] = len(node.running)
        node.data["runningTaskSlotsCount"] = node.used_slots
        transition(node.data, "running", now, with_previous=False)

    def _start_task(self, job: Job, task: Task, pool: Pool, node: Node, now: float) -> None:
        self._hold_node(job, task, node, now)
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
        transition(task.data, "preparing", now)
        touch(task.data, now)
        thread = threading.Thread(
            target=self._run_task, args=(job, task, pool, node), name=f"task-{task.id}", daemon=True
        )
        task.thread = thread
        thread.start()

    # ----------------------------------------------------------------- task attempts
    def _task_env(self, job: Job, task: Task, pool: Pool, node: Node, task_dir: Path) -> dict[str, str]:
        return node_env(
            account=self.account,
            url=self.url,
            pool_id=pool.id,
            node=node,
            root=self.node_root(node.id),
            task_dir=task_dir,
            extra={
                "AZ_BATCH_JOB_ID": job.id,
                "AZ_BATCH_TASK_ID": task.id,
                "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
                "AZ_BATCH_TASK_RESERVED_EPHEMERAL_PORTS": "",
            },
            settings=list(job.data.get("commonEnvironmentSettings") or [])
            + list(task.data.get("environmentSettings") or []),
        )

    def _run_task(self, job: Job, task: Task, pool: Pool, node: Node) -> None:
        try:
            self._attempts(job, task, pool, node)
        except Exception as exc:  # noqa: BLE001 - record an internal failure rather than losing the task
            log.exception("task %s/%s failed inside the emulator", job.id, task.id)
            self._finish(task, None, failure_info("TaskEnded", f"Emulator error: {exc}", category="servererror"))

    def _attempts(self, job: Job, task: Task, pool: Pool, node: Node) -> None:
        task_dir = self.node_root(node.id) / self.task_rel_dir(job.id, task.id)
        with self.lock:
            data = copy.deepcopy(task.data)
            env = self._task_env(job, task, pool, node, task_dir)
            pool_container = (pool.data.get("virtualMachineConfiguration") or {}).get("containerConfiguration")
        (task_dir / "wd").mkdir(parents=True, exist_ok=True)
        for name in ("stdout.txt", "stderr.txt"):
            (task_dir / name).touch()
        if task.extra_nodes or data.get("multiInstanceSettings"):
            found = self._run_instances(job, task, pool, node, env, data, task_dir, pool_container)
            if found is None:
                return  # requeued: the job's preparation task failed on the primary
            result = found
        else:
            if not self._prepare_job_on_node(job, pool, node):
                self._requeue(task)  # the job's preparation task failed here: the node takes no task of the job
                return
            run = self._application_run(job, task, pool, node, env, data, task_dir, pool_container)
            result = run_command(
                self.executor,
                run,
                now=self.now,
                should_stop=task.kill_event.is_set,
                before_attempt=lambda retry: self._begin_attempt(task, retry),
                started=lambda handle: self._attempt_started(task, handle),
            )
        if task.kill_reason in ("requeue", "shutdown"):
            self._requeue(task)
            return
        failure = result.failure
        ran = result.exit_code is not None or result.stopped
        if ran and task.kill_reason != "shutdown":
            try:
                upload_output_files(list(data.get("outputFiles") or []), task_dir, result.succeeded)
            except TransferError as err:
                failure = failure or failure_info(err.code, err.message, err.details)
        self._finish(task, result.exit_code, failure)

    def _application_run(
        self,
        job: Job,
        task: Task,
        pool: Pool,
        node: Node,
        env: dict[str, str],
        data: dict[str, Any],
        task_dir: Path,
        pool_container: Any,
        *,
        retries: int | None = None,
    ) -> CommandRun:
        """The task's command line on ``node``, with its resource files and constraints (``retries``: its own
        retry count instead of ``maxTaskRetryCount``)."""
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
            gpus=pool_gpus(pool.data),
            user_identity=data.get("userIdentity"),
        )
        return CommandRun(
            ctx,
            resource_files=list(data.get("resourceFiles") or []),
            max_retries=int(data["constraints"].get("maxTaskRetryCount", 0)) if retries is None else retries,
            max_wall_clock_time=data["constraints"].get("maxWallClockTime"),
        )

    def _run_instances(
        self,
        job: Job,
        task: Task,
        pool: Pool,
        node: Node,
        env: dict[str, str],
        data: dict[str, Any],
        task_dir: Path,
        pool_container: Any,
    ) -> CommandResult | None:
        raise NotImplementedError  # state/multi.py

    def _attempt_started(self, task: Task, handle: Any) -> None:
        """An attempt runs: keep what finds it again after a restart, and report its container, if it has one
        (``containerInfo``: docker inspect's id and status, once docker has started it)."""
        info = started_container(self.executor, handle)
        with self.lock:
            task.process = getattr(handle, "identity", None)
            if info is not None:
                task.data["executionInfo"]["containerInfo"] = info

    def _begin_attempt(self, task: Task, retry: int) -> bool:
        """Record an attempt's start (``startTime``, or ``retryCount`` and ``lastRetryTime``); False if killed."""
        now = self.now()
        with self.lock:
            if task.kill_event.is_set():
                return False
            info = task.data["executionInfo"]
            if retry == 0:
                info["startTime"] = iso(now)
            else:
                info["retryCount"] = retry
                info["lastRetryTime"] = iso(now)
                log.info("task %s/%s: retry %d", task.job_id, task.id, retry)
            transition(task.data, "running", now)
            touch(task.data, now)
            return True

    def _release_node(self, task: Task) -> None:
        nodes = ([task.node] if task.node is not None else []) + task.extra_nodes
        task.extra_nodes = []
        self._end_subtasks(task)
        for node in nodes:
            if (task.job_id, task.id) in node.running:
                node.running.discard((task.job_id, task.id))
                node.used_slots -= int(task.data.get("requiredSlots", 1))
            node.data["runningTasksCount"] = len(node.running)
            node.data["runningTaskSlotsCount"] = node.used_slots
            if not node.running and node.data["state"] == "running":
                transition(node.data, "idle", self.now(), with_previous=False)

    # Multi-instance tasks (state/multi.py overrides these).
    def _coordinate(
        self,
        job: Job,
        task: Task,
        pool: Pool,
        node: Node,
        env: dict[str, str],
        pool_container: Any,
        deadline: float | None = None,
    ) -> CommandResult | None:
        return None

    def _end_subtasks(self, task: Task) -> None:
        return None

    def _requeue(self, task: Task) -> None:
        with self.lock:
            now = self.now()
            self._release_node(task)
            info = task.data["executionInfo"]
            info["requeueCount"] = int(info.get("requeueCount", 0)) + 1
            info["lastRequeueTime"] = iso(now)
            task.data.pop("nodeInfo", None)
            transition(task.data, "active", now)
            touch(task.data, now)

    def _finish(self, task: Task, exit_code: int | None, failure: dict[str, Any] | None) -> None:
        with self.lock:
            now = self.now()
            self._release_node(task)
            info = task.data["executionInfo"]
            info.setdefault("startTime", iso(now))
            info["endTime"] = iso(now)
            if exit_code is not None:
                info["exitCode"] = exit_code
            if failure:
                info["failureInfo"] = failure
            info["result"] = "failure" if failure else "success"
            transition(task.data, "completed", now)
            touch(task.data, now)
            if task.node is not None:
                task.node.data["totalTasksRun"] += 1
                if not failure:
                    task.node.data["totalTasksSucceeded"] += 1
            log.info("task %s/%s completed: exit %s %s", task.job_id, task.id, exit_code, info["result"])
            self._task_completed(task)
