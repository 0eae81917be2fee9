"""A sweep's poll tick at 1,000 and 10,000 tasks, nothing changed and 1% changed: Batch calls (from the
emulator's ``--record`` file) and client CPU (``time.process_time`` around ``Run.poll``), side by side
with the whole-list read every tick did before (the same tick, made to read the whole list again).

The job runs on a pool that never gets a node, so its tasks stay active until the benchmark ends some
(``terminate_task``): that is the "1% changed". The run is the client's own :class:`~batchmagic.run.run.Run`
around the Azure backend, so the CPU is the whole tick the notebook's main thread pays (backend, task
states, the snapshot the panel draws).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from batchmagic.backends.azure.backend import AzureBackend
from batchmagic.backends.azure.status import AzureRun
from batchmagic.backends.base import TaskSubmission
from batchmagic.config import Settings
from batchmagic.run.run import Run
from batchmagic.storage import LocalStore
from tests.support.emulator import RunningEmulator, start_emulator  # run from the repository root

SIZES = (1000, 10_000)
TICKS = 5


def _calls(requests: list[dict[str, Any]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in requests:
        path = r["path"]
        if path.endswith("/taskcounts"):
            out["get_job_task_counts"] += 1
        elif path.endswith("/tasks"):
            out["list_tasks" + (" ($filter)" if r["query"].get("$filter") else "")] += 1
        elif path.startswith("/pools/"):
            out["get_pool" if path.count("/") == 2 else "list_nodes"] += 1
        else:
            out[f"{r['method']} {path.split('/')[1]}"] += 1
    return out


def _setup(emu: RunningEmulator, client: Any, job_id: str, tasks: int) -> None:
    from azure.batch import models as m

    client.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id="still")))
    client.create_tasks(
        job_id, [m.BatchTaskCreateOptions(id=f"task-{i}", command_line="true") for i in range(tasks)], max_concurrency=4
    )


def _run(client: Any, job_id: str, tasks: int, store: LocalStore) -> tuple[Run, AzureRun]:
    backend = AzureBackend(client, store, Settings())  # type: ignore[arg-type]  # a sweep's tick reads no blob
    task_ids = [f"task-{i}" for i in range(tasks)]
    submission = TaskSubmission(job_id, job_id, task_ids, {}, "Standard_D2s_v3", 3600)
    state = backend._runs[job_id] = AzureRun(submission)  # noqa: SLF001 - what submit would have made
    run = Run(
        run_id=job_id, name=job_id, backend=backend, vm_size="Standard_D2s_v3", timeout=3600, task_ids=task_ids,
        params=[{"i": i} for i in range(tasks)],
    )  # fmt: skip
    return run, state


def _ticks(emu: RunningEmulator, run: Run, state: AzureRun, *, whole_list: bool) -> tuple[list[float], list[int]]:
    cpu, calls = [], []
    for _ in range(TICKS):
        if whole_list:
            state.synced = False  # as before: every tick reads the whole list
        mark = len(emu.requests())
        start = time.process_time()
        run.poll()
        cpu.append((time.process_time() - start) * 1000)
        calls.append(sum(_calls(emu.requests()[mark:]).values()))
    return cpu, calls


def measure() -> dict[str, float]:
    """Every figure, by its stable name."""
    from azure.batch import models as m

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ticks-") as tmp_name:
        tmp = Path(tmp_name)
        with start_emulator(tmp / "batch") as emu:
            client = emu.client()
            client.create_pool(
                m.BatchPoolCreateOptions(
                    id="still",
                    vm_size="Standard_D2s_v3",
                    virtual_machine_configuration=m.VirtualMachineConfiguration(
                        image_reference=m.BatchVmImageReference(
                            publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204", version="latest"
                        ),
                        node_agent_sku_id="batch.node.ubuntu 22.04",
                    ),
                    target_dedicated_nodes=0,
                )
            )
            store = LocalStore(tmp / "store")
            for tasks in SIZES:
                job_id = f"sweep-{tasks}"
                _setup(emu, client, job_id, tasks)
                run, state = _run(client, job_id, tasks, store)
                run.poll()  # the first tick reads the whole list once
                cpu, calls = _ticks(emu, run, state, whole_list=False)
                figures[f"tick_cpu_ms_{tasks}_tasks"] = statistics.median(cpu)
                figures[f"tick_calls_{tasks}_tasks"] = max(calls)
                old_cpu, old_calls = _ticks(emu, run, state, whole_list=True)
                figures[f"tick_cpu_ms_{tasks}_tasks_whole_list"] = statistics.median(old_cpu)
                figures[f"tick_calls_{tasks}_tasks_whole_list"] = max(old_calls)
                changed_cpu, changed_calls = [], []
                for round_ in range(TICKS):  # 1% of the tasks end before each tick
                    for i in range(round_, tasks, 100):
                        client.terminate_task(job_id, f"task-{i}")
                    mark = len(emu.requests())
                    start = time.process_time()
                    run.poll()
                    changed_cpu.append((time.process_time() - start) * 1000)
                    changed_calls.append(sum(_calls(emu.requests()[mark:]).values()))
                figures[f"tick_cpu_ms_{tasks}_tasks_1pct_changed"] = statistics.median(changed_cpu)
                figures[f"tick_calls_{tasks}_tasks_1pct_changed"] = max(changed_calls)
                assert state.tally["completed"] == TICKS * tasks // 100, state.tally
    return figures


def report(figures: dict[str, float]) -> None:
    print(f"{'tasks':>7} {'tick':<34} {'calls':>6} {'client CPU':>11}")
    for tasks in SIZES:
        for suffix, what in (
            ("", "nothing changed"),
            ("_1pct_changed", "1% changed"),
            ("_whole_list", "nothing changed, whole list (before)"),
        ):
            calls = figures[f"tick_calls_{tasks}_tasks{suffix}"]
            cpu = figures[f"tick_cpu_ms_{tasks}_tasks{suffix}"]
            print(f"{tasks:>7,} {what:<34} {calls:>6.0f} {cpu:>8.1f} ms")
    print(
        "a tick: the job, its task counts, the tasks changed since the last one ($filter on stateTransitionTime), "
        "and the pool and its nodes while no task has started"
    )


def main() -> dict[str, float]:
    figures = measure()
    report(figures)
    return figures


if __name__ == "__main__":
    main()
