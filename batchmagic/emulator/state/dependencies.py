"""Task dependencies and exit conditions, as the service applies them.

- ``dependsOn`` (``taskIds``, ``taskIdRanges``) needs a job with ``usesTaskDependencies``; otherwise adding
  the task answers 409 ``TaskDependenciesNotSpecifiedOnJob``. A dependent task stays ``active`` until every
  task it depends on has completed and is *satisfied*: it succeeded, or its exit conditions say
  ``dependencyAction: satisfy``. A failed dependency blocks by default.
- ``exitConditions`` map a completed task (its exit code, exit code range, ``preProcessingError``,
  ``fileUploadError`` or ``default``) to exit options. With the job's ``onTaskFailure`` set to
  ``performexitoptionsjobaction``, their ``jobAction`` applies: ``terminate`` ends the job
  (``terminateReason`` ``TaskFailed``), ``disable`` disables it with ``requeue``; the default is
  ``terminate`` for a failure and ``none`` for success.
"""

from __future__ import annotations

import logging
from typing import Any

from batchmagic.emulator.errors import ApiError
from batchmagic.emulator.state.jobs import JobsMixin
from batchmagic.emulator.state.model import Job, Task, touch, transition
from batchmagic.emulator.state.tasks import TasksMixin

__all__ = ["DependenciesMixin"]

log = logging.getLogger("batchmagic.emulator")


def _exit_options(task: dict[str, Any]) -> dict[str, Any]:
    """The exit options that apply to a completed task (empty when its exit conditions name none)."""
    conditions = task.get("exitConditions") or {}
    info = task.get("executionInfo") or {}
    code = info.get("exitCode")
    failure = info.get("failureInfo") or {}
    if code is not None:
        for entry in conditions.get("exitCodes") or []:
            if entry.get("code") == code:
                return dict(entry.get("exitOptions") or {})
        for entry in conditions.get("exitCodeRanges") or []:
            if int(entry.get("start", 0)) <= code <= int(entry.get("end", 0)):
                return dict(entry.get("exitOptions") or {})
    elif failure.get("code", "").startswith(("ResourceFile", "BlobAccess", "ContainerInvalid")):
        if conditions.get("preProcessingError"):
            return dict(conditions["preProcessingError"])
    if str(failure.get("code", "")).startswith("FileUpload") and conditions.get("fileUploadError"):
        return dict(conditions["fileUploadError"])
    if info.get("result") == "failure" and conditions.get("default"):
        return dict(conditions["default"])
    return {}


class DependenciesMixin(JobsMixin, TasksMixin):
    """Dependency checks for scheduling and the job actions of exit conditions."""

    def _check_new_task(self, job: Job, body: dict[str, Any]) -> None:
        if body.get("dependsOn") and not job.data.get("usesTaskDependencies"):
            raise ApiError(
                409,
                "TaskDependenciesNotSpecifiedOnJob",
                "The task has dependencies but its job does not have usesTaskDependencies set.",
            )

    def _dependencies_met(self, job: Job, task: Task) -> bool:
        depends = task.data.get("dependsOn")
        if not depends:
            return True
        wanted = [str(i) for i in depends.get("taskIds") or []]
        for span in depends.get("taskIdRanges") or []:
            start, end = int(span.get("start", 0)), int(span.get("end", -1))
            wanted += [t for t in job.tasks if t.isdigit() and start <= int(t) <= end]
        for dep_id in wanted:
            dep = job.tasks.get(dep_id)
            if dep is None or dep.data["state"] != "completed":
                return False
            info = dep.data.get("executionInfo") or {}
            if info.get("result") == "success":
                continue
            if _exit_options(dep.data).get("dependencyAction", "block") != "satisfy":
                return False
        return True

    def _task_completed(self, task: Task) -> None:
        super()._task_completed(task)
        job = self.jobs.get(task.job_id)
        if job is None or job.data.get("onTaskFailure") != "performexitoptionsjobaction":
            return
        failed = (task.data.get("executionInfo") or {}).get("result") == "failure"
        action = _exit_options(task.data).get("jobAction", "terminate" if failed else "none")
        state = job.data["state"]
        if action == "terminate" and state in ("active", "disabling", "disabled"):
            log.info("job %s terminated by task %s's exit conditions", job.id, task.id)
            self._terminate_job(job, "TaskFailed", self.now())
        elif action == "disable" and state == "active":
            now = self.now()
            transition(job.data, "disabling", now)
            touch(job.data, now)
            for other in job.tasks.values():
                if other is not task and other.thread is not None and other.thread.is_alive():
                    self._kill(other, "requeue")
