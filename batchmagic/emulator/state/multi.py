"""Multi-instance tasks (``multiInstanceSettings``): one task on ``numberOfInstances`` nodes.

The scheduler holds that many nodes for the task (the first is the primary). The job's preparation task
runs on each of them first (the task and its subtasks are ``preparing`` meanwhile). Then, in each
attempt, the ``commonResourceFiles`` are downloaded into the task's directory on every node
(``AZ_BATCH_TASK_SHARED_DIR``) and the ``coordinationCommandLine`` runs there; once every coordination
command has exited (they typically start a background service), the primary runs the task's
``commandLine`` (after its own ``resourceFiles``). The task is ``running`` from the coordination on:
the reference's running state "includes task-level preparation such as downloading resource files",
and its preparing state is only "waiting for a required Job Preparation Task".
Every instance sees ``AZ_BATCH_HOST_LIST`` (the nodes' addresses, primary first),
``AZ_BATCH_MASTER_NODE`` (``primary:6000``), ``AZ_BATCH_IS_CURRENT_NODE_MASTER`` and ``CCP_NODES``. The
other nodes are the task's subtasks (ids 1..n-1, ``GET .../subtasksinfo``); they complete with the task,
and whatever their coordination command left running is stopped then. A coordination command that fails
fails the attempt, with that instance's exit code; a retry runs every instance again.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from batchmagic.emulator.executors import RunningTask, TaskContext
from batchmagic.emulator.images import pool_gpus
from batchmagic.emulator.state.commands import CommandResult, CommandRun, container_ended, run_command
from batchmagic.emulator.state.model import Job, Node, Pool, Task, failure_info, iso, parse_duration
from batchmagic.emulator.state.tasks import TasksMixin
from batchmagic.emulator.vmsizes import lookup

__all__ = ["MultiInstanceMixin"]

log = logging.getLogger("batchmagic.emulator")

#: The port the service puts in AZ_BATCH_MASTER_NODE.
MASTER_PORT = 6000


def task_container(job: Job, task: Task, node: Node) -> str:
    """The name of a multi-instance container task's container on ``node`` (empty without containerSettings):
    all its commands there run in it, see :attr:`TaskContext.container_name`."""
    if not task.data.get("containerSettings"):
        return ""
    return "batchemu-mi-" + hashlib.sha256(f"{job.id}/{task.id}/{node.id}".encode()).hexdigest()[:16]


def vm_cores(vm_size: str) -> int:
    """The cores of a node of ``vm_size`` (1 when the name is not a size the emulator knows)."""
    size = lookup(vm_size) if vm_size else None
    return size.cores if size is not None else 1


def instance_environment(addresses: list[str], cores: int = 1) -> dict[str, str]:
    """The variables every instance of a multi-instance task sees, from its nodes' addresses (primary
    first), as the service writes them: ``AZ_BATCH_HOST_LIST`` comma-separated, ``AZ_BATCH_NODE_LIST``
    semicolon-separated, ``AZ_BATCH_MASTER_NODE`` the primary's address and Batch's own port, and
    ``CCP_NODES`` (the HPC Pack form "numNodes node1IP node1Cores node2IP node2Cores ...": the count, then
    each address with its node's ``cores``; the whole node is the task's, with one task slot)."""
    return {
        "AZ_BATCH_HOST_LIST": ",".join(addresses),
        "AZ_BATCH_NODE_LIST": ";".join(addresses),
        "AZ_BATCH_MASTER_NODE": f"{addresses[0]}:{MASTER_PORT}",
        "CCP_NODES": " ".join([str(len(addresses)), *(f"{a} {cores}" for a in addresses)]),
    }


class MultiInstanceMixin(TasksMixin):
    """Coordination commands and subtasks of multi-instance tasks."""

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
        """Every attempt of a multi-instance task: the job's preparation task on every node first, then in each
        attempt the coordination command on every instance, then the application command on the primary. A
        failure of either is the attempt's; a retry runs every instance again (the service terminates the
        whole task and retries it) and counts as one (``retryCount``, ``lastRetryTime``). None: requeued."""
        retries = int(data["constraints"].get("maxTaskRetryCount", 0))
        # The task's constraints "apply to the primary and all subtasks": its wall clock counts from the
        # attempt's start, its coordination commands included; a task past it ends, not retried.
        wall = parse_duration(data["constraints"].get("maxWallClockTime"))
        nodes = [node, *task.extra_nodes]
        with self.lock:
            task.subtasks = self._subtask_entries(job, task, pool, nodes, "running")
            for sub, sub_node in zip(task.subtasks, nodes[1:], strict=True):
                if self._awaits_job_prep(job, sub_node):  # "preparing", as the reference's subtask states say
                    sub["state"] = "preparing"
                    del sub["startTime"]
        if not self._prepare_job_on_nodes(job, pool, nodes):
            with self.lock:
                task.subtasks = []  # none ran: the task is back in the queue, as if never placed
            self._requeue(task)  # a node's preparation task failed: that node takes no task of the job
            return None
        attempt = 0
        while True:
            if not self._begin_attempt(task, attempt):  # running from here: the coordination is the task's run
                return CommandResult(None, failure_info("TaskEnded", "Task Was Ended by User Request"), stopped=True)
            deadline = self.now() + wall if wall is not None else None
            result = self._coordinate(job, task, pool, node, env, pool_container, deadline)
            if result is None:
                app = self._application_run(job, task, pool, node, env, data, task_dir, pool_container, retries=0)
                # In the coordination's container, where the shared directory is mounted.
                app.ctx = replace(
                    app.ctx, container_name=task_container(job, task, node), shared_dir=env["AZ_BATCH_TASK_SHARED_DIR"]
                )
                app.deadline = deadline
                result = run_command(
                    self.executor,
                    app,
                    now=self.now,
                    should_stop=task.kill_event.is_set,
                    before_attempt=lambda _retry: not task.kill_event.is_set(),
                    started=lambda handle: setattr(task, "process", getattr(handle, "identity", None)),
                )
            spent = retries != -1 and attempt >= retries
            if result.succeeded or result.stopped or result.timed_out or task.kill_event.is_set() or spent:
                return result
            attempt += 1
            log.info("task %s/%s: attempt %d failed; every instance runs again", job.id, task.id, attempt)
            self._end_subtasks(task)

    def _prepare_job_on_nodes(self, job: Job, pool: Pool, nodes: list[Node]) -> bool:
        """The job's preparation task on every node of the task, at once, before anything of the task runs
        there: the service runs it "on each compute node that is scheduled to run a task", and a subtask is
        one. False when it failed on any of them (the task goes back to the queue)."""
        if not job.data.get("jobPreparationTask"):
            return True
        ok = [False] * len(nodes)

        def prepare(i: int) -> None:
            ok[i] = self._prepare_job_on_node(job, pool, nodes[i])

        threads = [
            threading.Thread(target=prepare, args=(i,), name=f"prep-{job.id}-{n.id}", daemon=True)
            for i, n in enumerate(nodes)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return all(ok)

    @staticmethod
    def _awaits_job_prep(job: Job, node: Node) -> bool:
        """Whether a task of ``job`` placed on ``node`` waits for the job's preparation task there (it has
        not completed there, and the job's tasks wait for it: ``waitForSuccess``, true by default)."""
        spec = job.data.get("jobPreparationTask")
        if not spec or not spec.get("waitForSuccess", True):
            return False
        entry = job.prep_status.get(node.id)
        return entry is None or entry["jobPreparationTaskExecutionInfo"].get("state") != "completed"

    def _subtask_entries(self, job: Job, task: Task, pool: Pool, nodes: list[Node], state: str) -> list[dict[str, Any]]:
        """The subtasks (every node but the primary) as ``subtasksinfo`` lists them, in ``state``."""
        rel = self.task_rel_dir(job.id, task.id)
        now = iso(self.now())
        entries = []
        for i, n in enumerate(nodes[1:], start=1):
            entry: dict[str, Any] = {
                "id": i,
                "nodeInfo": {
                    "affinityId": n.data["affinityId"],
                    "nodeUrl": n.data["url"],
                    "poolId": pool.id,
                    "nodeId": n.id,
                    "taskRootDirectory": rel,
                    "taskRootDirectoryUrl": f"{n.data['url']}/files/{rel}",
                },
                "state": state,
                "stateTransitionTime": now,
            }
            if state == "running":
                entry["startTime"] = now
            entries.append(entry)
        return entries

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
        """One attempt's coordination command on every instance (ended at ``deadline``, the task's wall clock);
        None when every one exited 0, else the attempt's result: the first failed instance's exit code (a
        subtask's fails the task) and failure."""
        with self.lock:
            nodes = [node, *task.extra_nodes]
            settings = copy.deepcopy(task.data.get("multiInstanceSettings") or {})
            now = iso(self.now())
            if any(s["state"] == "completed" for s in task.subtasks):  # a retry: every instance runs anew
                task.subtasks = self._subtask_entries(job, task, pool, nodes, "running")
            for sub in task.subtasks:
                if sub["state"] == "preparing":  # its node's preparation task is done: it runs
                    sub["previousState"], sub["previousStateTransitionTime"] = "preparing", sub["stateTransitionTime"]
                    sub["state"], sub["stateTransitionTime"], sub["startTime"] = "running", now, now
            cores = vm_cores(str(pool.data.get("vmSize") or ""))
        shared = instance_environment([str(n.data["ipAddress"]) for n in nodes], cores)
        shared_dir = str(self.node_root(node.id) / self.task_rel_dir(job.id, task.id))  # the primary's
        runs = [
            self._coordination_run(job, task, pool, n, i, {**env, **shared}, settings, pool_container, shared_dir)
            for i, n in enumerate(nodes)
        ]
        for run in runs:
            run.max_wall_clock_time = task.data["constraints"].get("maxWallClockTime")
            run.deadline = deadline
        env.update(shared)  # the primary's application command sees them too
        env["AZ_BATCH_TASK_SHARED_DIR"] = str(runs[0].ctx.task_dir)
        env["AZ_BATCH_IS_CURRENT_NODE_MASTER"] = "true"
        results = self._run_coordination(task, runs)
        failed = [i for i, result in enumerate(results) if not result.succeeded]
        if not failed:
            return None
        late = [result for result in results if result.timed_out]
        if late:
            return late[0]  # past the task's wall clock
        log.info("task %s/%s: coordination failed on instances %s", job.id, task.id, failed)
        first = results[failed[0]]
        if first.exit_code is None and first.failure is not None:
            return first  # the command never ran: a resource file or the container could not start
        return CommandResult(
            first.exit_code,
            failure_info(
                "FailureExitCode",
                "The coordination command exited with an exit code representing a failure",
                [("Message", f"The coordination command failed on instance(s) {', '.join(map(str, failed))}")],
            ),
        )

    def _run_coordination(self, task: Task, runs: list[CommandRun]) -> list[CommandResult]:
        """Run every instance's coordination command at once; the subtasks keep theirs to stop later."""
        results: list[CommandResult | None] = [None] * len(runs)

        def coordinate(i: int) -> None:
            def started(handle: RunningTask) -> None:
                name = runs[i].ctx.container_name  # made by now: the command runs in it
                container = self.executor.container_info(name) if name else None
                with self.lock:
                    if i == 0:
                        task.primary_coordination = handle
                        if container is not None:
                            task.data["executionInfo"]["containerInfo"] = container
                    elif i <= len(task.subtasks):
                        task.subtasks[i - 1]["_handle"] = handle
                        if container is not None:
                            task.subtasks[i - 1]["containerInfo"] = container

            result = run_command(
                self.executor, runs[i], now=self.now, should_stop=task.kill_event.is_set, started=started
            )
            with self.lock:
                if 0 < i <= len(task.subtasks):
                    task.subtasks[i - 1]["_exit"] = result.exit_code
            results[i] = result

        # They start together (a coordination command typically starts a service the others connect
        # to); the application command waits for all of them.
        threads = [
            threading.Thread(target=coordinate, args=(i,), name=f"coordinate-{task.id}-{i}", daemon=True)
            for i in range(len(runs))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [
            r if r is not None else CommandResult(None, failure_info("TaskEnded", "Emulator error")) for r in results
        ]

    def _coordination_run(
        self,
        job: Job,
        task: Task,
        pool: Pool,
        node: Node,
        index: int,
        env: dict[str, str],
        settings: dict[str, Any],
        pool_container: Any,
        shared_dir: str,
    ) -> CommandRun:
        """Instance ``index``'s coordination command: its node's environment, the common resource files, and
        ``shared_dir`` (the primary's task directory) where a container sees its node's own."""
        root = self.node_root(node.id)
        task_dir = root / self.task_rel_dir(job.id, task.id)
        (task_dir / "wd").mkdir(parents=True, exist_ok=True)
        instance_env = {
            **env,
            "AZ_BATCH_NODE_ID": node.id,
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.dedicated else "false",
            "AZ_BATCH_NODE_ROOT_DIR": str(root),
            "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
            "AZ_BATCH_TASK_SHARED_DIR": str(task_dir),
            "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true" if index == 0 else "false",
        }
        # Without a coordination command an instance only receives the common resource files.
        ctx = TaskContext(
            job_id=job.id,
            task_id=task.id,
            pool_id=pool.id,
            node_id=node.id,
            task_dir=task_dir,
            command_line=str(settings.get("coordinationCommandLine") or ""),
            env=instance_env,
            container_settings=task.data.get("containerSettings"),
            pool_container=pool_container,
            gpus=pool_gpus(pool.data),
            container_name=task_container(job, task, node),
            user_identity=task.data.get("userIdentity"),
            shared_dir=shared_dir,
        )
        return CommandRun(ctx, resource_files=list(settings.get("commonResourceFiles") or []), resource_dir=task_dir)

    def _end_subtasks(self, task: Task) -> None:
        now = self.now()
        primary, task.primary_coordination = task.primary_coordination, None
        if primary is not None:
            primary.kill()  # what the primary's coordination command left running
        # A container of the task is ended with it (its processes exit, then it is removed): what docker
        # inspect said of it last is that it exited.
        for info in (task.data["executionInfo"].get("containerInfo"), *(s.get("containerInfo") for s in task.subtasks)):
            container_ended(info)
        for sub in task.subtasks:
            handle = sub.pop("_handle", None)
            if handle is not None:
                handle.kill()  # whatever the coordination command left running on that node
            if sub["state"] != "running":
                continue
            code = sub.pop("_exit", None)
            sub["previousState"], sub["previousStateTransitionTime"] = sub["state"], sub["stateTransitionTime"]
            sub["state"], sub["stateTransitionTime"], sub["endTime"] = "completed", iso(now), iso(now)
            if code is not None:
                sub["exitCode"] = code
            sub["result"] = "success" if code == 0 else "failure"
            if code != 0:
                sub["failureInfo"] = failure_info(
                    "FailureExitCode", "The task exited with an exit code representing a failure"
                )

    def list_subtasks(self, job_id: str, task_id: str) -> list[dict[str, Any]]:
        """``GET /jobs/{j}/tasks/{t}/subtasksinfo``: a multi-instance task's subtasks (others have none)."""
        with self.lock:
            task = self._task(job_id, task_id)
            return [{k: copy.deepcopy(v) for k, v in s.items() if not k.startswith("_")} for s in task.subtasks]
