"""Multi-instance tasks (``multiInstanceSettings``): one task on ``numberOfInstances`` nodes.

The scheduler holds that many nodes for the task (the first is the primary). On every node the
``commonResourceFiles`` are downloaded into the task's directory (``AZ_BATCH_TASK_SHARED_DIR``) and the
``coordinationCommandLine`` runs; once every coordination command has exited (they typically start a
background service), the primary runs the task's ``commandLine`` (after its own ``resourceFiles``).
Every instance sees ``AZ_BATCH_HOST_LIST`` (the nodes' addresses, primary first),
``AZ_BATCH_MASTER_NODE`` (``primary:6000``) and ``AZ_BATCH_IS_CURRENT_NODE_MASTER``. The other nodes
are the task's subtasks (ids 1..n-1, ``GET .../subtasksinfo``); they complete with the task, and
whatever their coordination command left running is stopped then. A coordination command that fails
fails the task.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from batchmagic.emulator.executors import RunningTask, TaskContext, TaskStartError
from batchmagic.emulator.state.model import TICK, Job, Node, Pool, Task, failure_info, iso
from batchmagic.emulator.state.tasks import TasksMixin
from batchmagic.emulator.transfer import TransferError, download_resource_files

__all__ = ["MultiInstanceMixin"]

log = logging.getLogger("batchmagic.emulator")

#: The port the service puts in AZ_BATCH_MASTER_NODE.
MASTER_PORT = 6000


class MultiInstanceMixin(TasksMixin):
    """Coordination commands and subtasks of multi-instance tasks."""

    def _coordinate(
        self, job: Job, task: Task, pool: Pool, node: Node, env: dict[str, str], pool_container: Any
    ) -> dict[str, Any] | None:
        rel = self.task_rel_dir(job.id, task.id)
        with self.lock:
            nodes = [node, *task.extra_nodes]
            settings = copy.deepcopy(task.data.get("multiInstanceSettings") or {})
            now = self.now()
            task.subtasks = [
                {
                    "id": i,
                    "nodeInfo": {
                        "affinityId": n.data["affinityId"],
                        "nodeUrl": n.data["url"],
                        "poolId": pool.id,
                        "nodeId": n.id,
                        "taskRootDirectory": rel,
                        "taskRootDirectoryUrl": f"{n.data['url']}/files/{rel}",
                    },
                    "startTime": iso(now),
                    "state": "running",
                    "stateTransitionTime": iso(now),
                }
                for i, n in enumerate(nodes[1:], start=1)
            ]
        hosts = ",".join(str(n.data["ipAddress"]) for n in nodes)
        shared = {"AZ_BATCH_HOST_LIST": hosts, "AZ_BATCH_MASTER_NODE": f"{nodes[0].data['ipAddress']}:{MASTER_PORT}"}
        common = list(settings.get("commonResourceFiles") or [])
        command = settings.get("coordinationCommandLine")
        handles: list[tuple[int, RunningTask]] = []
        for i, n in enumerate(nodes):
            root = self.node_root(n.id)
            task_dir = root / rel
            (task_dir / "wd").mkdir(parents=True, exist_ok=True)
            node_env = {
                **env,
                **shared,
                "AZ_BATCH_NODE_ID": n.id,
                "AZ_BATCH_NODE_IS_DEDICATED": "true" if n.dedicated else "false",
                "AZ_BATCH_NODE_ROOT_DIR": str(root),
                "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
                "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
                "AZ_BATCH_TASK_DIR": str(task_dir),
                "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
                "AZ_BATCH_TASK_SHARED_DIR": str(task_dir),
                "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true" if i == 0 else "false",
            }
            if i == 0:
                env.update({k: v for k, v in node_env.items() if k.startswith(("AZ_BATCH_HOST", "AZ_BATCH_MASTER"))})
                env["AZ_BATCH_TASK_SHARED_DIR"] = str(task_dir)
                env["AZ_BATCH_IS_CURRENT_NODE_MASTER"] = "true"
            try:
                download_resource_files(common, task_dir)
            except TransferError as err:
                self._stop_handles(handles)
                return failure_info(err.code, err.message, err.details)
            if not command:
                continue
            ctx = TaskContext(
                job_id=job.id,
                task_id=task.id,
                pool_id=pool.id,
                node_id=n.id,
                task_dir=task_dir,
                command_line=str(command),
                env=node_env,
                container_settings=task.data.get("containerSettings"),
                pool_container=pool_container,
            )
            try:
                handles.append((i, self.executor.start(ctx)))
            except TaskStartError as err:
                self._stop_handles(handles)
                return failure_info(err.code, err.message, err.details)
        failed: list[int] = []
        for i, handle in handles:
            code = handle.wait(TICK)
            while code is None:
                if task.kill_event.is_set():
                    handle.kill()
                    code = handle.wait(10.0)
                    break
                code = handle.wait(TICK)
            with self.lock:
                if i > 0 and i - 1 < len(task.subtasks):
                    task.subtasks[i - 1]["_exit"] = code
                    task.subtasks[i - 1]["_handle"] = handle
            if code != 0:
                failed.append(i)
        if failed:
            log.info("task %s/%s: coordination failed on instances %s", job.id, task.id, failed)
            return failure_info(
                "FailureExitCode",
                "The coordination command exited with an exit code representing a failure",
                [("Message", f"The coordination command failed on instance(s) {', '.join(map(str, failed))}")],
            )
        return None

    @staticmethod
    def _stop_handles(handles: list[tuple[int, RunningTask]]) -> None:
        for _, handle in handles:
            handle.kill()

    def _end_subtasks(self, task: Task) -> None:
        now = self.now()
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
