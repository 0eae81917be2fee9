"""Multi-instance tasks as the service documents them, through the azure-batch 15 SDK (process executor).

Sources: "Use multi-instance tasks to run MPI applications in Batch" (the task's lifetime, retries, the pool's
requirements), "Compute node environment variables" (``CCP_NODES``), the reference's task and subtask states,
"Batch service quotas and limits" (at most 100 nodes with inter-node communication) and "Use Spot VMs with
Batch workloads" (task submission "can remain unchanged, regardless of the VM types in the pool").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError

from tests.support.emulator import RunningEmulator, emulator_fixture, wait_for

VMC = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)

#: Two 4-core dedicated nodes with inter-node communication: every test's multi-instance task takes both.
POOL = "mi"

emulator = emulator_fixture(scope="module", allocation_delay=0.3)


@pytest.fixture(scope="module")
def pool(emulator: RunningEmulator) -> Iterator[str]:
    with emulator.client() as c:
        _pool(c, POOL, dedicated=2)
    yield POOL


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[Any]:
    c = emulator.client()
    yield c
    c.close()


def _pool(client: Any, pool_id: str, *, dedicated: int = 0, low: int = 0, slots: int = 1) -> None:
    client.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_d4s_v3",
            virtual_machine_configuration=VMC,
            target_dedicated_nodes=dedicated,
            target_low_priority_nodes=low,
            task_slots_per_node=slots,
            enable_inter_node_communication=True,
        )
    )
    wait_for(lambda: [n.state for n in client.list_nodes(pool_id)] == ["idle"] * (dedicated + low), 15)


def _job(client: Any, job_id: str, pool_id: str, prep: m.BatchJobPreparationTask | None = None) -> None:
    client.create_job(
        m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id), job_preparation_task=prep)
    )


def _multi(task_id: str, command: str, coordination: str, *, instances: int = 2, retries: int = 0) -> Any:
    return m.BatchTaskCreateOptions(
        id=task_id,
        command_line=command,
        constraints=m.BatchTaskConstraints(max_task_retry_count=retries),
        multi_instance_settings=m.MultiInstanceSettings(
            number_of_instances=instances, coordination_command_line=coordination
        ),
    )


def _done(client: Any, job_id: str, task_id: str, timeout: float = 20) -> Any:
    return wait_for(lambda: (t := client.get_task(job_id, task_id)).state == m.BatchTaskState.COMPLETED and t, timeout)


def _stdout(client: Any, job_id: str, task_id: str) -> str:
    return b"".join(client.download_task_file(job_id, task_id, "stdout.txt")).decode()


def test_the_primarys_exit_code_is_the_tasks(client: Any, pool: str) -> None:
    _job(client, "exit", pool)
    client.create_task("exit", _multi("mi", '/bin/sh -c "exit 5"', "true"))
    task = _done(client, "exit", "mi")
    assert task.execution_info.exit_code == 5
    assert task.execution_info.result == m.BatchTaskExecutionResult.FAILURE
    assert task.execution_info.failure_info.code == "FailureExitCode"
    # The subtask's coordination command succeeded: it completed with its own exit code, 0.
    (sub,) = client.list_subtasks("exit", "mi")
    assert sub.state == m.BatchSubtaskState.COMPLETED and sub.exit_code == 0


def test_a_subtasks_failed_coordination_command_fails_the_task_with_its_exit_code(client: Any, pool: str) -> None:
    _job(client, "coord-fails", pool)
    coordination = '/bin/sh -c "test $AZ_BATCH_IS_CURRENT_NODE_MASTER = true || exit 7"'
    client.create_task("coord-fails", _multi("mi", '/bin/sh -c "echo application ran"', coordination))
    task = _done(client, "coord-fails", "mi")
    assert task.execution_info.result == m.BatchTaskExecutionResult.FAILURE
    assert task.execution_info.exit_code == 7
    assert task.execution_info.failure_info.code == "FailureExitCode"
    assert "application ran" not in _stdout(client, "coord-fails", "mi")  # the primary never ran it
    (sub,) = client.list_subtasks("coord-fails", "mi")
    assert sub.state == m.BatchSubtaskState.COMPLETED and sub.exit_code == 7
    assert sub.result == m.BatchTaskExecutionResult.FAILURE


def test_a_retry_after_a_failed_coordination_command_counts(client: Any, pool: str) -> None:
    """The retry the failed coordination command causes is one of the task's: retryCount and lastRetryTime."""
    _job(client, "coord-retry", pool)
    # The subtask's first coordination fails; the retry finds the mark the first left on its node.
    mark = "$AZ_BATCH_NODE_SHARED_DIR/coord-retry-tried"
    coordination = (
        f'/bin/sh -c "test $AZ_BATCH_IS_CURRENT_NODE_MASTER = true || test -e {mark} || {{ touch {mark}; exit 4; }}"'
    )
    client.create_task("coord-retry", _multi("mi", "true", coordination, retries=2))
    task = _done(client, "coord-retry", "mi")
    info = task.execution_info
    assert info.result == m.BatchTaskExecutionResult.SUCCESS and info.exit_code == 0
    assert info.retry_count == 1
    assert info.last_retry_time is not None and info.start_time <= info.last_retry_time <= info.end_time


def test_the_tasks_wall_clock_covers_its_coordination_commands(client: Any, pool: str) -> None:
    """The task's constraints "apply to the primary and all subtasks": a subtask whose coordination command
    outlives the task's maxWallClockTime ends the task, which is not retried."""
    _job(client, "wall", pool)
    coordination = '/bin/sh -c "test $AZ_BATCH_IS_CURRENT_NODE_MASTER = true || sleep 60"'
    task = _multi("mi", "true", coordination, retries=1)
    task.constraints.max_wall_clock_time = timedelta(seconds=2)
    client.create_task("wall", task)
    done = _done(client, "wall", "mi", timeout=15)
    info = done.execution_info
    assert info.result == m.BatchTaskExecutionResult.FAILURE and info.retry_count == 0
    assert info.failure_info.code == "TaskEnded"
    assert {d.name for d in info.failure_info.details} == {"MaxWallClockTime"}
    assert (info.end_time - info.start_time).total_seconds() < 10
    assert [s.state for s in client.list_subtasks("wall", "mi")] == [m.BatchSubtaskState.COMPLETED]


def test_the_job_preparation_task_runs_on_every_node_before_the_coordination(client: Any, pool: str) -> None:
    """On every node the task runs on, the job preparation task has run before anything of the task: the task
    and its subtask are preparing meanwhile, and running (not preparing) while the coordination commands run."""
    prep = m.BatchJobPreparationTask(
        command_line='/bin/sh -c "sleep 1.5; echo $AZ_BATCH_NODE_ID > $AZ_BATCH_NODE_SHARED_DIR/prepared-here"'
    )
    _job(client, "prep", pool, prep)
    coordination = '/bin/sh -c "test -e $AZ_BATCH_NODE_SHARED_DIR/prepared-here || exit 9; sleep 2"'
    client.create_task("prep", _multi("mi", "true", coordination))
    wait_for(lambda: client.get_task("prep", "mi").state == m.BatchTaskState.PREPARING, 10)
    subs = list(client.list_subtasks("prep", "mi"))
    assert [s.state for s in subs] == [m.BatchSubtaskState.PREPARING]
    task = wait_for(lambda: (t := client.get_task("prep", "mi")).state != m.BatchTaskState.PREPARING and t, 10)
    assert task.state == m.BatchTaskState.RUNNING  # the coordination commands run (they sleep 2 s)
    (sub,) = client.list_subtasks("prep", "mi")
    assert sub.state == m.BatchSubtaskState.RUNNING and sub.previous_state == m.BatchSubtaskState.PREPARING
    task = _done(client, "prep", "mi")
    assert task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS, task.execution_info.failure_info
    ran = {
        s.node_id
        for s in client.list_job_preparation_and_release_task_status("prep")
        if s.job_preparation_task_execution_info.exit_code == 0
    }
    assert ran == {n.id for n in client.list_nodes(pool)}
    # The next task of the job waits for no preparation task: its subtask starts running.
    client.create_task("prep", _multi("again", "true", '/bin/sh -c "sleep 1"'))
    (sub,) = wait_for(lambda: list(client.list_subtasks("prep", "again")), 10)
    assert sub.state == m.BatchSubtaskState.RUNNING and sub.previous_state is None
    assert _done(client, "prep", "again").execution_info.result == m.BatchTaskExecutionResult.SUCCESS


def test_a_failed_preparation_task_on_a_subtasks_node_sends_the_task_back_to_the_queue(client: Any, pool: str) -> None:
    """The reference: "If the Job Preparation Task fails, the Task will return to active", and "Batch will not
    run Tasks of this Job on the Node": with one of the pool's two nodes out, the task waits."""
    bad = sorted(n.id for n in client.list_nodes(pool))[1]
    prep = m.BatchJobPreparationTask(command_line=f'/bin/sh -c "test $AZ_BATCH_NODE_ID != {bad}"')
    _job(client, "prep-fails", pool, prep)
    coordination = '/bin/sh -c "touch $AZ_BATCH_NODE_SHARED_DIR/prep-fails-coordinated"'
    client.create_task("prep-fails", _multi("mi", "true", coordination))
    task = wait_for(lambda: (t := client.get_task("prep-fails", "mi")).execution_info.requeue_count and t, 15)
    assert task.state == m.BatchTaskState.ACTIVE and task.node_info is None
    assert list(client.list_subtasks("prep-fails", "mi")) == []
    status = {
        s.node_id: s.job_preparation_task_execution_info
        for s in client.list_job_preparation_and_release_task_status("prep-fails")
    }
    assert status[bad].result == m.BatchTaskExecutionResult.FAILURE
    time.sleep(1)  # it is not placed again: one node is left for the job
    assert client.get_task("prep-fails", "mi").state == m.BatchTaskState.ACTIVE
    for node in client.list_nodes(pool):  # nothing of the task ran anywhere
        names = {f.name for f in client.list_node_files(pool, node.id, recursive=True)}
        assert "shared/prep-fails-coordinated" not in names


def test_ccp_nodes_gives_each_node_its_cores(client: Any, pool: str) -> None:
    _job(client, "ccp", pool)
    client.create_task("ccp", _multi("mi", '/bin/sh -c "echo $CCP_NODES; echo $AZ_BATCH_HOST_LIST"', "true"))
    task = _done(client, "ccp", "mi")
    assert task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
    ccp, hosts = _stdout(client, "ccp", "mi").splitlines()
    first, second = hosts.split(",")
    assert ccp == f"2 {first} 4 {second} 4"  # standard_d4s_v3: 4 cores a node


@pytest.mark.parametrize("instances", [0, -1, 101])
def test_number_of_instances_out_of_the_documented_range_is_refused(client: Any, pool: str, instances: int) -> None:
    job_id = f"bounds{instances}".replace("-", "m")
    _job(client, job_id, pool)
    with pytest.raises(HttpResponseError) as err:
        client.create_task(job_id, _multi("mi", "true", "true", instances=instances))
    assert err.value.status_code == 400 and err.value.error.code == "InvalidPropertyValue"
    values = {v["key"]: v["value"] for v in err.value.response.json()["values"]}
    assert values["PropertyName"] == "numberOfInstances" and values["PropertyValue"] == str(instances)
    # 100 is the most a task may ask for: accepted, it waits (active) for 100 nodes.
    client.create_task(job_id, _multi("wide", "true", "true", instances=100))
    assert client.get_task(job_id, "wide").state == m.BatchTaskState.ACTIVE


def test_a_pool_with_several_slots_per_node_leaves_a_multi_instance_task_active(client: Any) -> None:
    _pool(client, "slots", dedicated=2, slots=2)
    _job(client, "slots", "slots")
    client.create_task("slots", _multi("mi", "true", "true"))
    client.create_task("slots", m.BatchTaskCreateOptions(id="plain", command_line="true"))
    _done(client, "slots", "plain")  # the pool runs other tasks
    assert client.get_task("slots", "mi").state == m.BatchTaskState.ACTIVE
    assert list(client.list_subtasks("slots", "mi")) == []


def test_a_multi_instance_task_runs_on_spot_nodes_too(client: Any) -> None:
    """The service documents no rule keeping multi-instance tasks off Spot/low-priority nodes: job and task
    submission "can remain unchanged, regardless of the VM types in the pool" (its Spot page only warns that
    long MPI jobs suit them badly, one preempted node reruns the whole task)."""
    _pool(client, "spot", low=2)
    _job(client, "spot", "spot")
    coordination = '/bin/sh -c "echo $AZ_BATCH_NODE_IS_DEDICATED > $AZ_BATCH_TASK_SHARED_DIR/dedicated"'
    client.create_task("spot", _multi("mi", '/bin/sh -c "cat $AZ_BATCH_TASK_SHARED_DIR/dedicated"', coordination))
    task = _done(client, "spot", "mi")
    assert task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
    assert _stdout(client, "spot", "mi").split() == ["false"]
    assert [s.state for s in client.list_subtasks("spot", "mi")] == [m.BatchSubtaskState.COMPLETED]
