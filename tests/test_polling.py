"""A sweep's poll tick costs what changed, not how many tasks there are: counted in the Batch emulator's
request record at 10,000 tasks (calls, never seconds: the machine is shared)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from batchmagic.backends.azure.backend import AzureBackend
from batchmagic.backends.azure.status import AzureRun
from batchmagic.backends.base import TaskSubmission
from batchmagic.config import Settings
from tests.support.emulator import RunningEmulator, start_emulator

TASKS = 10_000


def _call(request: dict[str, Any]) -> str:
    path = request["path"]
    if path.endswith("/taskcounts"):
        return "get_job_task_counts"
    if path.endswith("/tasks"):
        return "list_tasks (filtered)" if request["query"].get("$filter") else "list_tasks (all)"
    if path.startswith("/pools/") and path.endswith("/nodes"):
        return "list_nodes"
    if path.startswith("/pools/"):
        return "get_pool"
    if path.startswith("/jobs/"):
        return "get_job"
    return f"{request['method']} {path}"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningEmulator, Any, str]]:
    """A job of 10,000 tasks on a pool that never gets a node: every task stays active until ended."""
    from azure.batch import models as m

    with start_emulator(tmp_path_factory.mktemp("polling")) as emu:
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
        client.create_job(m.BatchJobCreateOptions(id="big", pool_info=m.BatchPoolInfo(pool_id="still")))
        tasks = [m.BatchTaskCreateOptions(id=f"task-{i}", command_line="true") for i in range(TASKS)]
        client.create_tasks("big", tasks, max_concurrency=4)
        yield emu, client, "big"


def _backend(client: Any, job_id: str, tasks: int = TASKS) -> AzureBackend:
    backend = AzureBackend(client, store=None, settings=Settings())  # type: ignore[arg-type]  # poll reads no store
    submission = TaskSubmission(
        run_id=job_id,
        name=job_id,
        task_ids=[f"task-{i}" for i in range(tasks)],
        spec_keys={},
        vm_size="Standard_D2s_v3",
        timeout=3600,
    )
    backend._runs[job_id] = AzureRun(submission)
    return backend


def _tick(emu: RunningEmulator, backend: AzureBackend, job_id: str) -> tuple[Any, Counter[str]]:
    mark = len(emu.requests())
    status = backend.poll(job_id)
    return status, Counter(_call(r) for r in emu.requests()[mark:])


def test_a_tick_with_nothing_changed_at_10000_tasks_reads_no_task(sweep: tuple[RunningEmulator, Any, str]) -> None:
    emu, client, job_id = sweep
    backend = _backend(client, job_id)
    run = backend._runs[job_id]
    status, first = _tick(emu, backend, job_id)
    assert first["list_tasks (all)"] == 10  # the first tick reads the list once, 1,000 a page
    assert run.full_reads == 1 and run.tally["active"] == TASKS and status.completed == 0

    listed: list[int] = []
    real_list = backend._list_tasks
    backend._list_tasks = lambda job, filter_: listed.append(len(found := real_list(job, filter_))) or found  # type: ignore[method-assign]
    for _ in range(3):
        status, calls = _tick(emu, backend, job_id)
        assert calls == Counter(
            {"get_job": 1, "get_job_task_counts": 1, "list_tasks (filtered)": 1, "get_pool": 1, "list_nodes": 1}
        )
        assert status.phase.value == "node starting" and not status.finished
    assert listed == [0, 0, 0] and run.full_reads == 1

    # 1% of the tasks change: the next tick reads exactly those, in one page.
    for i in range(0, TASKS, 100):
        client.terminate_task(job_id, f"task-{i}")
    status, calls = _tick(emu, backend, job_id)
    assert listed[-1] == 100 and calls["list_tasks (filtered)"] == 1 and run.full_reads == 1
    assert status.completed == 100 and status.tasks["task-100"].state == "completed"
    assert status.tasks["task-101"].state == "pending"
    _, calls = _tick(emu, backend, job_id)
    assert listed[-1] == 0


def test_missed_changes_are_caught_by_the_task_counts_and_the_table_ends_complete(
    sweep: tuple[RunningEmulator, Any, str],
) -> None:
    from azure.batch import models as m

    emu, client, _ = sweep
    small = 300
    client.create_job(m.BatchJobCreateOptions(id="small", pool_info=m.BatchPoolInfo(pool_id="still")))
    client.create_tasks("small", [m.BatchTaskCreateOptions(id=f"task-{i}", command_line="true") for i in range(small)])
    backend = _backend(client, "small", small)
    run = backend._runs["small"]
    backend.poll("small")
    # Make the client miss a change: move its watermark past the transitions to come.
    client.terminate_task("small", "task-1")
    run.watermark = datetime.now(UTC) + timedelta(days=1)
    backend.poll("small")
    assert run.full_reads == 1 and run.disagreements == 1
    backend.poll("small")  # two ticks of disagreement: read everything again
    assert run.full_reads == 2 and run.tasks["task-1"].state == "completed"

    # Every task ends while the client looks away: the counts say done, so the client reads the rest.
    for i in range(small):
        client.terminate_task("small", f"task-{i}")
    run.watermark = datetime.now(UTC) + timedelta(days=1)
    status = backend.poll("small")
    assert run.full_reads == 3 and status.finished and status.completed == small
    assert all(t.state == "completed" for t in status.tasks.values())


def test_a_queued_run_polls_fast_for_a_few_ticks_then_backs_off() -> None:
    from batchmagic.run.monitor import QUEUED_FAST_TICKS, Monitor
    from batchmagic.run.state import Phase

    class Slow:
        poll_intervals = (1.0, 10.0)

    monitor = Monitor(Slow(), "run")  # type: ignore[arg-type]
    fast = [monitor.next_interval(active=False, phase=Phase.QUEUED) for _ in range(QUEUED_FAST_TICKS)]
    assert all(0.85 < pause < 1.15 for pause in fast)
    assert monitor.next_interval(active=False, phase=Phase.QUEUED) > 1.3  # then the usual backoff
    allocating = Monitor(Slow(), "run")  # type: ignore[arg-type]
    assert allocating.next_interval(active=False, phase=Phase.ALLOCATING) > 1.3


def test_the_emulator_compares_datetime_literals_as_times_whatever_their_digits() -> None:
    from batchmagic.emulator.odata import compile_filter

    after = compile_filter("stateTransitionTime gt datetime'2026-12-01T20:16:43.1234567Z'")
    assert after({"stateTransitionTime": "2026-12-01T20:16:43.123457Z"})
    assert not after({"stateTransitionTime": "2026-12-01T20:16:43.123456Z"})  # the same instant, to the µs
    assert after({"stateTransitionTime": "2026-12-01T20:16:44Z"}) and not after({})
    assert compile_filter("creationTime le datetime'2026-12-01T21:16:43+01:00'")(
        {"creationTime": "2026-12-01T20:16:43Z"}
    )


def test_a_service_that_refuses_the_filter_gets_whole_list_reads(sweep: tuple[RunningEmulator, Any, str]) -> None:
    from azure.batch import models as m

    from batchmagic.errors import ConfigError

    _, client, _ = sweep
    client.create_job(m.BatchJobCreateOptions(id="refused", pool_info=m.BatchPoolInfo(pool_id="still")))
    client.create_tasks("refused", [m.BatchTaskCreateOptions(id=f"task-{i}", command_line="true") for i in range(20)])
    backend = _backend(client, "refused", 20)
    run = backend._runs["refused"]
    real_list = backend._list_tasks

    def refusing(job: str, filter_: str | None) -> list[Any]:
        if filter_:
            raise ConfigError("Azure Batch refused to list the tasks: InvalidQueryParameterValue")
        return real_list(job, filter_)

    backend._list_tasks = refusing  # type: ignore[method-assign]
    for _ in range(3):
        status = backend.poll("refused")
    assert run.unfiltered and run.full_reads == 3 and not status.error
    assert len(status.tasks) == 20
