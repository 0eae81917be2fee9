"""``--state DIR``: the account survives an emulator restart, as the service does not forget a pool.

While it runs, the emulator writes its whole account to ``DIR/state.json`` (about twice a second
when something changed, and when it stops): pools with their nodes, autoscale settings and metric
history, jobs and their tasks, job schedules, certificates, and the emulated time. An emulator
started on the same directory carries on from there (its clock never goes back): nodes that were
booting boot again (start task included); a task that was running is re-adopted when its process
outlived the previous emulator (a crash: the process executor finds it by pid and start time and
reads its exit code when it ends), or completes with the exit code its process left beside the
task's directory when it ended while no emulator watched (it is not run twice), and otherwise goes
back to its job's queue as after a node reboot (``requeueCount`` + 1). A graceful stop ends running
tasks that way too, so they run again.

The file is a format of this emulator only (``version`` 1), written atomically (temp file + rename).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from batchmagic.emulator.autoscale import MetricHistory, compile_formula
from batchmagic.emulator.executors import RunningTask
from batchmagic.emulator.state.commands import exit_failure, wait_for
from batchmagic.emulator.state.model import Job, JobSchedule, Node, Pool, Task, failure_info, transition
from batchmagic.emulator.state.multi import MultiInstanceMixin
from batchmagic.emulator.state.nodes import NodesMixin

__all__ = ["PersistMixin", "STATE_FILE", "SNAPSHOT_VERSION", "saved_time"]

log = logging.getLogger("batchmagic.emulator")

STATE_FILE = "state.json"
SNAPSHOT_VERSION = 1
_SAVE_EVERY = 0.5  # real seconds
_RUNNING = ("preparing", "running")
_STEADY_NODE_STATES = ("idle", "running", "starttaskfailed", "unusable", "deallocated", "leavingpool", "offline")


def saved_time(state_dir: Path | str) -> float | None:
    """The emulated time a saved account was at, to start a restarted emulator's clock there."""
    try:
        return float(json.loads((Path(state_dir) / STATE_FILE).read_text(encoding="utf-8"))["now"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _rebase(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    return value


class PersistMixin(NodesMixin, MultiInstanceMixin):
    """Saving the account to ``state_dir`` and restoring it on start."""

    state_dir: Path | None = None
    _saver: threading.Thread | None = None
    _last_saved: str = ""

    # ----------------------------------------------------------------- saving
    def _snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "version": SNAPSHOT_VERSION,
                "now": self.now(),
                "url": self.url,
                "node_seq": self._node_seq,
                "pools": [self._pool_record(p) for p in self.pools.values()],
                "jobs": [self._job_record(j) for j in self.jobs.values()],
                "schedules": [
                    {
                        "data": copy.deepcopy(s.data),
                        "next_run": s.next_run,
                        "job_count": s.job_count,
                        "job_ids": list(s.job_ids),
                        "auto_pool_id": s.auto_pool_id,
                    }
                    for s in self.schedules.values()
                ],
                "certificates": copy.deepcopy(self.certificates),
            }

    @staticmethod
    def _pool_record(pool: Pool) -> dict[str, Any]:
        return {
            "data": copy.deepcopy(pool.data),
            "alloc_start": pool.alloc_start,
            "alloc_dedicated": pool.alloc_dedicated,
            "alloc_low": pool.alloc_low,
            "delete_at": pool.delete_at,
            "stop_at": pool.stop_at,
            "auto_job_id": pool.auto_job_id,
            "deallocation": pool.deallocation,
            "formula": pool.formula.text if pool.formula is not None else None,
            "evaluation_interval": pool.evaluation_interval,
            "next_evaluation": pool.next_evaluation,
            "history": pool.history.to_list(),
            "nodes": [
                {
                    "data": copy.deepcopy(n.data),
                    "dedicated": n.dedicated,
                    "pending_op": n.pending_op,
                    "users": copy.deepcopy(n.users),
                }
                for n in pool.nodes.values()
            ],
        }

    @staticmethod
    def _job_record(job: Job) -> dict[str, Any]:
        return {
            "data": copy.deepcopy(job.data),
            "deadline": job.deadline,
            "auto_pool_id": job.auto_pool_id,
            "auto_pool_lifetime": job.auto_pool_lifetime,
            "pending_reason": job.pending_reason,
            "delete_requested": job.delete_requested,
            "created": job.created,
            "tasks": [
                {
                    "data": copy.deepcopy(t.data),
                    "pool_id": t.pool_id,
                    "node_id": t.node.id if t.node is not None else None,
                    "extra_node_ids": [n.id for n in t.extra_nodes],
                    "subtasks": [{k: v for k, v in s.items() if not k.startswith("_")} for s in t.subtasks],
                    "process": t.process if t.data["state"] in _RUNNING else None,
                }
                for t in job.tasks.values()
            ],
        }

    def save_state(self) -> None:
        """Write the account to ``state_dir`` now (atomically); a no-op without one or when nothing changed."""
        if self.state_dir is None:
            return
        snapshot = self._snapshot()
        text = json.dumps({k: v for k, v in snapshot.items() if k != "now"}, sort_keys=True)
        if text == self._last_saved:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(snapshot), encoding="utf-8")
        os.replace(tmp, self.state_dir / STATE_FILE)
        self._last_saved = text

    def _save_loop(self) -> None:
        while not self._stop.wait(_SAVE_EVERY):
            try:
                self.save_state()
            except Exception:  # noqa: BLE001 - a failed save must not stop the emulator; the next one may work
                log.exception("saving the emulator state failed")

    def _start_saving(self) -> None:
        if self.state_dir is not None:
            self._saver = threading.Thread(target=self._save_loop, name="batch-emulator-state", daemon=True)
            self._saver.start()

    # ----------------------------------------------------------------- restoring
    def restore_state(self) -> bool:
        """Load ``state_dir``'s saved account, if any, before the scheduler starts; True if one was loaded."""
        if self.state_dir is None:
            return False
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return False
        snap = json.loads(path.read_text(encoding="utf-8"))
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"{path}: unknown state version {snap.get('version')!r}")
        snap = _rebase(snap, str(snap.get("url") or self.url), self.url)
        with self.lock:
            self._node_seq = int(snap.get("node_seq", 0))
            for record in snap["pools"]:
                pool = self._restore_pool(record)
                self.pools[pool.id] = pool
            for record in snap["jobs"]:
                job = self._restore_job(record)
                self.jobs[job.id] = job
            for record in snap.get("schedules", []):
                schedule = JobSchedule(
                    data=record["data"],
                    next_run=record.get("next_run"),
                    job_count=int(record.get("job_count", 0)),
                    job_ids=list(record.get("job_ids") or []),
                    auto_pool_id=record.get("auto_pool_id"),
                )
                self.schedules[schedule.id] = schedule
            self.certificates.update(snap.get("certificates") or {})
            log.info("state restored from %s: %d pools, %d jobs", path, len(self.pools), len(self.jobs))
        return True

    def _restore_pool(self, record: dict[str, Any]) -> Pool:
        pool = Pool(
            data=record["data"],
            alloc_start=record.get("alloc_start"),
            alloc_dedicated=int(record.get("alloc_dedicated", 0)),
            alloc_low=int(record.get("alloc_low", 0)),
            delete_at=record.get("delete_at"),
            stop_at=record.get("stop_at"),
            auto_job_id=record.get("auto_job_id"),
            deallocation=str(record.get("deallocation", "requeue")),
            formula=compile_formula(record["formula"]) if record.get("formula") else None,
            evaluation_interval=float(record.get("evaluation_interval", 900.0)),
            next_evaluation=record.get("next_evaluation"),
            history=MetricHistory.from_list(record.get("history") or []),
        )
        for item in record.get("nodes", []):
            node = Node(
                data=item["data"],
                pool_id=pool.id,
                dedicated=bool(item["dedicated"]),
                pending_op=item.get("pending_op"),
                users=dict(item.get("users") or {}),
            )
            node.data["runningTasksCount"] = node.data["runningTaskSlotsCount"] = 0
            # Node states are lower case on the wire; files from before that fix said startTaskFailed.
            node.data["state"] = str(node.data["state"]).lower()
            pool.nodes[node.id] = node
        return pool

    def _restore_job(self, record: dict[str, Any]) -> Job:
        job = Job(
            data=record["data"],
            deadline=record.get("deadline"),
            auto_pool_id=record.get("auto_pool_id"),
            auto_pool_lifetime=record.get("auto_pool_lifetime"),
            pending_reason=record.get("pending_reason"),
            delete_requested=bool(record.get("delete_requested", False)),
            created=float(record.get("created", 0.0)),
        )
        for item in record.get("tasks", []):
            task = Task(data=item["data"], job_id=job.id, pool_id=item.get("pool_id"))
            task.subtasks = list(item.get("subtasks") or [])
            task.process = item.get("process")
            node_ids = [i for i in [item.get("node_id"), *(item.get("extra_node_ids") or [])] if i]
            pool = self.pools.get(str(item.get("pool_id")))
            if pool is not None:
                task.extra_nodes = [pool.nodes[i] for i in node_ids[1:] if i in pool.nodes]
                task.node = pool.nodes.get(node_ids[0]) if node_ids else None
            job.tasks[task.id] = task
        return job

    def _resume(self) -> None:
        """After a restore: re-adopt or requeue the tasks that were running; boot the nodes that were booting."""
        with self.lock:
            for job in self.jobs.values():
                for task in job.tasks.values():
                    if task.data["state"] not in _RUNNING:
                        continue
                    handle = None
                    if task.process and not task.extra_nodes and task.node is not None:
                        handle = self.executor.adopt(task.process)
                    if handle is None:
                        self._requeue_after_restart(task)
                    else:
                        self._adopt(job, task, handle)
            for pool in self.pools.values():
                for node in pool.nodes.values():
                    if node.data["state"] not in _STEADY_NODE_STATES or node.pending_op:
                        node.pending_op = None
                        transition(node.data, "starting", self.now(), with_previous=False)
                        node.preparing = True
                        threading.Thread(
                            target=self._boot, args=(pool, node), name=f"reboot-{node.id[:16]}", daemon=True
                        ).start()
                    elif node.data["state"] == "running" and not node.running:
                        transition(node.data, "idle", self.now(), with_previous=False)

    def _requeue_after_restart(self, task: Task) -> None:
        # As a node reboot would: the task goes back to its job's queue (its node was rebooted under it).
        for node in [task.node, *task.extra_nodes]:
            if node is not None and node.data["state"] == "running":
                transition(node.data, "idle", self.now(), with_previous=False)
        task.node, task.extra_nodes, task.process = None, [], None
        self._requeue(task)
        log.info("task %s/%s was running when the emulator stopped: requeued", task.job_id, task.id)

    def _adopt(self, job: Job, task: Task, handle: RunningTask) -> None:
        node = task.node
        assert node is not None
        node.running.add((job.id, task.id))
        node.used_slots += int(task.data.get("requiredSlots", 1))
        node.data["runningTasksCount"] = len(node.running)
        node.data["runningTaskSlotsCount"] = node.used_slots
        transition(node.data, "running", self.now(), with_previous=False)
        task.kill_event = threading.Event()
        task.kill_reason = ""
        task.thread = threading.Thread(
            target=self._watch_adopted, args=(task, handle), name=f"adopted-{task.id}", daemon=True
        )
        task.thread.start()
        log.info("task %s/%s re-adopted (pid %s)", job.id, task.id, (task.process or {}).get("pid"))

    def _watch_adopted(self, task: Task, handle: RunningTask) -> None:
        # The adopted attempt's wall clock started in the previous process: only a stop can end it early.
        exit_code, stopped, _ = wait_for(handle, task.kill_event.is_set, None, self.now)
        if task.kill_reason in ("requeue", "shutdown"):
            self._requeue(task)
            return
        failure: dict[str, Any] | None = None
        if stopped:
            failure = failure_info("TaskEnded", "Task Was Ended by User Request")
        elif exit_code != 0:
            failure = exit_failure()
        self._finish(task, exit_code, failure)
