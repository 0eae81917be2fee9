"""The account every resource module works on: settings, the resource tables, the lock and the clock."""

from __future__ import annotations

import copy
import random
import threading
import uuid
from pathlib import Path
from typing import Any

from batchmagic.emulator.clock import Clock
from batchmagic.emulator.errors import not_found
from batchmagic.emulator.executors import Executor
from batchmagic.emulator.state.model import Job, JobSchedule, Pool, Task, without_passwords

__all__ = ["AccountCore", "account_subscription"]


def account_subscription(account: str) -> str:
    """The subscription id an emulated account lives in unless one is given: a fixed UUID per account name.

    Subnets and custom images must be in it (pools refuse others, as the service does).
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://batchmagic.invalid/emulator/{account}"))


class AccountCore:
    """What the resource mixins share; :class:`~batchmagic.emulator.state.BatchState` composes them.

    One re-entrant lock (``lock``) guards every table; task attempts run in their own threads and take
    it only to record transitions.
    """

    def __init__(
        self,
        *,
        account: str,
        url: str,
        workdir: Path,
        executor: Executor,
        allocation_delay: float = 1.0,
        core_quota: int | None = None,
        low_priority_core_quota: int | None = None,
        family_quotas: dict[str, int] | None = None,
        empty_job_grace: float = 5.0,
        clock: Clock | None = None,
        state_dir: Path | None = None,
        subscription: str | None = None,
    ) -> None:
        self.account = account
        self.subscription = subscription or account_subscription(account)
        self.url = url.rstrip("/")
        self.workdir = Path(workdir)
        self.executor = executor
        self.allocation_delay = max(0.0, allocation_delay)
        self.core_quota = core_quota
        self.low_priority_core_quota = low_priority_core_quota
        self.family_quotas = {k.lower(): v for k, v in (family_quotas or {}).items()}
        self.empty_job_grace = empty_job_grace
        self.clock = clock or Clock()
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.lock = threading.RLock()
        # The block of loopback addresses this emulator's nodes take (127.A.B.2, .3...): its own, so that two
        # emulators on one machine (tests side by side) never give two nodes the same address and port.
        self.address_block = (random.randint(1, 254), random.randint(0, 255))
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self.schedules: dict[str, JobSchedule] = {}
        self.certificates: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._node_seq = 0

    def now(self) -> float:
        """The emulated time (see :class:`~batchmagic.emulator.clock.Clock`)."""
        return self.clock.now()

    def _pool(self, pool_id: str) -> Pool:
        pool = self.pools.get(pool_id)
        if pool is None:
            raise not_found("PoolNotFound")
        return pool

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise not_found("JobNotFound")
        return job

    def _task(self, job_id: str, task_id: str) -> Task:
        task = self._job(job_id).tasks.get(task_id)
        if task is None:
            raise not_found("TaskNotFound")
        return task

    @staticmethod
    def view(data: dict[str, Any]) -> dict[str, Any]:
        """A deep copy of a resource's wire representation, safe to serialise outside the lock.

        Like the real service, it never returns a secret: container registry passwords are left out.
        """
        clean: dict[str, Any] = without_passwords(copy.deepcopy(data))
        return clean

    def _kill(self, task: Task, reason: str) -> None:
        if not task.kill_reason:
            task.kill_reason = reason
        task.kill_event.set()
