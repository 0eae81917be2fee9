"""Job schedules: jobs created at a recurrence, under the emulator's clock.

The service's rules, as its REST reference states them:

- The first job is created at ``schedule.doNotRunUntil`` (or at once); with a ``recurrenceInterval``
  another follows each interval after the previous one was due. At most one job of a schedule is
  active at a time: an occurrence that falls while the previous job still runs waits for it, and is
  missed if ``startWindow`` passes meanwhile.
- Without a ``recurrenceInterval`` the schedule creates one job and completes when that job does; past
  ``doNotRunAfter`` it creates no job and completes once its last job has.
- Jobs are named ``<schedule id>:job-<n>`` and carry the schedule's ``jobSpecification``; an auto pool
  with ``poolLifetimeOption: jobschedule`` is made once and lives until the schedule ends.
- Disable stops new jobs (the current one runs on); enable resumes; terminate ends the current job and
  completes the schedule; delete removes the schedule and its jobs.
"""

from __future__ import annotations

import copy
import logging
import uuid
from typing import Any

from batchmagic.emulator.errors import ApiError, exists, invalid_property, missing_property, not_found
from batchmagic.emulator.limits import check_display_name, check_id, taken
from batchmagic.emulator.state.jobs import JobsMixin
from batchmagic.emulator.state.model import UNLIMITED_DURATION, Job, JobSchedule, iso, parse_duration, touch, transition

__all__ = ["SchedulesMixin"]

log = logging.getLogger("batchmagic.emulator")


def _seconds(schedule: dict[str, Any], key: str, minimum: float = 0.0) -> float | None:
    value = schedule.get(key)
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise invalid_property(f"schedule.{key}", value) from exc
    if seconds is not None and seconds < minimum:
        raise invalid_property(f"schedule.{key}", value, f"The minimum value is {int(minimum)} seconds.")
    return seconds


def _timestamp(schedule: dict[str, Any], key: str) -> float | None:
    from datetime import datetime

    value = schedule.get(key)
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise invalid_property(f"schedule.{key}", value) from exc


def _with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A job specification as the service stores it: every defaulted property spelled out."""
    out = copy.deepcopy(spec)
    for key, value in (
        ("priority", 0),
        ("maxParallelTasks", -1),
        ("allowTaskPreemption", False),
        ("usesTaskDependencies", False),
        ("onAllTasksComplete", "noaction"),
        ("onTaskFailure", "noaction"),
    ):
        out.setdefault(key, value)
    constraints = out.setdefault("constraints", {})
    constraints.setdefault("maxWallClockTime", UNLIMITED_DURATION)
    constraints.setdefault("maxTaskRetryCount", 0)
    return out


class SchedulesMixin(JobsMixin):
    """Job schedules. ``_advance_schedules`` is the scheduler's step that creates their jobs."""

    def _schedule_of(self, schedule_id: str) -> JobSchedule:
        found = self.schedules.get(schedule_id)
        if found is None:
            raise not_found("JobScheduleNotFound")
        return found

    @staticmethod
    def _check_spec(body: dict[str, Any]) -> None:
        schedule = body.get("schedule") or {}
        _seconds(schedule, "recurrenceInterval", 60.0)
        _seconds(schedule, "startWindow", 60.0)
        _timestamp(schedule, "doNotRunUntil")
        _timestamp(schedule, "doNotRunAfter")
        spec = body.get("jobSpecification")
        if not isinstance(spec, dict):
            raise missing_property("jobSpecification")
        pool_info = spec.get("poolInfo")
        if not isinstance(pool_info, dict) or not (pool_info.get("poolId") or pool_info.get("autoPoolSpecification")):
            raise missing_property("jobSpecification.poolInfo")

    def create_job_schedule(self, body: dict[str, Any]) -> JobSchedule:
        """``POST /jobschedules``."""
        schedule_id = check_id(body)
        check_display_name(body)
        self._check_spec(body)
        with self.lock:
            if taken(self.schedules, schedule_id):
                raise exists("JobScheduleExists")
            now = self.now()
            data: dict[str, Any] = {
                "id": schedule_id,
                "url": f"{self.url}/jobschedules/{schedule_id}",
                "creationTime": iso(now),
                "state": "active",
                "stateTransitionTime": iso(now),
                "schedule": copy.deepcopy(body.get("schedule") or {}),
                "jobSpecification": _with_defaults(body["jobSpecification"]),
                "executionInfo": {},
            }
            for key in ("displayName", "metadata"):
                if body.get(key):
                    data[key] = copy.deepcopy(body[key])
            touch(data, now)
            schedule = JobSchedule(data=data)
            self._plan_first_run(schedule, now)
            self.schedules[schedule_id] = schedule
            log.info("job schedule %s created", schedule_id)
            return schedule

    def _plan_first_run(self, schedule: JobSchedule, now: float) -> None:
        until = _timestamp(schedule.data["schedule"], "doNotRunUntil")
        schedule.next_run = max(now, until) if until is not None else now
        self._show_next_run(schedule)

    def _show_next_run(self, schedule: JobSchedule) -> None:
        info = schedule.data["executionInfo"]
        if schedule.next_run is None:
            info.pop("nextRunTime", None)
        else:
            info["nextRunTime"] = iso(schedule.next_run)

    def get_job_schedule(self, schedule_id: str) -> dict[str, Any]:
        """The wire representation of a job schedule."""
        with self.lock:
            return self.view(self._schedule_of(schedule_id).data)

    def list_job_schedules(self) -> list[dict[str, Any]]:
        """All job schedules, oldest first."""
        with self.lock:
            return [self.view(s.data) for s in self.schedules.values()]

    def list_jobs_from_schedule(self, schedule_id: str) -> list[dict[str, Any]]:
        """``GET /jobschedules/{id}/jobs``: the jobs the schedule created that still exist."""
        with self.lock:
            schedule = self._schedule_of(schedule_id)
            return [self.view(self.jobs[j].data) for j in schedule.job_ids if j in self.jobs]

    def _check_schedule_state(self, schedule: JobSchedule) -> None:
        state = schedule.data["state"]
        if state == "completed":
            raise ApiError(409, "JobScheduleCompleted")
        if state == "terminating":
            raise ApiError(409, "JobScheduleBeingTerminated")
        if state == "deleting":
            raise ApiError(409, "JobScheduleBeingDeleted")

    def update_job_schedule(self, schedule_id: str, body: dict[str, Any], *, replace: bool = False) -> None:
        """``PATCH`` (or with ``replace`` ``PUT``) ``/jobschedules/{id}``.

        PATCH changes what it names; PUT replaces ``schedule``, ``jobSpecification`` and ``metadata``
        (an omitted one goes back to empty). Jobs already created keep their specification; a changed
        schedule takes effect from the next run.
        """
        with self.lock:
            schedule = self._schedule_of(schedule_id)
            self._check_schedule_state(schedule)
            merged = dict(body)
            if not replace:
                merged.setdefault("schedule", schedule.data["schedule"])
                merged.setdefault("jobSpecification", schedule.data["jobSpecification"])
            elif not isinstance(merged.get("jobSpecification"), dict):
                raise missing_property("jobSpecification")
            self._check_spec(merged)
            now = self.now()
            if replace or "schedule" in body:
                schedule.data["schedule"] = copy.deepcopy(body.get("schedule") or {})
                if schedule.next_run is not None or not schedule.job_count:
                    self._replan(schedule, now)
            if replace or "jobSpecification" in body:
                schedule.data["jobSpecification"] = _with_defaults(merged["jobSpecification"])
            if replace or "metadata" in body:
                if body.get("metadata"):
                    schedule.data["metadata"] = copy.deepcopy(body["metadata"])
                else:
                    schedule.data.pop("metadata", None)
            touch(schedule.data, now)

    def _replan(self, schedule: JobSchedule, now: float) -> None:
        spec = schedule.data["schedule"]
        until = _timestamp(spec, "doNotRunUntil")
        interval = _seconds(spec, "recurrenceInterval")
        if schedule.job_count and interval is None:
            schedule.next_run = None
        elif schedule.job_count and interval is not None:
            schedule.next_run = max(now, until or now)
        else:
            schedule.next_run = max(now, until) if until is not None else now
        self._show_next_run(schedule)

    def disable_job_schedule(self, schedule_id: str) -> None:
        """``POST /jobschedules/{id}/disable``: no new jobs until enabled."""
        with self.lock:
            schedule = self._schedule_of(schedule_id)
            self._check_schedule_state(schedule)
            now = self.now()
            transition(schedule.data, "disabled", now)
            touch(schedule.data, now)

    def enable_job_schedule(self, schedule_id: str) -> None:
        """``POST /jobschedules/{id}/enable``."""
        with self.lock:
            schedule = self._schedule_of(schedule_id)
            self._check_schedule_state(schedule)
            now = self.now()
            transition(schedule.data, "active", now)
            touch(schedule.data, now)

    def terminate_job_schedule(self, schedule_id: str) -> None:
        """``POST /jobschedules/{id}/terminate``: end its active job; the schedule then completes."""
        with self.lock:
            schedule = self._schedule_of(schedule_id)
            self._check_schedule_state(schedule)
            now = self.now()
            transition(schedule.data, "terminating", now)
            touch(schedule.data, now)
            schedule.next_run = None
            self._show_next_run(schedule)
            job = self._current_job(schedule)
            if job is not None and job.data["state"] not in ("terminating", "deleting"):
                self._terminate_job(job, "UserTerminate", now)

    def delete_job_schedule(self, schedule_id: str) -> None:
        """``DELETE /jobschedules/{id}``: the schedule and every job it created go."""
        with self.lock:
            schedule = self._schedule_of(schedule_id)
            now = self.now()
            transition(schedule.data, "deleting", now)
            touch(schedule.data, now)
            schedule.next_run = None
            for job_id in schedule.job_ids:
                if job_id in self.jobs and self.jobs[job_id].data["state"] != "deleting":
                    self.delete_job(job_id)

    def _current_job(self, schedule: JobSchedule) -> Job | None:
        for job_id in reversed(schedule.job_ids):
            job = self.jobs.get(job_id)
            if job is not None and job.data["state"] not in ("completed",):
                return job
        return None

    def _advance_schedules(self, now: float) -> None:
        """One scheduler step for every job schedule (called with the lock held)."""
        for schedule in list(self.schedules.values()):
            state = schedule.data["state"]
            current = self._current_job(schedule)
            if state == "deleting":
                if current is None:
                    self._end_schedule(schedule, now)
                    del self.schedules[schedule.id]
                    log.info("job schedule %s deleted", schedule.id)
                continue
            if state == "terminating":
                if current is None:
                    self._complete_schedule(schedule, now)
                continue
            if state != "active":
                continue
            spec = schedule.data["schedule"]
            after = _timestamp(spec, "doNotRunAfter")
            interval = _seconds(spec, "recurrenceInterval")
            window = _seconds(spec, "startWindow")
            if schedule.next_run is None or (after is not None and now >= after):
                if current is None:
                    self._complete_schedule(schedule, now)
                continue
            if now < schedule.next_run:
                continue
            if window is not None and now > schedule.next_run + window:
                # This occurrence was missed (its job could not start within the window).
                self._advance_next_run(schedule, interval, now)
                continue
            if current is not None:
                continue
            self._create_scheduled_job(schedule, now)
            self._advance_next_run(schedule, interval, now)

    def _advance_next_run(self, schedule: JobSchedule, interval: float | None, now: float) -> None:
        if interval is None:
            schedule.next_run = None
        else:
            assert schedule.next_run is not None
            while schedule.next_run <= now:
                schedule.next_run += interval
        self._show_next_run(schedule)

    def _create_scheduled_job(self, schedule: JobSchedule, now: float) -> None:
        schedule.job_count += 1
        job_id = f"{schedule.id}:job-{schedule.job_count}"
        spec = copy.deepcopy(schedule.data["jobSpecification"])
        body: dict[str, Any] = {k: v for k, v in spec.items() if k != "poolInfo"}
        pool_info = spec["poolInfo"]
        auto = pool_info.get("autoPoolSpecification")
        if auto and str(auto.get("poolLifetimeOption", "")).lower() == "jobschedule":
            if schedule.auto_pool_id is None or schedule.auto_pool_id not in self.pools:
                pool_spec = copy.deepcopy(auto.get("pool") or {})
                pool_spec["id"] = f"{auto.get('autoPoolIdPrefix') or schedule.id}_{uuid.uuid4()}"
                schedule.auto_pool_id = self.create_pool(pool_spec).id
            body["poolInfo"] = {"poolId": schedule.auto_pool_id}
        else:
            body["poolInfo"] = pool_info
        body["id"] = job_id
        try:
            job = self.create_job(body, scheduled=True)
        except ApiError as err:
            log.warning("job schedule %s could not create job %s: %s", schedule.id, job_id, err)
            return
        job.data["poolInfo"] = copy.deepcopy(pool_info)
        schedule.job_ids.append(job_id)
        schedule.data["executionInfo"]["recentJob"] = {"id": job_id, "url": job.data["url"]}
        touch(schedule.data, now)
        log.info("job schedule %s created job %s", schedule.id, job_id)

    def _complete_schedule(self, schedule: JobSchedule, now: float) -> None:
        transition(schedule.data, "completed", now)
        schedule.data["executionInfo"]["endTime"] = iso(now)
        schedule.next_run = None
        self._show_next_run(schedule)
        touch(schedule.data, now)
        self._end_schedule(schedule, now)

    def _end_schedule(self, schedule: JobSchedule, now: float) -> None:
        if schedule.auto_pool_id and schedule.auto_pool_id in self.pools:
            self._delete_pool(self.pools[schedule.auto_pool_id], now)
