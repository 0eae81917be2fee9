"""Jobs: create (with an auto pool), update, terminate, delete, and the job's own scheduler step."""

from __future__ import annotations

import copy
import logging
import re
import uuid
from typing import Any

from batchmagic.emulator.errors import ApiError, exists, invalid_property, missing_property
from batchmagic.emulator.limits import check_display_name, check_id, taken
from batchmagic.emulator.state.model import UNLIMITED_DURATION, Job, iso, parse_duration, touch, transition
from batchmagic.emulator.state.pools import PoolsMixin

__all__ = ["JobsMixin"]

#: Jobs a schedule creates are named ``<schedule id>:job-<n>``: longer than a client could choose, with a colon.
_SCHEDULED_ID = re.compile(r"[A-Za-z0-9_:-]{1,130}")

log = logging.getLogger("batchmagic.emulator")


def _check_priority(body: dict[str, Any]) -> None:
    if body.get("priority") is not None and not -1000 <= int(body["priority"]) <= 1000:
        raise ApiError(
            400,
            "OutOfRangePriority",
            "The priority must be between -1000 and 1000.",
            [("PropertyName", "priority"), ("PropertyValue", str(body["priority"]))],
        )


class JobsMixin(PoolsMixin):
    """Jobs and their lifecycle; a job's auto pool is made and released through :class:`PoolsMixin`."""

    def create_job(self, body: dict[str, Any], *, scheduled: bool = False) -> Job:
        """Create a job from a ``POST /jobs`` body, with its auto pool if it asks for one.

        ``scheduled`` jobs come from a job schedule and have ids (``<schedule>:job-<n>``) a client
        could not choose.
        """
        job_id = check_id(body, _SCHEDULED_ID) if scheduled else check_id(body)
        check_display_name(body)
        pool_info = body.get("poolInfo")
        if not isinstance(pool_info, dict) or not (pool_info.get("poolId") or pool_info.get("autoPoolSpecification")):
            raise missing_property("poolInfo")
        _check_priority(body)
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
            if taken(self.jobs, job_id):
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
                self._create_auto_pool(job, auto)
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

    def _create_auto_pool(self, job: Job, auto: dict[str, Any]) -> None:
        """Create a job's auto pool (lock held) and record it with the defaults the service fills in."""
        data = job.data
        spec = copy.deepcopy(auto["pool"])
        prefix = auto.get("autoPoolIdPrefix") or "auto"
        pool_id = f"{prefix}_{uuid.uuid4()}"
        spec["id"] = pool_id
        pool = self.create_pool(spec, auto_job_id=job.id)
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

    def update_job(self, job_id: str, body: dict[str, Any], *, replace: bool = False) -> None:
        """Apply a ``PATCH /jobs/{id}`` body, or with ``replace`` a ``PUT`` body.

        PATCH changes only the properties it names. PUT replaces every updatable property: one it
        omits goes back to its default (priority 0, no metadata, unlimited constraints, ``noaction``).
        Either way a completed, terminating or deleting job refuses with 409, and ``poolInfo`` may
        name another pool only while the job is disabled.
        """
        with self.lock:
            job = self._job(job_id)
            self._check_job_state(job, ())
            now = self.now()
            if replace:
                body = {
                    "priority": 0,
                    "maxParallelTasks": -1,
                    "allowTaskPreemption": False,
                    "onAllTasksComplete": "noaction",
                    "metadata": [],
                    "constraints": {},
                    **{k: v for k, v in body.items() if v is not None},
                }
            _check_priority(body)
            if "maxParallelTasks" in body and (int(body["maxParallelTasks"]) == 0 or body["maxParallelTasks"] < -1):
                raise invalid_property("maxParallelTasks", body["maxParallelTasks"])
            if "poolInfo" in body:
                self._change_pool_info(job, body["poolInfo"])
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
            if body.get("onAllTasksComplete") == "noaction" and job.data.get("onAllTasksComplete") == "terminatejob":
                # The service refuses to turn terminatejob back off once set, also when a PUT omits it
                # (which asks for the default, noaction): 400, as recorded against the live service.
                raise invalid_property(
                    "onAllTasksComplete",
                    "noaction",
                    "A job's onAllTasksComplete cannot change from terminatejob to noaction.",
                )
            for key in ("priority", "maxParallelTasks", "onAllTasksComplete", "allowTaskPreemption"):
                if key in body:
                    job.data[key] = copy.deepcopy(body[key])
            if "metadata" in body:
                if body["metadata"]:
                    job.data["metadata"] = copy.deepcopy(body["metadata"])
                else:
                    job.data.pop("metadata", None)
            touch(job.data, now)

    def _change_pool_info(self, job: Job, pool_info: dict[str, Any]) -> None:
        current = job.data["poolInfo"]
        if pool_info.get("poolId") and pool_info.get("autoPoolSpecification"):
            raise invalid_property("poolInfo", "poolId and autoPoolSpecification", "Specify one of them, not both.")
        if not pool_info.get("poolId") and not pool_info.get("autoPoolSpecification"):
            raise missing_property("poolInfo.poolId")
        if pool_info.get("poolId") == current.get("poolId") and not pool_info.get("autoPoolSpecification"):
            return
        if pool_info.get("autoPoolSpecification") and current.get("autoPoolSpecification"):
            # Only keepAlive of an auto pool specification may change.
            keep = pool_info["autoPoolSpecification"].get("keepAlive")
            if keep is not None:
                current["autoPoolSpecification"]["keepAlive"] = bool(keep)
            return
        if job.data["state"] != "disabled":
            raise ApiError(
                409,
                "OperationInvalidForCurrentState",
                "The pool of a job may change only while the job is disabled.",
                [("JobState", str(job.data["state"]))],
            )
        if pool_info.get("autoPoolSpecification"):
            raise invalid_property("poolInfo.autoPoolSpecification", "autoPoolSpecification")
        job.data["poolInfo"] = {"poolId": pool_info["poolId"]}
        job.data["executionInfo"]["poolId"] = pool_info["poolId"]

    def _check_job_state(self, job: Job, allowed: tuple[str, ...]) -> None:
        """409 for a job that has ended or is ending; ``JobNotActive`` for other states not in ``allowed``."""
        state = job.data["state"]
        if state == "completed":
            raise ApiError(409, "JobCompleted")
        if state == "terminating":
            raise ApiError(409, "JobBeingTerminated")
        if state == "deleting":
            raise ApiError(409, "JobBeingDeleted")
        if allowed and state not in allowed:
            raise ApiError(409, "JobNotActive", values=[("JobState", state)])

    def disable_job(self, job_id: str, disable_tasks: str) -> None:
        """``POST /jobs/{id}/disable``: no new tasks start; running ones are requeued, ended or waited for.

        The job is ``disabling`` until no task of it runs, then ``disabled``. Disabling a disabling or
        disabled job changes nothing; a job in any other state than active refuses with 409.
        """
        with self.lock:
            job = self._job(job_id)
            self._check_job_state(job, ("active", "disabling", "disabled"))
            if job.data["state"] != "active":
                return
            now = self.now()
            transition(job.data, "disabling", now)
            touch(job.data, now)
            for task in job.tasks.values():
                if task.thread is not None and task.thread.is_alive() and disable_tasks != "wait":
                    self._kill(task, "requeue" if disable_tasks == "requeue" else "terminate")
            log.info("job %s disabling (%s)", job.id, disable_tasks)

    def enable_job(self, job_id: str) -> None:
        """``POST /jobs/{id}/enable``: a disabled (or disabling) job becomes active; an active one stays so."""
        with self.lock:
            job = self._job(job_id)
            self._check_job_state(job, ("active", "disabling", "disabled", "enabling"))
            if job.data["state"] == "active":
                return
            now = self.now()
            transition(job.data, "active", now)
            touch(job.data, now)

    def terminate_job(self, job_id: str, reason: str | None = None) -> None:
        """``POST /jobs/{id}/terminate``: kill running tasks; the job completes when they have stopped."""
        with self.lock:
            job = self._job(job_id)
            self._check_job_state(job, ())
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
            if not busy and job.release_state == "done":
                info = job.data["executionInfo"]
                info["endTime"] = iso(now)
                info["terminateReason"] = job.pending_reason or "UserTerminate"
                transition(job.data, "completed", now)
                touch(job.data, now)
                self._release_auto_pool(job, now)
            return
        if state not in ("active", "disabling", "disabled"):
            return
        if job.deadline is not None and now >= job.deadline:
            self._terminate_job(job, "MaxWallClockTimeExpiry", now)
            return
        if state == "disabling":
            if not busy:
                transition(job.data, "disabled", now)
                touch(job.data, now)
            return
        if state == "disabled":
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
