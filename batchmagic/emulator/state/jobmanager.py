"""Job manager tasks: a job's ``jobManagerTask`` is its first task, and by default its end ends the job.

The service adds the job manager task to the job when the job is created (under the id its
specification names) and runs it before the job's other tasks. When it completes and
``killJobOnCompletion`` is true (the default), the job is terminated with ``terminateReason``
``JMComplete``.
"""

from __future__ import annotations

import logging
from typing import Any

from batchmagic.emulator.state.jobs import JobsMixin
from batchmagic.emulator.state.model import Job, Task
from batchmagic.emulator.state.tasks import TasksMixin

__all__ = ["JobManagerMixin"]

log = logging.getLogger("batchmagic.emulator")

#: What a job manager task carries over from its specification to the task the service creates.
_TASK_KEYS = (
    "id", "displayName", "commandLine", "containerSettings", "resourceFiles", "outputFiles", "environmentSettings",
    "constraints", "requiredSlots", "userIdentity", "applicationPackageReferences", "authenticationTokenSettings",
)  # fmt: skip


class JobManagerMixin(JobsMixin, TasksMixin):
    """Adds a job's manager task at creation and ends the job when it completes."""

    def create_job(self, body: dict[str, Any], *, scheduled: bool = False) -> Job:
        """Create a job, and its job manager task if it has one (see :meth:`JobsMixin.create_job`)."""
        spec = body.get("jobManagerTask")
        with self.lock:
            job = super().create_job(body, scheduled=scheduled)
            if spec:
                task = self._new_task(job, {k: spec[k] for k in _TASK_KEYS if k in spec}, self.now())
                task.job_manager = True
                job.tasks = {task.id: task, **job.tasks}
            return job

    def _task_completed(self, task: Task) -> None:
        super()._task_completed(task)
        if not task.job_manager:
            return
        job = self.jobs.get(task.job_id)
        spec = (job.data.get("jobManagerTask") or {}) if job is not None else {}
        if job is None or spec.get("killJobOnCompletion") is False:
            return
        if job.data["state"] in ("active", "disabling", "disabled"):
            log.info("job %s ends with its job manager task", job.id)
            self._terminate_job(job, "JMComplete", self.now())
