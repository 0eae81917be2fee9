"""The emulator's in-memory Batch account: pools, nodes, jobs and tasks, and the scheduler thread.

One module per resource, each a mixin over :class:`~batchmagic.emulator.state.core.AccountCore` (the
settings, tables, lock and clock they share); :class:`BatchState` composes them and runs the scheduler:

    model.py   records (Pool, Node, Job, Task), timestamps, durations, etags
    core.py    AccountCore: settings, tables, lock, clock, lookups
    files.py   node and task directories
    pools.py   pools and nodes
    jobs.py    jobs
    schedules.py  job schedules and the jobs they create
    tasks.py   tasks, their placement and attempts
    commands.py  running a command on a node, with retries (every kind of task)
    multi.py   multi-instance tasks: coordination commands, subtasks
    nodes.py   node boots with the start task; reboot, reimage, scheduling, removal, users
    persist.py the account saved to and restored from --state DIR
    autoscaling.py  pool autoscale: metric samples, formula evaluations on the clock
    account.py certificates and node log uploads
    jobprep.py job preparation and release tasks
    dependencies.py  task dependencies and exit conditions
    jobmanager.py    job manager tasks
"""

from __future__ import annotations

import logging
import threading
import time

from batchmagic.emulator.clock import Clock
from batchmagic.emulator.state.account import AccountMixin
from batchmagic.emulator.state.autoscaling import AutoscaleMixin
from batchmagic.emulator.state.dependencies import DependenciesMixin
from batchmagic.emulator.state.jobmanager import JobManagerMixin
from batchmagic.emulator.state.jobprep import JobPrepMixin
from batchmagic.emulator.state.model import (
    TICK,
    UNLIMITED_DURATION,
    Job,
    Node,
    Pool,
    Task,
    environ_path_dir,
    iso,
    parse_duration,
    rfc1123,
)
from batchmagic.emulator.state.multi import MultiInstanceMixin
from batchmagic.emulator.state.nodes import NodesMixin
from batchmagic.emulator.state.persist import PersistMixin
from batchmagic.emulator.state.schedules import SchedulesMixin

__all__ = [
    "BatchState",
    "Clock",
    "Pool",
    "Node",
    "Job",
    "Task",
    "parse_duration",
    "UNLIMITED_DURATION",
    "iso",
    "rfc1123",
    "environ_path_dir",
]

log = logging.getLogger("batchmagic.emulator")


class BatchState(
    PersistMixin,
    AutoscaleMixin,
    NodesMixin,
    SchedulesMixin,
    DependenciesMixin,
    JobManagerMixin,
    MultiInstanceMixin,
    JobPrepMixin,
    AccountMixin,
):
    """The account's resources and the scheduler that moves them through their states.

    Parameters
    ----------
    account : str
        The Batch account name (``AZ_BATCH_ACCOUNT_NAME`` in tasks).
    url : str
        The account URL clients use; resource ``url`` fields and ``odata.metadata`` start with it.
    workdir : Path
        Where node and task directories are created.
    executor : Executor
        Runs task command lines.
    allocation_delay : float
        Seconds from a pool's (re)size request until its nodes are idle.
    core_quota : int or None
        The account's dedicated core quota; None for unlimited.
    low_priority_core_quota : int or None
        The account's low-priority/spot core quota; None for unlimited.
    family_quotas : dict or None
        Dedicated core quotas per VM family (lower-case family name -> cores); families not in it have none.
    empty_job_grace : float
        How long a job with ``onAllTasksComplete: terminatejob`` and no tasks waits for its first task
        before it completes (the real service completes such a job almost at once).
    clock : Clock, optional
        The emulated clock (default: real time).
    state_dir : Path, optional
        Where the account is saved while it runs and restored from on start (``--state``).
    """

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Restore the saved account (with ``state_dir``), then start the scheduler (and the saver)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.restore_state():
            self._resume()
        self._thread = threading.Thread(target=self._run, name="batch-emulator-scheduler", daemon=True)
        self._thread.start()
        self._start_saving()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the scheduler and kill every running task; waits for their threads to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        threads = []
        with self.lock:
            for job in self.jobs.values():
                for task in job.tasks.values():
                    if task.thread is not None and task.thread.is_alive():
                        self._kill(task, "shutdown")
                        threads.append(task.thread)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.executor.close()
        if self._saver is not None:
            self._saver.join(timeout)
        self._last_saved = ""
        self.save_state()

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                with self.lock:
                    self.tick(self.now())
            except Exception:  # noqa: BLE001 - the scheduler must survive a bug in one step
                log.exception("scheduler step failed")

    # ----------------------------------------------------------------- scheduler
    def kick(self) -> None:
        """Run a scheduler step now, for a request that may have made work due.

        The service acts on a new task, a schedule or a resize as it accepts the request: a job
        schedule's first job exists when the create returns, a task added to a pool with a free slot
        is picked up at once. Without this the emulator would wait for its next tick (``TICK``), and a
        client reading right after writing would see an earlier state than the service shows.
        """
        try:
            with self.lock:
                self.tick(self.now())
        except Exception:  # noqa: BLE001 - the request succeeded; its tick's failure is the scheduler's
            log.exception("scheduler step after a request failed")

    def tick(self, now: float) -> None:
        """One scheduler step (called with the lock held): pools, job schedules, jobs, then task placement."""
        for pool in list(self.pools.values()):
            if pool.data["state"] == "deleting":
                if (
                    pool.delete_at is not None
                    and now >= pool.delete_at
                    and not any(n.running for n in pool.nodes.values())
                ):
                    for node in list(pool.nodes.values()):
                        self._remove_node(pool, node)
                    del self.pools[pool.id]
                    log.info("pool %s deleted", pool.id)
                continue
            self._advance_pool(pool, now)
        self._advance_schedules(now)
        self._start_job_releases()
        for job in list(self.jobs.values()):
            self._advance_job(job, now)
        self._schedule(now)
