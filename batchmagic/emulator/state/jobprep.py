"""Job preparation and release tasks, as the service runs them.

- A job's ``jobPreparationTask`` runs on a node before the first task of that job the node runs, once
  per node (``rerunOnNodeRebootAfterSuccess`` aside), retried up to its ``maxTaskRetryCount``. While it
  fails with ``waitForSuccess`` (the default), no task of the job runs on that node: the task that was
  about to start goes back to the queue and the node is left out for this job. With ``waitForSuccess``
  false the service "will not wait for the Job Preparation Task to complete": the job's tasks start on
  the node while it runs, and go on being scheduled there even if it fails.
- What a preparation task leaves running (a "local service on the Node so that all Tasks of that Job
  can communicate with it", as the reference puts it) goes on after it ends: it is the release task's
  to stop ("shutting down services that were started as part of Job preparation").
- Ending the job (Terminate Job: "terminates any running Tasks associated with the Job and runs any
  required Job release Tasks"; Delete Job) ends a preparation task still running, as it ends the job's
  other tasks (``failureInfo`` ``TaskEnded``). Its ``jobReleaseTask`` then runs on each node where the
  preparation task "ran and completed", once none runs any more: never beside a preparation task still
  running, and not on a node whose preparation task never started; the job stays ``terminating`` until
  the release tasks are done.
- ``GET /jobs/{id}/jobpreparationandreleasetaskstatus`` lists, per node, both tasks' execution info.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

from batchmagic.emulator.executors import RunningTask, TaskContext
from batchmagic.emulator.state.commands import CommandRun, container_ended, run_command, started_container
from batchmagic.emulator.state.model import TICK, Job, Node, Pool, Task, iso
from batchmagic.emulator.state.tasks import TasksMixin

__all__ = ["JobPrepMixin"]

log = logging.getLogger("batchmagic.emulator")

#: The job states in which a preparation task still running is ended.
_ENDING = ("terminating", "deleting", "completed")


class JobPrepMixin(TasksMixin):
    """Runs job preparation and release tasks and keeps their per-node status."""

    def job_prep_release_status(self, job_id: str) -> list[dict[str, Any]]:
        """The per-node status entries of a job's preparation and release tasks."""
        with self.lock:
            job = self._job(job_id)
            return [copy.deepcopy(entry) for entry in job.prep_status.values()]

    def _node_accepts_job(self, job: Job, node: Node) -> bool:
        return node.id not in job.prep_failed

    def _run_prep_command(
        self, job: Job, pool: Pool, node: Node, spec: dict[str, Any], kind: str, info: dict[str, Any]
    ) -> int | None:
        """Run a preparation or release task on ``node``; record into ``info``; returns its exit code."""
        task_id = str(spec.get("id") or kind)
        rel = self.task_rel_dir(job.id, task_id)
        task_dir = self.node_root(node.id) / rel
        (task_dir / "wd").mkdir(parents=True, exist_ok=True)
        with self.lock:
            stand_in = Task(data={"id": task_id, "environmentSettings": spec.get("environmentSettings")}, job_id=job.id)
            env = self._task_env(job, stand_in, pool, node, task_dir)
            pool_container = (pool.data.get("virtualMachineConfiguration") or {}).get("containerConfiguration")
            info.update(
                {
                    "state": "running",
                    "startTime": iso(self.now()),
                    "taskRootDirectory": rel,
                    "taskRootDirectoryUrl": f"{node.data['url']}/files/{rel}",
                }
            )
        ctx = TaskContext(
            job_id=job.id,
            task_id=task_id,
            pool_id=pool.id,
            node_id=node.id,
            task_dir=task_dir,
            command_line=str(spec.get("commandLine") or ""),
            env=env,
            container_settings=spec.get("containerSettings"),
            pool_container=pool_container,
            user_identity=spec.get("userIdentity"),
        )
        constraints = spec.get("constraints") or {}
        # A release task has no retries and its own wall clock limit (15 minutes unless set).
        run = CommandRun(
            ctx,
            resource_files=list(spec.get("resourceFiles") or []),
            max_retries=int(constraints.get("maxTaskRetryCount", 0)) if kind == "prep" else 0,
            max_wall_clock_time=constraints.get("maxWallClockTime")
            if kind == "prep"
            else spec.get("maxWallClockTime", "PT15M"),
        )

        def should_stop() -> bool:
            # The job's end ends its preparation task (not its release task, which the end starts).
            return self._stop.is_set() or (kind == "prep" and job.data["state"] in _ENDING)

        def before_attempt(retry: int) -> bool:
            if retry:
                with self.lock:
                    info["retryCount"] = retry
            return not should_stop()

        def started(handle: RunningTask) -> None:
            container = started_container(self.executor, handle)
            if container is not None:
                with self.lock:
                    info["containerInfo"] = container

        result = run_command(
            self.executor, run, now=self.now, should_stop=should_stop, before_attempt=before_attempt, started=started
        )
        with self.lock:
            info["state"] = "completed"
            info["endTime"] = iso(self.now())
            if result.exit_code is not None:
                info["exitCode"] = result.exit_code
            info["result"] = "success" if result.succeeded else "failure"
            if result.failure:
                info["failureInfo"] = result.failure
            container_ended(info.get("containerInfo"))
        return result.exit_code

    def _prepare_job_on_node(self, job: Job, pool: Pool, node: Node) -> bool:
        """Run the job's preparation task on ``node`` unless it ran there; False if the node may not run the job."""
        spec = job.data.get("jobPreparationTask")
        if not spec:
            return True
        with self.lock:
            entry = job.prep_status.get(node.id)
            if entry is None:
                entry = {
                    "poolId": pool.id,
                    "nodeId": node.id,
                    "nodeUrl": node.data["url"],
                    "jobPreparationTaskExecutionInfo": {"retryCount": 0},
                }
                job.prep_status[node.id] = entry
                owner = True
            else:
                owner = False
        info = entry["jobPreparationTaskExecutionInfo"]
        if not spec.get("waitForSuccess", True):
            if owner:  # the tasks do not wait for it, nor care how it ends
                threading.Thread(
                    target=self._run_prep_command,
                    args=(job, pool, node, spec, "prep", info),
                    name=f"prep-{job.id}-{node.id}",
                    daemon=True,
                ).start()
            return True
        if owner:
            self._run_prep_command(job, pool, node, spec, "prep", info)
        else:
            while not self._stop.is_set():
                with self.lock:
                    if info.get("state") == "completed":
                        break
                self._stop.wait(TICK)
        with self.lock:
            ok = info.get("result") == "success" or not spec.get("waitForSuccess", True)
            if not ok:
                job.prep_failed.add(node.id)
            return ok

    def _start_job_releases(self) -> None:
        """Start the release tasks of jobs that are ending (called from the scheduler, lock held)."""
        for job in self.jobs.values():
            if job.data["state"] != "terminating" or job.release_state:
                continue
            preps = [e["jobPreparationTaskExecutionInfo"].get("state") for e in job.prep_status.values()]
            if "running" in preps:
                continue  # being ended by the job's end: the release (and the job's completion) wait for it
            spec = job.data.get("jobReleaseTask")
            targets = [
                e
                for e in job.prep_status.values()
                if spec and e["nodeId"] and e["jobPreparationTaskExecutionInfo"].get("state") == "completed"
            ]
            if not spec or not targets:
                job.release_state = "done"
                continue
            job.release_state = "running"
            threading.Thread(
                target=self._run_releases, args=(job, spec, targets), name=f"release-{job.id}", daemon=True
            ).start()

    def _run_releases(self, job: Job, spec: dict[str, Any], targets: list[dict[str, Any]]) -> None:
        try:
            for entry in targets:
                with self.lock:
                    pool = self.pools.get(str(entry["poolId"]))
                    node = pool.nodes.get(str(entry["nodeId"])) if pool is not None else None
                if pool is None or node is None:
                    continue
                info: dict[str, Any] = {}
                with self.lock:
                    entry["jobReleaseTaskExecutionInfo"] = info
                self._run_prep_command(job, pool, node, spec, "release", info)
        except Exception:  # noqa: BLE001 - a broken release task must not keep the job terminating forever
            log.exception("job release task of %s failed inside the emulator", job.id)
        finally:
            with self.lock:
                job.release_state = "done"
