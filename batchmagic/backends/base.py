"""The backend protocol and the status objects a poll returns.

A backend starts the tasks of a :class:`TaskSubmission` and reports on them; it talks to the runner
only through the run store (:class:`batchmagic.protocol.Layout`): each task is told the key of its
spec, and the runner does the rest.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from batchmagic.run.state import Phase
from batchmagic.storage import Store

if TYPE_CHECKING:
    from batchmagic.backends.azure.poolspec import Pool, PoolRequest

__all__ = [
    "Backend",
    "BackendStatus",
    "Holding",
    "NamedPools",
    "Phase",
    "TaskStatus",
    "TaskSubmission",
    "exit_reason",
    "format_duration",
    "STOPPED_AFTER",
]

#: How a backend words the failure of a distributed run's rank it stopped because another rank failed
#: ("stopped after rank-1 failed"): the client blames the rank that failed of itself, not these.
STOPPED_AFTER = "stopped after"


@dataclass
class TaskSubmission:
    """What a backend needs to start one run: the runner is told everything else through the spec."""

    run_id: str
    name: str
    task_ids: list[str]
    spec_keys: dict[str, str]  # task id -> store key of its spec.json
    vm_size: str
    timeout: float  # seconds
    nodes: int = 1
    low_priority: bool = False
    slots_per_node: int = 1
    image: str = ""
    retries: int = 0
    ledger_id: str = ""
    sas_expiry: datetime | None = None  # when the run's SAS URLs expire (its timeout + a grace hour)
    pool: str = ""  # a named pool to run on; empty: the backend makes the run its own pool
    #: A distributed run: ``task_ids`` are its ranks (``rank-<k>``, see batchmagic.distributed), started
    #: together, ``procs_per_node`` on each of ``nodes`` nodes; rank 0 listens on ``master_port``.
    distributed: bool = False
    procs_per_node: int = 1
    master_port: int = 6105
    #: GPUs each node has (see :meth:`Backend.gpus`): the task's container gets them, and ``shm_size`` of /dev/shm.
    gpus: int = 0
    shm_size: str = ""


@dataclass
class TaskStatus:
    task_id: str
    state: str = "pending"  # pending, running, completed
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    node: str = ""
    failure: str = ""  # a one-line reason when the task ended without a result of its own


@dataclass(frozen=True)
class Holding:
    """The nodes a run holds (its pool's), by state, dedicated and low-priority: what it costs."""

    vm_size: str
    dedicated: dict[str, int] = field(default_factory=dict)  # node state -> count
    low_priority: dict[str, int] = field(default_factory=dict)

    #: States of a node that is not billed: a preempted spot node, a deallocated one.
    UNBILLED = frozenset({"preempted", "deallocated"})

    @property
    def billed(self) -> tuple[int, int]:
        """(dedicated, low-priority) nodes that are billed now."""
        return (
            sum(n for s, n in self.dedicated.items() if s not in self.UNBILLED),
            sum(n for s, n in self.low_priority.items() if s not in self.UNBILLED),
        )

    def by_state(self) -> dict[str, int]:
        """Nodes per state, dedicated and low-priority together."""
        out: dict[str, int] = {}
        for counts in (self.dedicated, self.low_priority):
            for state, n in counts.items():
                if n:
                    out[state] = out.get(state, 0) + n
        return out


@dataclass
class BackendStatus:
    """One poll's answer.

    ``phase`` is the backend's view (queued, running, allocating...); ``error`` is set when the run
    cannot go on (quota, unknown size, job timeout...) and is one line that says what to do.
    """

    phase: Phase
    tasks: dict[str, TaskStatus]
    detail: str = ""
    error: str = ""
    note: str = ""  # what the run leaves behind, for the panel once it is done (a warm pool's scale-down)
    holding: Holding | None = None  # the nodes the run holds, where the backend knows (None: nothing to price)
    completed: int | None = None  # tasks completed, when the backend counts them (else read from ``tasks``)
    #: Ids of the tasks that changed since the previous poll, when the backend knows (None: any may have).
    changed: frozenset[str] | None = None

    @property
    def finished(self) -> bool:
        if self.error:
            return True
        if self.completed is not None:
            return self.completed >= len(self.tasks)
        return all(t.state == "completed" for t in self.tasks.values())


class Backend(ABC):
    """Runs tasks and reports on them; every resource it creates is released by :meth:`release`."""

    name: str = ""
    store: Store
    #: (first, longest) seconds between polls: fast at first, slower later.
    poll_intervals: tuple[float, float] = (0.05, 1.0)

    @property
    def default_image(self) -> str:
        """The training image runs use when none is given (``AzBatch.image``); empty when none is set."""
        return ""

    def default_slots(self, tasks: int) -> int:
        """Tasks a node runs at once when the run gives no ``--slots-per-node``: one."""
        return 1

    def gpus(self, vm_size: str, *, container: bool = True) -> int:
        """GPUs a node of ``vm_size`` gives its tasks (the runner checks it sees them, and samples them) when
        they run in a container (``container``; always so on Batch): none by default."""
        return 0

    def validate(self, submission: TaskSubmission) -> None:  # noqa: B027 - an optional hook
        """Check what can be checked before anything is uploaded or created; raise ConfigError if wrong."""

    @abstractmethod
    def submit(self, submission: TaskSubmission) -> None:
        """Create what the run needs and start its tasks."""

    @abstractmethod
    def poll(self, run_id: str) -> BackendStatus:
        """A snapshot of the run: a small, fixed number of calls however long it runs."""

    @abstractmethod
    def cancel(self, run_id: str) -> None:
        """Stop the run's tasks. Idempotent."""

    def attach(self, submission: TaskSubmission, *, take_over: bool = True) -> None:
        """Follow a run another client submitted, as if this one had: poll, cancel and release work on
        it afterwards. ``take_over``: what its client would still have done (start a local sweep's
        pending tasks) may become this one's, once that client is gone, and only for one follower at a
        time (the local backend's lease); otherwise only watch. Nothing is created."""
        raise NotImplementedError(f"the {self.name} backend cannot attach to a run")

    @abstractmethod
    def release(self, run_id: str) -> list[str]:
        """Stop the run and free whatever it still holds; return a line per thing removed. Idempotent."""

    def task_log_hint(self, run_id: str, task_id: str) -> str:
        """A phrase pointing at the task's own stderr, for when the runner never produced a result."""
        return ""

    def waited_on(self) -> AbstractContextManager[None]:
        """The calls made in this block are ones a user waits on (a teardown): the backend may give up on
        an unreachable service sooner than a run's monitor does, and say so."""
        return nullcontext()

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Let go of what this client keeps for the backend between runs (the local backend's warm worker);
        runs are not touched, and the next run makes what it needs again. Idempotent."""

    def teardown_all(self, *, blobs: bool = False) -> list[str]:
        """End what any client left behind on this backend (``blobs``: its run data too); a line per
        thing removed. A backend that keeps nothing beyond its runs removes nothing."""
        return []


class NamedPools(ABC):
    """A backend whose pools outlive runs (Azure Batch's named pools): ``%azbatch_pool`` and
    :mod:`batchmagic.pools` call these. Each reads the account: a call or two, no more."""

    @abstractmethod
    def create_pool(self, request: PoolRequest, *, client_id: str = "") -> Pool:
        """Create the pool ``request`` describes, at zero nodes; ConfigError for one that cannot work."""

    @abstractmethod
    def get_pool(self, name: str) -> Pool:
        """The pool ``name``; ConfigError when there is none."""

    @abstractmethod
    def list_pools(self) -> list[Pool]:
        """batchmagic's named pools, with their nodes by state."""

    @abstractmethod
    def resize_pool(self, name: str, nodes: int) -> Pool:
        """Hold ``nodes`` nodes now, for the pool's idle period."""

    @abstractmethod
    def delete_pool(self, name: str) -> str:
        """Delete the pool; one line saying what was removed."""


def exit_reason(code: int | None) -> str:
    """One line for a task process's exit code; empty for the runner's own codes (its result explains)."""
    if code is None or code in (0, 1, 2, 3):  # 3: the GPU preflight, which its result explains
        return ""
    if code == 143:
        return "the task was terminated (cancelled, or past its time limit)"
    if code < 0:
        try:
            return f"the task process was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the task process was killed by signal {-code}"
    return f"the task process exited with code {code}"


def format_duration(seconds: float) -> str:
    """90 -> '90s', 1800 -> '30m', 21600 -> '6h': the way --timeout is written."""
    seconds = float(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
