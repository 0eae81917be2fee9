"""Start tasks and node operations through the azure-batch 15 SDK (process executor)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from tests.support.emulator import RunningEmulator, emulator_fixture, wait_for

VMC = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)

#: azure-batch 15.1 sends no content type with empty options (an empty model is falsy), so give one.
REQUEUE = m._models.BatchNodeRebootOptions(node_reboot_kind="requeue")

emulator = emulator_fixture(scope="module", allocation_delay=0.3)


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[Any]:
    c = emulator.client()
    yield c
    c.close()


def _pool(
    client: Any, pool_id: str, nodes: int = 1, start_task: m.BatchStartTask | None = None, *, inter_node: bool = False
) -> None:
    client.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_a1_v2",
            virtual_machine_configuration=VMC,
            target_dedicated_nodes=nodes,
            start_task=start_task,
            enable_inter_node_communication=inter_node or None,
        )
    )


def _nodes(client: Any, pool_id: str) -> list[Any]:
    return list(client.list_nodes(pool_id))


def _node_in(client: Any, pool_id: str, *states: str) -> Any:
    nodes = _nodes(client, pool_id)
    return nodes[0] if nodes and nodes[0].state in states else None


def _task(client: Any, job_id: str, task_id: str, command: str) -> None:
    client.create_task(job_id, m.BatchTaskCreateOptions(id=task_id, command_line=command))


def _job(client: Any, job_id: str, pool_id: str) -> None:
    client.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id)))


def test_start_task_runs_before_tasks_and_shares_the_startup_dir(client: Any) -> None:
    start = m.BatchStartTask(
        command_line='/bin/sh -c "sleep 1; echo ready > $AZ_BATCH_NODE_STARTUP_DIR/marker; echo $GREETING"',
        environment_settings=[m.EnvironmentSetting(name="GREETING", value="hello from the start task")],
        wait_for_success=True,
    )
    _pool(client, "st-ok", start_task=start)
    waiting = wait_for(lambda: _node_in(client, "st-ok", "waitingforstarttask"), 10)
    assert waiting.start_task_info.state == m.BatchStartTaskState.RUNNING
    node = wait_for(lambda: _node_in(client, "st-ok", "idle"), 10)
    info = node.start_task_info
    assert info.state == m.BatchStartTaskState.COMPLETED and info.exit_code == 0 and info.retry_count == 0
    assert info.result == m.BatchTaskExecutionResult.SUCCESS and info.end_time >= info.start_time
    out = b"".join(client.download_node_file("st-ok", node.id, "startup/stdout.txt"))
    assert out == b"hello from the start task\n"
    _job(client, "st-ok-job", "st-ok")
    _task(client, "st-ok-job", "reader", '/bin/sh -c "cat $AZ_BATCH_NODE_STARTUP_DIR/marker"')
    wait_for(lambda: client.get_task("st-ok-job", "reader").state == m.BatchTaskState.COMPLETED, 10)
    assert b"".join(client.download_task_file("st-ok-job", "reader", "stdout.txt")) == b"ready\n"


def test_the_nodes_shared_dir_is_open_to_every_task_user_and_sticky(client: Any) -> None:
    """Every task, whichever user it runs as, creates files in the node's shared directory; the sticky bit
    (as /tmp) keeps a task user from renaming or removing another user's entries there."""
    _pool(client, "sh")
    wait_for(lambda: _node_in(client, "sh", "idle"), 10)
    _job(client, "sh-job", "sh")
    _task(client, "sh-job", "mode", '/bin/sh -c "stat -c %a $AZ_BATCH_NODE_SHARED_DIR"')
    wait_for(lambda: client.get_task("sh-job", "mode").state == m.BatchTaskState.COMPLETED, 10)
    assert b"".join(client.download_task_file("sh-job", "mode", "stdout.txt")) == b"1777\n"


def test_failing_start_task_with_wait_for_success_leaves_the_node_unused(client: Any) -> None:
    start = m.BatchStartTask(command_line="/bin/sh -c 'exit 3'", wait_for_success=True, max_task_retry_count=2)
    _pool(client, "st-bad", start_task=start)
    node = wait_for(lambda: _node_in(client, "st-bad", "starttaskfailed"), 10)
    info = node.start_task_info
    assert info.exit_code == 3 and info.retry_count == 2 and info.result == m.BatchTaskExecutionResult.FAILURE
    assert info.failure_info.code == "FailureExitCode" and info.failure_info.category == "usererror"
    _job(client, "st-bad-job", "st-bad")
    _task(client, "st-bad-job", "never", "true")
    time.sleep(1.0)
    assert client.get_task("st-bad-job", "never").state == m.BatchTaskState.ACTIVE  # no node takes it
    # Without waitForSuccess the node is idle at once and tasks run whatever the start task does.
    _pool(
        client,
        "st-nowait",
        start_task=m.BatchStartTask(command_line="/bin/sh -c 'sleep 1; exit 3'", wait_for_success=False),
    )
    node = wait_for(lambda: _node_in(client, "st-nowait", "idle"), 10)
    assert node.start_task_info.state == m.BatchStartTaskState.RUNNING
    node = wait_for(lambda: (n := _nodes(client, "st-nowait")[0]).start_task_info.exit_code == 3 and n, 10)
    assert node.state == m.BatchNodeState.IDLE


def test_reboot_requeues_running_tasks_and_reruns_the_start_task(client: Any) -> None:
    _pool(client, "rb", start_task=m.BatchStartTask(command_line="true", wait_for_success=True))
    first = wait_for(lambda: _node_in(client, "rb", "idle"), 10)
    _job(client, "rb-job", "rb")
    _task(client, "rb-job", "long", "sleep 4")
    wait_for(lambda: client.get_task("rb-job", "long").state == m.BatchTaskState.RUNNING, 10)
    client.begin_reboot_node("rb", first.id, REQUEUE, polling_interval=0).result()
    task = client.get_task("rb-job", "long")
    assert task.execution_info.requeue_count == 1
    node = wait_for(lambda: _node_in(client, "rb", "idle", "running"), 10)
    assert node.id == first.id and node.last_boot_time > first.last_boot_time
    assert node.start_task_info.start_time > first.start_task_info.start_time
    done = wait_for(lambda: (t := client.get_task("rb-job", "long")).state == m.BatchTaskState.COMPLETED and t, 30)
    assert done.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
    with pytest.raises(ResourceNotFoundError):
        client.begin_reboot_node("rb", "tvmps_nope", REQUEUE, polling_interval=0).result()


def test_reimage_terminate_ends_running_tasks(client: Any) -> None:
    _pool(client, "ri")
    node = wait_for(lambda: _node_in(client, "ri", "idle"), 10)
    _job(client, "ri-job", "ri")
    _task(client, "ri-job", "long", "sleep 30")
    wait_for(lambda: client.get_task("ri-job", "long").state == m.BatchTaskState.RUNNING, 10)
    client.begin_reimage_node(
        "ri", node.id, m._models.BatchNodeReimageOptions(node_reimage_option="terminate"), polling_interval=0
    ).result()
    task = wait_for(lambda: (t := client.get_task("ri-job", "long")).state == m.BatchTaskState.COMPLETED and t, 10)
    assert task.execution_info.result == m.BatchTaskExecutionResult.FAILURE
    assert task.execution_info.failure_info.code == "TaskEnded"
    assert wait_for(lambda: _node_in(client, "ri", "idle"), 10)


def test_disable_scheduling_taskcompletion_then_enable(client: Any) -> None:
    _pool(client, "ds")
    node = wait_for(lambda: _node_in(client, "ds", "idle"), 10)
    _job(client, "ds-job", "ds")
    _task(client, "ds-job", "first", "sleep 1")
    wait_for(lambda: client.get_task("ds-job", "first").state == m.BatchTaskState.RUNNING, 10)
    client.disable_node_scheduling(
        "ds", node.id, m.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option="taskcompletion")
    )
    assert client.get_node("ds", node.id).scheduling_state == m.SchedulingState.DISABLED
    with pytest.raises(HttpResponseError) as err:
        client.disable_node_scheduling(
            "ds", node.id, m.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option="requeue")
        )
    assert err.value.status_code == 409 and err.value.error.code == "NodeAlreadyInTargetSchedulingState"
    _task(client, "ds-job", "second", "true")
    first = wait_for(lambda: (t := client.get_task("ds-job", "first")).state == m.BatchTaskState.COMPLETED and t, 10)
    assert first.execution_info.result == m.BatchTaskExecutionResult.SUCCESS  # allowed to finish
    assert client.get_task("ds-job", "second").state == m.BatchTaskState.ACTIVE
    client.enable_node_scheduling("ds", node.id)
    wait_for(lambda: client.get_task("ds-job", "second").state == m.BatchTaskState.COMPLETED, 10)


def test_remove_nodes_and_node_users(client: Any) -> None:
    _pool(client, "rm", nodes=2)
    wait_for(lambda: len([n for n in _nodes(client, "rm") if n.state == "idle"]) == 2, 10)
    node = _nodes(client, "rm")[0]
    client.create_node_user("rm", node.id, m.BatchNodeUserCreateOptions(name="alice", is_admin=True, password="pw"))
    with pytest.raises(HttpResponseError) as err:
        client.create_node_user("rm", node.id, m.BatchNodeUserCreateOptions(name="alice"))
    assert err.value.status_code == 409 and err.value.error.code == "NodeUserExists"
    client.replace_node_user("rm", node.id, "alice", m.BatchNodeUserReplaceOptions(password="new"))
    client.delete_node_user("rm", node.id, "alice")
    with pytest.raises(HttpResponseError) as err:
        client.delete_node_user("rm", node.id, "alice")
    assert err.value.status_code == 404 and err.value.error.code == "NodeUserNotFound"
    client.begin_remove_nodes("rm", m.BatchNodeRemoveOptions(node_ids=[node.id]), polling_interval=0).result()
    pool = client.get_pool("rm")
    assert pool.target_dedicated_nodes == 1 and pool.current_dedicated_nodes == 1
    assert [n.id for n in _nodes(client, "rm")] != [node.id] and len(_nodes(client, "rm")) == 1


def test_multi_instance_task_runs_on_several_nodes(client: Any) -> None:
    _pool(client, "mpi", nodes=3, inter_node=True)
    wait_for(lambda: len([n for n in _nodes(client, "mpi") if n.state == "idle"]) == 3, 10)
    _job(client, "mpi-job", "mpi")
    coordination = (
        '/bin/sh -c "echo $AZ_BATCH_IS_CURRENT_NODE_MASTER $AZ_BATCH_HOST_LIST > $AZ_BATCH_TASK_SHARED_DIR/coord.txt"'
    )
    primary = (
        '/bin/sh -c "sleep 3; echo $AZ_BATCH_MASTER_NODE $AZ_BATCH_IS_CURRENT_NODE_MASTER; '
        'cat $AZ_BATCH_TASK_SHARED_DIR/coord.txt; echo \\"$AZ_BATCH_NODE_LIST\\"; echo $CCP_NODES"'
    )
    client.create_task(
        "mpi-job",
        m.BatchTaskCreateOptions(
            id="mpi",
            command_line=primary,
            multi_instance_settings=m.MultiInstanceSettings(
                number_of_instances=3, coordination_command_line=coordination
            ),
        ),
    )
    client.create_task(
        "mpi-job",
        m.BatchTaskCreateOptions(
            id="too-wide",
            command_line="true",
            multi_instance_settings=m.MultiInstanceSettings(number_of_instances=4, coordination_command_line="true"),
        ),
    )
    wait_for(lambda: {n.state for n in _nodes(client, "mpi")} == {"running"}, 10)  # all three held
    task = wait_for(lambda: (t := client.get_task("mpi-job", "mpi")).state == m.BatchTaskState.COMPLETED and t, 15)
    assert task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
    ips = {n.id: n.ip_address for n in _nodes(client, "mpi")}
    primary_ip = ips[task.node_info.node_id]
    hosts = [primary_ip] + [ip for nid, ip in ips.items() if nid != task.node_info.node_id]
    out = b"".join(client.download_task_file("mpi-job", "mpi", "stdout.txt")).decode().splitlines()
    assert out[0] == f"{primary_ip}:6000 true"
    assert out[1].split()[0] == "true" and set(out[1].split()[1].split(",")) == set(hosts)
    subtasks = list(client.list_subtasks("mpi-job", "mpi"))
    assert [s.id for s in subtasks] == [1, 2]
    assert {s.node_info.node_id for s in subtasks} == set(ips) - {task.node_info.node_id}
    assert all(s.state == m.BatchSubtaskState.COMPLETED and s.exit_code == 0 for s in subtasks)
    sub_node = subtasks[0].node_info.node_id
    coord = b"".join(client.download_node_file("mpi", sub_node, "tasks/mpi-job/job-1/mpi/coord.txt")).decode()
    assert coord.split()[0] == "false"
    assert client.get_task("mpi-job", "too-wide").state == m.BatchTaskState.ACTIVE  # waits for a 4th node
    assert list(client.list_subtasks("mpi-job", "too-wide")) == []
    # The nodes' addresses are loopback addresses of their own, and every instance sees the service's lists.
    assert all(ip.startswith("127.") and ip != "127.0.0.1" for ip in ips.values()) and len(set(ips.values())) == 3
    assert out[2:] == [f"{';'.join(out[1].split()[1].split(','))}", f"3 {' 1 '.join(out[1].split()[1].split(','))} 1"]


def test_multi_instance_task_stays_active_on_a_pool_without_inter_node_communication(client: Any) -> None:
    _pool(client, "no-ib", nodes=2)
    wait_for(lambda: len([n for n in _nodes(client, "no-ib") if n.state == "idle"]) == 2, 10)
    _job(client, "no-ib-job", "no-ib")
    multi = m.MultiInstanceSettings(number_of_instances=2, coordination_command_line="true")
    client.create_task(
        "no-ib-job", m.BatchTaskCreateOptions(id="mi", command_line="true", multi_instance_settings=multi)
    )
    client.create_task("no-ib-job", m.BatchTaskCreateOptions(id="plain", command_line="true"))
    wait_for(lambda: client.get_task("no-ib-job", "plain").state == m.BatchTaskState.COMPLETED, 10)
    assert client.get_task("no-ib-job", "mi").state == m.BatchTaskState.ACTIVE
    with pytest.raises(HttpResponseError) as err:
        client.create_task(
            "no-ib-job",
            m.BatchTaskCreateOptions(id="wide", command_line="true", required_slots=2, multi_instance_settings=multi),
        )
    assert err.value.status_code == 400


@pytest.mark.parametrize("option", ["requeue", "terminate"])
def test_shrinking_a_pool_requeues_or_terminates_running_tasks(client: Any, option: str) -> None:
    pool_id = f"shrink-{option}"
    _pool(client, pool_id)
    wait_for(lambda: _node_in(client, pool_id, "idle"), 10)
    _job(client, pool_id, pool_id)
    _task(client, pool_id, "long", "sleep 30")
    wait_for(lambda: client.get_task(pool_id, "long").state == m.BatchTaskState.RUNNING, 10)
    client.begin_resize_pool(
        pool_id, m.BatchPoolResizeOptions(target_dedicated_nodes=0, node_deallocation_option=option), polling_interval=0
    ).result()
    assert client.get_pool(pool_id).current_dedicated_nodes == 0 and _nodes(client, pool_id) == []
    task = client.get_task(pool_id, "long")
    if option == "requeue":
        assert task.state == m.BatchTaskState.ACTIVE and task.execution_info.requeue_count == 1
    else:
        assert task.state == m.BatchTaskState.COMPLETED and task.execution_info.failure_info.code == "TaskEnded"


def test_a_retried_multi_instance_task_runs_every_instance_again(client: Any) -> None:
    _pool(client, "retry-mi", nodes=2, inter_node=True)
    wait_for(lambda: len([n for n in _nodes(client, "retry-mi") if n.state == "idle"]) == 2, 10)
    _job(client, "retry-mi-job", "retry-mi")
    coordination = '/bin/sh -c "echo coordinated >> $AZ_BATCH_NODE_SHARED_DIR/coordinations.txt"'
    # The first attempt fails; the retry finds the mark the first left on the primary's shared directory.
    primary = (
        '/bin/sh -c "test -e $AZ_BATCH_NODE_SHARED_DIR/tried || { touch $AZ_BATCH_NODE_SHARED_DIR/tried; exit 3; }"'
    )
    client.create_task(
        "retry-mi-job",
        m.BatchTaskCreateOptions(
            id="mi",
            command_line=primary,
            constraints=m.BatchTaskConstraints(max_task_retry_count=1),
            multi_instance_settings=m.MultiInstanceSettings(
                number_of_instances=2, coordination_command_line=coordination
            ),
        ),
    )
    task = wait_for(lambda: (t := client.get_task("retry-mi-job", "mi")).state == m.BatchTaskState.COMPLETED and t, 20)
    assert task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS and task.execution_info.retry_count == 1
    for node in _nodes(client, "retry-mi"):
        text = b"".join(client.download_node_file("retry-mi", node.id, "shared/coordinations.txt")).decode()
        assert text.split() == ["coordinated", "coordinated"], node.id  # both instances, both attempts
