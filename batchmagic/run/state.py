"""The client's own view of a run: its phases, the snapshot the panel draws, the records of its log.

The monitor produces these, the panel and the image code read them; nothing here talks to a backend.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from batchmagic.protocol import LogRecord

__all__ = ["Phase", "PhaseSpan", "RunState", "LogRecord", "Cost", "GpuView", "GpuTracker", "sparkline", "RankRow"]

_BARS = "▁▂▃▄▅▆▇█"
#: Samples of each GPU the panel keeps for its sparkline (at 5 s apart: the last few minutes).
GPU_WINDOW = 40


def sparkline(values: tuple[float | None, ...], top: float = 100.0) -> str:
    """``(0, 50, 100)`` -> ``"▁▅█"``: one bar per value out of ``top``; an unknown value is a space."""
    out = []
    for value in values:
        if value is None:
            out.append(" ")
            continue
        level = max(0.0, min(1.0, value / top if top else 0.0))
        out.append(_BARS[round(level * (len(_BARS) - 1))])
    return "".join(out)


@dataclass(frozen=True)
class GpuView:
    """One GPU of a run as the panel and the record show it: its recent samples, its peak memory and its
    mean utilisation over the whole run (a starved GPU shows a low mean and a gappy sparkline)."""

    index: int
    task_id: str
    utilization: tuple[float | None, ...]  # the last GPU_WINDOW samples, percent
    memory_mib: tuple[int, ...]  # the same samples' memory used
    total_mib: int
    peak_mib: int
    mean_utilization: float | None
    samples: int  # all samples taken

    def describe(self) -> str:
        """``GPU 0 ▁▃▇█▆ 97% · 12.3 of 80.0 GB, peak 14.1 GB · mean 71%``."""
        now = self.utilization[-1] if self.utilization else None
        used = self.memory_mib[-1] if self.memory_mib else 0
        line = f"GPU {self.index} {sparkline(self.utilization)} {_percent(now)}"
        line += f" · {used / 1024:.1f} of {self.total_mib / 1024:.1f} GB, peak {self.peak_mib / 1024:.1f} GB"
        return line + f" · mean {_percent(self.mean_utilization)}"

    def summary(self) -> str:
        """What the record keeps: ``GPU 0: peak 14.1 of 80.0 GB, mean utilisation 71% (120 samples)``."""
        return (
            f"GPU {self.index}: peak {self.peak_mib / 1024:.1f} of {self.total_mib / 1024:.1f} GB, mean utilisation "
            f"{_percent(self.mean_utilization)} ({self.samples} samples)"
        )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


@dataclass
class _Track:
    utilization: list[float | None] = field(default_factory=list)
    memory: list[int] = field(default_factory=list)
    total: int = 0
    peak: int = 0
    util_sum: float = 0.0
    util_count: int = 0
    samples: int = 0


class GpuTracker:
    """The GPU samples a run's runners sent (progress records ``{"phase": "gpu", "gpus": [[i, util, used, total]]}``),
    per task and GPU: the recent ones, the peak memory and the utilisation's running mean."""

    def __init__(self) -> None:
        self._gpus: dict[tuple[str, int], _Track] = {}

    def add(self, task_id: str, rows: list[list[float | None]]) -> None:
        """Take one sample set; rows that are not ``[index, util, used, total]`` are skipped."""
        for row in rows:
            if len(row) < 4 or row[0] is None:
                continue
            util = None if row[1] is None else float(row[1])
            used, total = int(row[2] or 0), int(row[3] or 0)
            track = self._gpus.setdefault((task_id, int(row[0])), _Track())
            track.utilization = [*track.utilization, util][-GPU_WINDOW:]
            track.memory = [*track.memory, used][-GPU_WINDOW:]
            track.total, track.peak, track.samples = total, max(track.peak, used), track.samples + 1
            if util is not None:
                track.util_sum, track.util_count = track.util_sum + util, track.util_count + 1

    def views(self) -> tuple[GpuView, ...]:
        """Every GPU seen, by task and index."""
        return tuple(
            GpuView(
                index,
                task_id,
                tuple(t.utilization),
                tuple(t.memory),
                t.total,
                t.peak,
                t.util_sum / t.util_count if t.util_count else None,
                t.samples,
            )  # fmt: skip
            for (task_id, index), t in sorted(self._gpus.items())
        )


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
    state: str  # pending, running, succeeded, failed, or stopped (ended because another rank failed)
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
    gpus: tuple[GpuView, ...] = ()  # the GPUs' samples so far (runs on a GPU machine)
    gpu: str = ""  # what GPUs each node has, e.g. "1x A100 80 GB" (empty: none, or not known)
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
