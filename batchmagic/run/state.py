"""The client's own view of a run: its phases, the snapshot the panel draws, the records of its log.

The monitor produces these, the panel and the image code read them; nothing here talks to a backend.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from batchmagic.protocol import LogRecord

__all__ = ["Phase", "PhaseSpan", "RunState", "LogRecord", "Cost", "RankRow"]


class Phase(StrEnum):
    """Where a run is. The client sets the first four and the last three; backends report the rest."""

    PACKAGING = "packaging"
    BUILDING_IMAGE = "building image"
    PUSHING_IMAGE = "pushing image"
    UPLOADING = "uploading"
    CREATING_POOL = "creating pool"
    ALLOCATING = "allocating nodes"
    NODE_STARTING = "node starting"
    PULLING_IMAGE = "pulling image"
    QUEUED = "queued"
    RUNNING = "running"
    COLLECTING = "collecting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (Phase.DONE, Phase.FAILED, Phase.CANCELLED)


@dataclass(frozen=True)
class PhaseSpan:
    phase: Phase
    start: float
    end: float | None = None

    def duration(self, now: float | None = None) -> float:
        return (self.end if self.end is not None else (now or time.time())) - self.start


@dataclass(frozen=True)
class Cost:
    """What a run costs, estimated from the nodes it holds and the prices in force.

    ``per_hour`` and ``spent`` are ``None`` when a price is missing: unknown, never zero.
    """

    per_hour: float | None
    spent: float | None
    currency: str = "USD"
    nodes: Mapping[str, int] = field(default_factory=dict)  # nodes the run holds, by state
    budget: float | None = None
    unknown_because: str = ""  # why the price is unknown, e.g. "no price for Standard_X in eastus"

    def describe(self) -> str:
        """``cost $2.02/h (1 running) · $0.13 so far of $5.00``, or ``cost unknown: ...``."""
        from batchmagic.backends.azure.prices import format_money

        if self.per_hour is None or self.spent is None:
            return f"cost unknown: {self.unknown_because or 'no price'}"
        held = ", ".join(f"{n} {state}" for state, n in sorted(self.nodes.items()))
        line = f"cost {format_money(self.per_hour, self.currency)}/h" + (f" ({held})" if held else "")
        line += f" · {format_money(self.spent, self.currency)} so far"
        if self.budget is not None:
            line += f" of {format_money(self.budget, self.currency)}"
        return line


@dataclass(frozen=True)
class RankRow:
    """One rank of a distributed run, as the panel shows it."""

    task_id: str  # rank-<k>
    state: str  # pending, running, succeeded or failed
    node: str = ""
    last_line: str = ""  # the last line it printed


@dataclass(frozen=True)
class RunState:
    """What the panel shows: a snapshot, safe to hand to another thread."""

    run_id: str
    name: str
    backend: str
    vm_size: str
    phase: Phase
    phases: tuple[PhaseSpan, ...]
    started: float
    detail: str = ""
    error: str = ""
    task_counts: dict[str, int] = field(default_factory=dict)
    task_ids: tuple[str, ...] = ()  # a sweep's tasks, in order (empty for a single cell)
    task_states: tuple[str, ...] = ()  # pending, running, succeeded or failed, per task
    first_start: float | None = None  # when the first task started running
    cost: Cost | None = None  # None: the backend costs nothing we can price (local)
    ranks: tuple[RankRow, ...] = ()  # a distributed run's ranks, in rank order (empty for any other run)
    now: float = field(default_factory=time.time)

    @property
    def is_sweep(self) -> bool:
        return bool(self.task_ids)

    @property
    def finished_tasks(self) -> int:
        return self.task_counts.get("succeeded", 0) + self.task_counts.get("failed", 0)

    @property
    def throughput(self) -> float | None:
        """Tasks finished per minute since the first one started."""
        if self.first_start is None or not self.finished_tasks:
            return None
        return self.finished_tasks / max(self.now - self.first_start, 1e-6) * 60

    @property
    def eta(self) -> float | None:
        """Seconds until every task is done, at the throughput so far."""
        rate = self.throughput
        if not rate:
            return None
        return (len(self.task_ids) - self.finished_tasks) / rate * 60

    @property
    def elapsed(self) -> float:
        end = self.phases[-1].start if self.phase.final and self.phases else self.now
        return end - self.started

    @property
    def finished(self) -> bool:
        return self.phase.final
