"""Pool autoscale through the azure-batch 15 SDK, under a fast emulated clock (--time-scale)."""

from __future__ import annotations

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
#: The documentation's scale-with-pending-tasks formula, capped at 4 nodes.
PENDING = """$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 15);
$tasks = $samples < 70 ? max(0, $PendingTasks.GetSample(1)) : max($PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 15)));
$targetVMs = $tasks > 0 ? $tasks : max(0, $TargetDedicatedNodes / 2);
$TargetDedicatedNodes = max(0, min($targetVMs, 4));
$NodeDeallocationOption = taskcompletion;"""  # noqa: E501

# 300x: a 5-minute evaluation interval takes 1 s, a 30-s allocation 0.1 s.
emulator = emulator_fixture(scope="module", allocation_delay=30, time_scale=300)


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[Any]:
    c = emulator.client()
    yield c
    c.close()


def _pool(client: Any, pool_id: str, formula: str = PENDING, interval: str = "PT5M") -> None:
    client.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=VMC,
            enable_auto_scale=True,
            auto_scale_formula=formula,
            auto_scale_evaluation_interval=timedelta(minutes=int(interval[2:-1])),
        )
    )


def test_scale_to_pending_grows_with_queued_tasks_and_shrinks_to_zero_when_idle(client: Any) -> None:
    _pool(client, "grow")
    pool = wait_for(lambda: (p := client.get_pool("grow")).auto_scale_run and p, 10)
    assert pool.enable_auto_scale and pool.auto_scale_formula == PENDING
    assert pool.auto_scale_evaluation_interval == timedelta(minutes=5)
    assert pool.auto_scale_run.results.startswith(
        "$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
    )
    client.create_job(m.BatchJobCreateOptions(id="queued", pool_info=m.BatchPoolInfo(pool_id="grow")))
    for i in range(6):
        client.create_task("queued", m.BatchTaskCreateOptions(id=f"t{i}", command_line="sleep 2"))
    grown = wait_for(lambda: (p := client.get_pool("grow")).current_dedicated_nodes == 4 and p, 20)
    assert grown.target_dedicated_nodes == 4
    assert grown.auto_scale_run.results.startswith("$TargetDedicatedNodes=4;")
    assert grown.auto_scale_run.error is None
    # taskcompletion: nodes leave only once their tasks are done, so every task succeeds once.
    wait_for(lambda: all(t.state == m.BatchTaskState.COMPLETED for t in client.list_tasks("queued")), 30)
    idle = wait_for(lambda: (p := client.get_pool("grow")).current_dedicated_nodes == 0 and p, 40)
    assert idle.target_dedicated_nodes == 0 and idle.allocation_state == m.AllocationState.STEADY
    tasks = list(client.list_tasks("queued"))
    assert {t.execution_info.result for t in tasks} == {m.BatchTaskExecutionResult.SUCCESS}
    assert all(t.execution_info.requeue_count == 0 for t in tasks)
    # Timestamps come from the scaled clock: a 2-second task took about 10 emulated minutes, and its
    # files' times are on the same clock.
    first = tasks[0].execution_info
    assert 400 < (first.end_time - first.start_time).total_seconds() < 3000
    stdout = next(f for f in client.list_task_files("queued", "t0") if f.name == "stdout.txt")
    assert abs((stdout.properties.last_modified - first.start_time).total_seconds()) < 200


def test_evaluate_enable_disable_and_errors(client: Any) -> None:
    _pool(client, "ops", formula="$TargetDedicatedNodes = 1;")
    wait_for(lambda: client.get_pool("ops").current_dedicated_nodes == 1, 10)
    run = client.evaluate_pool_auto_scale(
        "ops", m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes=3")
    )
    assert run.results == "$TargetDedicatedNodes=3;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"
    assert run.error is None and run.timestamp is not None
    assert client.get_pool("ops").target_dedicated_nodes == 1  # evaluated, not applied
    # Not enough history for 60% of ten minutes of samples: reported in the run, as the service does.
    run = client.evaluate_pool_auto_scale(
        "ops",
        m.BatchPoolEvaluateAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = 2;\n$v = $RunningTasks.GetSample(TimeInterval_Hour * 10, 60);"
        ),
    )
    assert run.error.code == "InsufficientSampleData"
    assert run.error.message == "Autoscale evaluation failed due to insufficient sample data"
    assert run.error.error_values[0].name == "Message"
    assert run.error.error_values[0].value.startswith(
        "Line 2, Col 19: Insufficient data from data set: $RunningTasks wanted 60%"
    )
    with pytest.raises(HttpResponseError) as err:
        client.evaluate_pool_auto_scale(
            "ops", m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = (1")
        )
    assert err.value.status_code == 400 and err.value.error.code == "AutoScalingFormulaSyntaxError"
    with pytest.raises(HttpResponseError) as err:
        client.enable_pool_auto_scale(
            "ops", m.BatchPoolEnableAutoScaleOptions(auto_scale_evaluation_interval=timedelta(minutes=4))
        )
    assert err.value.error.code == "InvalidPropertyValue"
    with pytest.raises(HttpResponseError) as err:
        client.enable_pool_auto_scale(
            "ops", m.BatchPoolEnableAutoScaleOptions(auto_scale_evaluation_interval=timedelta(hours=169))
        )
    assert err.value.error.code == "InvalidPropertyValue"
    with pytest.raises(HttpResponseError) as err:
        client.begin_resize_pool("ops", m.BatchPoolResizeOptions(target_dedicated_nodes=2)).result()
    assert err.value.status_code == 409
    # A new formula applies at once (the service evaluates on enable), then at every interval.
    client.enable_pool_auto_scale(
        "ops", m.BatchPoolEnableAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes=2")
    )
    wait_for(lambda: client.get_pool("ops").current_dedicated_nodes == 2, 10)
    client.disable_pool_auto_scale("ops")
    pool = client.get_pool("ops")
    assert not pool.enable_auto_scale and pool.auto_scale_formula is None and pool.target_dedicated_nodes == 2
    client.begin_resize_pool("ops", m.BatchPoolResizeOptions(target_dedicated_nodes=0), polling_interval=0).result()
    assert client.get_pool("ops").current_dedicated_nodes == 0
    with pytest.raises(HttpResponseError) as err:
        client.evaluate_pool_auto_scale("ops", m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$x=1"))
    assert err.value.status_code == 409


def test_an_auto_pool_can_autoscale(client: Any) -> None:
    spec = m.BatchPoolSpecification(
        vm_size="standard_d2s_v3",
        virtual_machine_configuration=VMC,
        enable_auto_scale=True,
        auto_scale_formula="$TargetDedicatedNodes = max(0, min($PendingTasks.GetSample(1), 2));",
        auto_scale_evaluation_interval=timedelta(minutes=5),
    )
    client.create_job(
        m.BatchJobCreateOptions(
            id="auto",
            pool_info=m.BatchPoolInfo(
                auto_pool_specification=m.BatchAutoPoolSpecification(
                    pool_lifetime_option=m.BatchPoolLifetimeOption.JOB, keep_alive=False, pool=spec
                )
            ),
        )
    )
    client.create_task("auto", m.BatchTaskCreateOptions(id="t", command_line="echo scaled"))
    done = wait_for(lambda: (t := client.get_task("auto", "t")).state == m.BatchTaskState.COMPLETED and t, 20)
    assert done.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
    pool = client.get_pool(client.get_job("auto").execution_info.pool_id)
    assert pool.enable_auto_scale and pool.auto_scale_run.results.startswith("$TargetDedicatedNodes=")
