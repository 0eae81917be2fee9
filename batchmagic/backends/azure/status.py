"""Where a run on Batch is, decided from what Batch said: pure functions, no client, no call.

The backend reads the job, the tasks that changed, and (while no task has started) the pool and
its nodes; these functions fold what it read into :class:`AzureRun` and decide the
:class:`~batchmagic.backends.base.BackendStatus`, in the order a poll asks: the job's verdict
(:func:`job_verdict`), the tasks' stage (:func:`task_stage`, :func:`tasks_status`), then the pool's
(:func:`pool_verdict`, :func:`nodes_status`, :func:`named_pool_status`). A test calls them with
plain objects that have the SDK models' attribute names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from batchmagic.backends.azure.gpus import quota_line
from batchmagic.backends.azure.poolspec import Pool, nodes_for, scale_to_zero_at
from batchmagic.backends.azure.vmsizes import vm_cores
from batchmagic.backends.base import (
    BackendStatus,
    Holding,
    Phase,
    TaskStatus,
    TaskSubmission,
    exit_reason,
    format_duration,
)

__all__ = [
    "AzureRun",
    "Stage",
    "changed_filter",
    "counts_agree",
    "holding_of_counts",
    "holding_of_nodes",
    "job_verdict",
    "named_pool_status",
    "needs_full_read",
    "no_pool_status",
    "pool_deleted_status",
    "nodes_status",
    "note_tasks",
    "pool_verdict",
    "preparing_nodes",
    "resize_error",
    "scale_note",
    "task_failure",
    "task_stage",
    "tasks_status",
    "value",
    "warmed",
]

QUOTA_CODES = {
    "AccountCoreQuotaReached",
    "AccountVMFamilyCoreQuotaReached",
    "AccountLowPriorityCoreQuotaReached",
    "AccountSpotCoreQuotaReached",
}
_UNUSABLE = ("unusable", "starttaskfailed")

#: Where a run's tasks are: all done, one running, some preparing on a node, or none on a node yet.
Stage = Literal["done", "running", "preparing", "waiting"]


@dataclass
class AzureRun:
    """What the client knows of a run on Batch, updated by what changed (a sweep's tick reads no more)."""

    submission: TaskSubmission
    pool_id: str = ""
    started_task: bool = False
    released: bool = False
    pool: Pool | None = None  # the named pool it runs on (None: its own auto pool)
    prefetched: tuple[str, ...] = ()  # images its pool's nodes pull as they start
    tasks: dict[str, TaskStatus] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)  # task id -> Batch's state (active, preparing...)
    tally: Counter[str] = field(default_factory=Counter)  # Batch state -> tasks in it, per ``states``
    watermark: datetime | None = None  # the latest stateTransitionTime read
    synced: bool = False  # the whole list was read once
    disagreements: int = 0  # consecutive ticks where the job's task counts disagreed with ``tally``
    full_reads: int = 0  # whole-list reads (the first, and each resynchronization)
    unfiltered: bool = False  # the service refused the stateTransitionTime filter: read the whole list
    holding: Holding | None = None
    holding_read: float = 0.0  # time.monotonic() of the last node-count read
    changed: set[str] = field(default_factory=set)  # tasks read this tick
    requeued: dict[str, float] = field(default_factory=dict)  # task id -> its last requeue (lastRequeueTime)

    def __post_init__(self) -> None:
        self.tasks = {tid: TaskStatus(tid) for tid in self.submission.task_ids}


def value(enum_or_str: Any) -> str:
    """The wire string of an SDK enum (``str()`` of one gives its class name)."""
    return str(getattr(enum_or_str, "value", enum_or_str) or "")


# --- the tasks ---


def note_tasks(run: AzureRun, found: Iterable[Any]) -> None:
    """Fold tasks read from Batch into ``run``: statuses, state tally, watermark."""
    for task in found:
        run.changed.add(task.id)
        status = run.tasks.get(task.id)
        if status is None:
            status = run.tasks[task.id] = TaskStatus(task.id)
        state = value(task.state)
        previous = run.states.get(task.id)
        if previous != state:
            if previous is not None:
                run.tally[previous] -= 1
            run.tally[state] += 1
            run.states[task.id] = state
        stamp = task.state_transition_time
        if stamp is not None and (run.watermark is None or stamp > run.watermark):
            run.watermark = stamp
        status.state = {"active": "pending", "preparing": "pending"}.get(state, state)
        if task.node_info is not None:
            status.node = task.node_info.node_id or ""
        info = task.execution_info
        if info is not None:
            status.started = info.start_time.timestamp() if info.start_time else None
            status.ended = info.end_time.timestamp() if info.end_time else None
            status.exit_code = info.exit_code
            if info.last_requeue_time is not None:
                run.requeued[task.id] = info.last_requeue_time.timestamp()
            if state == "completed":
                status.failure = task_failure(info, run.submission)


def counts_agree(counts: Any, tally: Counter[str]) -> bool:
    """The job's task counts say what the client holds (Batch counts preparing tasks as running)."""
    return (counts.active, counts.running, counts.completed) == (
        tally["active"],
        tally["running"] + tally["preparing"],
        tally["completed"],
    )


def preparing_nodes(run: AzureRun) -> list[str]:
    """The nodes of the tasks preparing (resource files and, on a node that lacks it, the image)."""
    if not run.tally["preparing"]:
        return []
    return [run.tasks[tid].node for tid, state in run.states.items() if state == "preparing"]


def task_failure(info: Any, sub: TaskSubmission) -> str:
    """One line for a task that ended without the runner's own verdict; empty when the result explains."""
    failure = info.failure_info
    details = {d.name: d.value for d in (failure.details or [])} if failure is not None else {}
    if "MaxWallClockTime" in details:
        return f"the task went past its --timeout of {format_duration(sub.timeout)} and Batch ended it"
    if info.exit_code is None and failure is not None:
        return f"{failure.code}: {str(failure.message).splitlines()[0]}"
    return exit_reason(info.exit_code)


def task_stage(run: AzureRun, preparing: list[str]) -> Stage:
    """Where the run's tasks are; once one has started the run stays "running" until all are done."""
    if run.tally["completed"] >= len(run.tasks):
        return "done"
    if run.tally["running"] or run.started_task:
        return "running"
    return "preparing" if preparing else "waiting"


def tasks_status(
    run: AzureRun, stage: Stage, preparing: list[str], *, image: str, warm: set[tuple[str, str, str]], now: datetime
) -> BackendStatus | None:
    """The status the tasks' stage decides; None while no task is on a node (the pool's stage decides)."""
    tasks = run.tasks
    if stage == "done":
        return BackendStatus(phase=Phase.RUNNING, tasks=tasks, note=scale_note(run.pool, now), holding=run.holding)
    if stage == "running":
        return BackendStatus(phase=Phase.RUNNING, tasks=tasks, completed=run.tally["completed"], holding=run.holding)
    if stage == "waiting":
        return None
    # Preparing is resource files and, on a node that lacks the image, its pull: say "pulling image"
    # only for a node that really pulls (not one that prefetched it or already ran it for us).
    pulling = [n for n in preparing if image not in run.prefetched and (run.pool_id, n, image) not in warm]
    if pulling:
        detail = f"pulling {image} on the node"
        return BackendStatus(phase=Phase.PULLING_IMAGE, tasks=tasks, detail=detail, holding=run.holding)
    detail = "starting on a node that has the image"
    return BackendStatus(phase=Phase.QUEUED, tasks=tasks, detail=detail, holding=run.holding)


def warmed(run: AzureRun, image: str) -> set[tuple[str, str, str]]:
    """(pool, node, image) for the tasks read this tick that ran on a node: the image is there now."""
    return {
        (run.pool_id, task.node, image)
        for task in (run.tasks[tid] for tid in run.changed)
        if task.node and task.state in ("running", "completed")
    }


# --- the job ---


def job_verdict(job: Any, run: AzureRun) -> BackendStatus | None:
    """A job Batch could not run, or ended before its tasks did; None while it goes on."""
    info = job.execution_info
    tasks = run.tasks
    if info is not None and info.scheduling_error is not None:
        err = info.scheduling_error
        error = f"Batch could not create the pool ({err.code}: {err.message})"
        return BackendStatus(phase=Phase.FAILED, tasks=tasks, error=error)
    if value(job.state) in ("completed", "terminating") and info is not None:
        reason = info.termination_reason or ""
        if reason == "MaxWallClockTimeExpiry":
            timeout = format_duration(run.submission.timeout)
            error = f"the run went past its --timeout of {timeout} and Batch ended it"
            return BackendStatus(phase=Phase.FAILED, tasks=tasks, error=error)
        if reason and reason != "AllTasksComplete" and run.tally["completed"] < len(tasks):
            return BackendStatus(phase=Phase.FAILED, tasks=tasks, error=f"the job ended ({reason})")
    return None


# --- the pool ---


def no_pool_status(run: AzureRun) -> BackendStatus:
    """The run's pool is not there (yet): a named pool was deleted; an auto pool is still being made."""
    if run.pool is not None:
        error = f"pool {run.pool_id} was deleted while the run waited for it"
        return BackendStatus(phase=Phase.FAILED, tasks=run.tasks, error=error)
    return BackendStatus(phase=Phase.CREATING_POOL, tasks=run.tasks, holding=Holding(run.submission.vm_size))


def pool_deleted_status(run: AzureRun) -> BackendStatus:
    """A run whose named pool was deleted (or is being deleted) after its tasks had started."""
    error = (
        f"pool {run.pool_id} was deleted under the run: its tasks cannot run; create it again "
        f"(%azbatch_pool create {run.pool_id}) or run without --pool"
    )
    return BackendStatus(phase=Phase.FAILED, tasks=run.tasks, error=error)


def pool_verdict(run: AzureRun, pool: Any) -> BackendStatus | None:
    """A pool the run cannot get nodes from (being deleted, or refused its nodes); None when it can."""
    if run.pool is not None and value(pool.state) == "deleting":
        return BackendStatus(phase=Phase.FAILED, tasks=run.tasks, error=f"pool {run.pool_id} is being deleted")
    error = resize_error(pool, run.submission)
    return BackendStatus(phase=Phase.FAILED, tasks=run.tasks, error=error) if error else None


def resize_error(pool: Any, sub: TaskSubmission) -> str:
    """One line for a pool that stays at zero nodes because Batch refused them; empty otherwise."""
    errors = pool.resize_errors or []
    current = (pool.current_dedicated_nodes or 0) + (pool.current_low_priority_nodes or 0)
    if not errors or current > 0 or value(pool.allocation_state) != "steady":
        return ""
    err = errors[0]
    message = (err.message or "").split("\n")[0]
    if err.code in QUOTA_CODES:
        return quota_line(
            err.code, message, vm_size=sub.vm_size, nodes=sub.nodes, low_priority=sub.low_priority,
            cores=vm_cores(sub.vm_size),
        )  # fmt: skip
    return f"the pool could not get nodes ({err.code}: {message})"


def nodes_status(run: AzureRun, pool: Any, nodes: list[Any]) -> BackendStatus:
    """Where a run waiting for its own pool's nodes is: allocating, booting, or nodes ready."""
    if run.pool is not None:
        return named_pool_status(run, pool, nodes)
    sub, tasks, held = run.submission, run.tasks, run.holding
    unusable = [n for n in nodes if value(n.state) in _UNUSABLE]
    if unusable:
        errs = unusable[0].errors or []
        why = f"{errs[0].code}: {errs[0].message}" if errs else unusable[0].state
        error = f"the node could not start ({why}); check BATCHMAGIC_IMAGE and the registry settings"
        return BackendStatus(phase=Phase.FAILED, tasks=tasks, error=error)
    ready = sum(1 for n in nodes if value(n.state) in ("idle", "running"))
    want = sub.nodes
    if ready == 0 and value(pool.allocation_state) == "resizing" and not nodes:
        detail = f"{ready} of {want} {sub.vm_size} ready"
        return BackendStatus(phase=Phase.ALLOCATING, tasks=tasks, detail=detail, holding=held)
    if ready == 0:
        detail = f"{len(nodes)} of {want} booting, pulling the training image as they start"
        return BackendStatus(phase=Phase.NODE_STARTING, tasks=tasks, detail=detail, holding=held)
    return BackendStatus(phase=Phase.QUEUED, tasks=tasks, detail=f"{ready} of {want} nodes ready", holding=held)


def named_pool_status(run: AzureRun, pool: Any, nodes: list[Any]) -> BackendStatus:
    """Where a run waiting on a named pool is: a node of the pool free for it, or the pool growing."""
    name, named, tasks = run.pool_id, run.pool, run.tasks
    assert named is not None
    want = nodes_for(len(tasks), named.slots_per_node, named.max_nodes or len(tasks))
    ready = sum(1 for n in nodes if value(n.state) in ("idle", "running"))
    usable = [n for n in nodes if value(n.state) not in (*_UNUSABLE, "leavingpool")]
    if nodes and not usable:
        errs = nodes[0].errors or []
        why = f"{errs[0].code}: {errs[0].message}" if errs else value(nodes[0].state)
        error = f"no node of pool {name} can start ({why}); check the pool's image and registry settings"
        return BackendStatus(phase=Phase.FAILED, tasks=tasks, error=error)
    if ready:
        idle = sum(1 for n in nodes if value(n.state) == "idle")
        busy = f", {ready - idle} busy with other tasks" if ready > idle else ""
        return BackendStatus(phase=Phase.QUEUED, tasks=tasks, detail=f"pool {name}: {idle} nodes idle{busy}")
    if usable:
        pulling = ", pulling the training image as they start" if run.prefetched else ""
        detail = f"{len(usable)} of {want} nodes of pool {name} booting{pulling}"
        return BackendStatus(phase=Phase.NODE_STARTING, tasks=tasks, detail=detail)
    target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
    if target:
        detail = f"pool {name} growing to {target} {named.vm_size}"
        return BackendStatus(phase=Phase.ALLOCATING, tasks=tasks, detail=detail)
    detail = f"waiting for pool {name} to grow: its formula runs every {format_duration(named.evaluation_interval)}"
    return BackendStatus(phase=Phase.ALLOCATING, tasks=tasks, detail=detail)


def scale_note(named: Pool | None, now: datetime) -> str:
    """For a run on a named pool: about when the pool is back at zero nodes if no other task comes."""
    if named is None or not named.idle:
        return ""
    at = scale_to_zero_at(now, named.idle, named.evaluation_interval)
    return f"pool {named.name} stays warm; scales to zero at about {at:%H:%M} if no task comes"


# --- the nodes a run holds (its cost) ---


def holding_of_nodes(vm_size: str, nodes: list[Any]) -> Holding:
    """The pool's nodes, listed, by state and kind."""
    dedicated: Counter[str] = Counter()
    low: Counter[str] = Counter()
    for node in nodes:
        # A node that does not say is counted as dedicated: the dearer guess.
        (low if node.is_dedicated is False else dedicated)[value(node.state)] += 1
    return Holding(vm_size, dict(dedicated), dict(low))


def holding_of_counts(vm_size: str, pool_id: str, found: Iterable[Any]) -> Holding:
    """The pool's node counts (``list_pool_node_counts``) by state and kind."""
    entry = next((e for e in found if e.pool_id == pool_id), None)
    return Holding(
        vm_size,
        _kind_states(entry.dedicated if entry is not None else None),
        _kind_states(entry.low_priority if entry is not None else None),
    )


def _kind_states(counts: Any) -> dict[str, int]:
    """One kind's BatchNodeCounts (dedicated or low-priority) as node state -> count (``total`` left out)."""
    if counts is None:
        return {}
    data = counts.as_dict() if hasattr(counts, "as_dict") else dict(counts)
    return {str(k): int(v) for k, v in data.items() if k != "total" and isinstance(v, int) and v}


def changed_filter(watermark: datetime | None) -> str | None:
    """The ``$filter`` for the tasks whose state changed since ``watermark`` (None: read them all)."""
    if watermark is None:
        return None
    since = watermark.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"stateTransitionTime gt datetime'{since}'"


def needs_full_read(run: AzureRun, counts: Any) -> bool:
    """Read every task again: the counts disagreed with what the client holds on two ticks running (a
    change it missed), or they say every task is done while the client holds otherwise."""
    return run.disagreements >= 2 or counts.completed >= len(run.tasks) > run.tally["completed"]
