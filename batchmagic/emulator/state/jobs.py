"""Jobs: create (with an auto pool), update, terminate, delete, and the job's own scheduler step."""

from __future__ import annotations

import copy
import logging
import re
import uuid
from typing import Any

from batchmagic.emulator.errors import ApiError, exists, invalid_property, missing_property
from batchmagic.emulator.state.model import UNLIMITED_DURATION, Job, iso, parse_duration, touch, transition
from batchmagic.emulator.state.pools import PoolsMixin

__all__ = ["JobsMixin"]

log = logging.getLogger("batchmagic.emulator")


class JobsMixin(PoolsMixin):
    """Jobs and their lifecycle; a job's auto pool is made and released through :class:`PoolsMixin`."""

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
        now = self.now()
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
            touch(data, now)
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
            now = self.now()
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
            touch(job.data, now)

    def terminate_job(self, job_id: str, reason: str | None = None) -> None:
        """``POST /jobs/{id}/terminate``: kill running tasks; the job completes when they have stopped."""
        with self.lock:
            job = self._job(job_id)
            if job.data["state"] == "deleting":
                raise ApiError(409, "JobBeingDeleted")
            if job.data["state"] in ("completed", "terminating"):
                raise ApiError(409, "JobCompleted" if job.data["state"] == "completed" else "JobBeingTerminated")
            self._terminate_job(job, reason or "UserTerminate", self.now())

    def _terminate_job(self, job: Job, reason: str, now: float) -> None:
        transition(job.data, "terminating", now)
        job.pending_reason = reason
        touch(job.data, now)
        for task in job.tasks.values():
            if task.thread is not None and task.thread.is_alive():
                self._kill(task, "jobterminate")
        log.info("job %s terminating: %s", job.id, reason)

    def delete_job(self, job_id: str) -> None:
        """``DELETE /jobs/{id}``: kill running tasks; the job disappears once they have stopped."""
        with self.lock:
            job = self._job(job_id)
            now = self.now()
            transition(job.data, "deleting", now)
            touch(job.data, now)
            job.delete_requested = True
            for task in job.tasks.values():
                if task.thread is not None and task.thread.is_alive():
                    self._kill(task, "jobterminate")

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
                transition(job.data, "completed", now)
                touch(job.data, now)
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
