"""A 1,000-task sweep on the Azure backend: Batch calls to submit it, calls per poll tick, client CPU
per tick, counted from the Batch emulator's ``--record`` file (with Azurite for run data).

The pool's allocation is made to take longer than the measurement, so every tick sees all 1,000
tasks (pending) and the tick's cost is the steady one; then the run is torn down.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from batchmagic.api import Session
from bench.api_calls import operation as single_task_operation
from tests.support.azurite import start_azurite  # run from the repository root: `python -m bench sweep_calls`
from tests.support.emulator import start_emulator
from tests.support.settings import azure_environ

TASKS = 1000
TICKS = 10


def operation(request: dict[str, Any]) -> str:
    if request["method"] == "POST" and re.fullmatch(r"/jobs/[^/]+/addtaskcollection", request["path"]):
        return "create_task_collection"
    if request["method"] == "GET" and re.fullmatch(r"/jobs/[^/]+/tasks", request["path"]):
        return "list_tasks ($select, paged)"
    return single_task_operation(request)


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with (
            ExitStack() as stack,
            start_azurite(tmp / "azurite") as azurite,
            start_emulator(tmp / "batch", allocation_delay=3600) as emu,
        ):
            stack.enter_context(azure_environ(emu, azurite, container="bench-sweep", home=tmp / "home"))
            session = Session()
            session.backend("azure").check_access()  # once per session: not part of a submission
            before = len(emu.requests())
            started = time.perf_counter()
            run = session.submit("y = i * 2", {}, backend="azure", sweep=[{"i": i} for i in range(TASKS)])
            submit_seconds = time.perf_counter() - started
            submit_calls = Counter(operation(r) for r in emu.requests()[before:])

            tick_calls, tick_cpu = [], []
            for _ in range(TICKS):
                mark = len(emu.requests())
                cpu = time.process_time()
                run.poll()
                tick_cpu.append(time.process_time() - cpu)
                tick_calls.append(Counter(operation(r) for r in emu.requests()[mark:]))
            session.teardown()

    print(f"submit {TASKS} tasks: {sum(submit_calls.values())} Batch calls in {submit_seconds:.1f} s")
    for name, count in submit_calls.most_common():
        print(f"  {name:<28} {count}")
    totals = [sum(c.values()) for c in tick_calls]
    print(f"poll tick with {TASKS} tasks ({TICKS} ticks): {min(totals)}-{max(totals)} Batch calls")
    for name, count in sum(tick_calls, Counter()).most_common():
        print(f"  {name:<28} {count / TICKS:.1f} per tick")
    print(f"client CPU per tick: median {statistics.median(tick_cpu) * 1000:.0f} ms, max {max(tick_cpu) * 1000:.0f} ms")
    return {
        "sweep_submit_calls_1000_tasks": float(sum(submit_calls.values())),
        "sweep_submit_s_1000_tasks": submit_seconds,
        "sweep_task_collections_1000_tasks": float(submit_calls["create_task_collection"]),
    }


if __name__ == "__main__":
    main()
