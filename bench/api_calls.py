"""Azure Batch API calls per poll tick and per run, as a run's cell lasts 10 s, 60 s and 10 min.

Runs ``%%azbatch``'s path (``Session.submit`` + ``Run.wait``) on the Azure backend against the Batch
emulator and Azurite, and counts the Batch requests in the emulator's ``--record`` file.

Simulated time, by scaling: the cell sleeps ``T / SCALE`` real seconds and the backend's poll intervals
(fast first, backing off to the slowest) are divided by ``SCALE`` too, so a run makes the ticks a
``T``-long run would. What is not scaled: the emulator's allocation delay and task start, and the time
a tick itself takes (a few ms against the emulator), which is why the measured ticks can fall a little
short of what the backoff schedule predicts.

A tick starts with the job read; the calls up to the next job read belong to it. Calls before the first
tick (access check, create job, add task, update job) are the run's fixed cost.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchmagic.api import Session
from batchmagic.backends.base import Phase
from tests.support.azurite import start_azurite  # run from the repository root: `python -m bench api_calls`
from tests.support.emulator import start_emulator
from tests.support.settings import azure_environ

SCALE = 10.0
LENGTHS = [10.0, 60.0, 600.0]  # simulated seconds the cell runs
ALLOCATION_DELAY = 0.5  # real seconds until the emulator's node is idle

# (method, path pattern) -> the SDK operation, in the order the table shows them.
OPERATIONS = [
    ("GET", r"/supportedimages", "list_supported_images"),
    ("POST", r"/jobs", "create_job"),
    ("POST", r"/jobs/[^/]+/tasks", "create_task"),
    ("PATCH", r"/jobs/[^/]+", "update_job"),
    ("GET", r"/jobs/[^/]+", "get_job"),
    ("GET", r"/jobs/[^/]+/tasks/[^/]+", "get_task"),
    ("GET", r"/pools/[^/]+", "get_pool"),
    ("GET", r"/pools/[^/]+/nodes", "list_nodes"),
]


def operation(request: dict[str, Any]) -> str:
    for method, pattern, name in OPERATIONS:
        if request["method"] == method and re.fullmatch(pattern, request["path"]):
            return name
    return f"{request['method']} {request['path']}"


@dataclass
class Measured:
    length: float
    ticks: int
    running_ticks: int
    fixed: list[str]  # operations before the first tick
    per_tick: list[list[str]]  # each tick's operations
    phases: list[Phase]  # what each tick reported
    tick_ms: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.fixed) + sum(len(t) for t in self.per_tick)


def predicted_ticks(seconds: float, first: float, longest: float) -> int:
    """Ticks the backoff schedule (no jitter, no output) makes while a cell runs ``seconds``."""
    elapsed, interval, ticks = 0.0, first, 0
    while elapsed < seconds:
        ticks += 1
        elapsed += interval
        interval = min(longest, interval * 1.5)
    return ticks


def measure(length: float, emulator: Any, session: Session, home: Path) -> Measured:
    backend: Any = session.backend("azure", home=home)
    first, longest = type(backend).poll_intervals
    backend.poll_intervals = (first / SCALE, longest / SCALE)
    phases: list[Phase] = []
    tick_ms: list[float] = []
    poll = backend.poll

    def timed_poll(run_id: str) -> Any:
        start = time.perf_counter()
        status = poll(run_id)
        tick_ms.append((time.perf_counter() - start) * 1000)
        phases.append(status.phase)
        return status

    backend.poll = timed_poll
    before = len(emulator.requests())
    run = session.submit(
        f"import time\ntime.sleep({length / SCALE!r})\nx = 1",
        {},
        backend=backend,
        home=home,
        vm_size="Standard_E32_v3",
        name=f"bench-{int(length)}s",
    )
    run.wait()
    time.sleep(0.2)  # the emulator records a request just after answering it
    requests = emulator.requests()[before:]
    ops = [operation(r) for r in requests]
    job_read = f"/jobs/{run.id}"
    starts = [i for i, r in enumerate(requests) if r["method"] == "GET" and r["path"] == job_read]
    per_tick = [ops[a:b] for a, b in zip(starts, starts[1:] + [len(ops)], strict=True)]
    running = sum(1 for p in phases if p is Phase.RUNNING)
    return Measured(length, run.ticks, running, ops[: starts[0]], per_tick, phases, tick_ms)


def main() -> dict[str, float]:
    results: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="bench-api-calls-") as tmp_name:
        tmp = Path(tmp_name)
        with (
            start_emulator(tmp / "batch", allocation_delay=ALLOCATION_DELAY) as emulator,
            start_azurite(tmp / "azurite") as azurite,
        ):
            with azure_environ(emulator, azurite, container="bench", home=tmp / "home"):
                for length in LENGTHS:
                    results.append(measure(length, emulator, Session(tmp / "home"), tmp / "home"))
    return report(results)


def report(results: list[Measured]) -> dict[str, float]:
    from batchmagic.backends.azure.backend import AzureBackend

    first, longest = AzureBackend.poll_intervals
    print(
        f"simulated time: scale {SCALE:g}x (cell sleeps T/{SCALE:g} real s; poll intervals {first:g}-{longest:g} s "
        f"become {first / SCALE:g}-{longest / SCALE:g} s); emulator allocation delay {ALLOCATION_DELAY:g} s real"
    )
    head = f"{'run length':>10} {'ticks':>6} {'running':>8} {'predicted':>9} {'calls':>6} {'fixed':>6} "
    head += f"{'per tick mean':>13} {'max':>4} {'ms/tick':>8}"
    print(head)
    for m in results:
        counts = [len(t) for t in m.per_tick]
        predicted = predicted_ticks(m.length, first, longest)
        print(
            f"{_length(m.length):>10} {m.ticks:>6} {m.running_ticks:>8} {predicted:>9} {m.total:>6} {len(m.fixed):>6} "
            f"{sum(counts) / len(counts):>13.2f} {max(counts):>4} {sum(m.tick_ms) / len(m.tick_ms):>8.1f}"
        )
    print(
        "running: ticks while the cell ran (its start and result upload included); predicted: ticks the backoff "
        "schedule makes in T. ms/tick is real time and not scaled, so long runs fall a little short"
    )
    print()
    names = [name for _, _, name in OPERATIONS]
    seen = {op for m in results for op in m.fixed + [o for t in m.per_tick for o in t]}
    names += sorted(seen - set(names))
    print(f"{'calls by operation':<22}" + "".join(f"{_length(m.length):>8}" for m in results))
    for name in names:
        row = [Counter(m.fixed + [o for t in m.per_tick for o in t])[name] for m in results]
        if any(row):
            print(f"{name:<22}" + "".join(f"{n:>8}" for n in row))
    print()
    print("calls per tick, by what the tick found:")
    for m in results:
        by_phase: dict[str, Counter[int]] = {}
        for phase, ops in zip(m.phases, m.per_tick, strict=False):
            by_phase.setdefault(phase.value, Counter())[len(ops)] += 1
        parts = [
            f"{phase}: " + ", ".join(f"{n} ticks x {calls}" for calls, n in sorted(c.items()))
            for phase, c in by_phase.items()
        ]
        print(f"  {_length(m.length):>6}  " + "; ".join(parts))
    steady = Counter(
        len(ops) for m in results for p, ops in zip(m.phases, m.per_tick, strict=False) if p is Phase.RUNNING
    )
    calls = steady.most_common(1)[0][0]
    print(
        f"per run: {len(results[0].fixed)} calls to start it, then {calls} per tick while the cell runs "
        f"(at most 4 before); backed off to a tick every {longest:g} s, that is {calls * 3600 / longest:.0f} "
        "Batch calls per hour of run"
    )
    before = max(
        len(ops) for m in results for p, ops in zip(m.phases, m.per_tick, strict=False) if p is not Phase.RUNNING
    )
    figures = {
        "api_calls_per_tick_running": float(calls),
        "api_calls_per_tick_before_start_max": float(before),
        "api_calls_to_start_a_run": float(len(results[0].fixed)),
        "api_calls_per_hour_backed_off": calls * 3600 / longest,
    }
    for m in results:
        figures[f"api_calls_per_run_{int(m.length)}_s"] = float(m.total)
    return figures


def _length(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


if __name__ == "__main__":
    main()
