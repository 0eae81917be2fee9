"""--state DIR: a restarted emulator knows its pools, nodes, jobs, tasks and schedules, and its tasks."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

from azure.batch import models as m

from tests.support.emulator import start_emulator, wait_for

VMC = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


def _pool_and_job(client: object, start_task: bool = False) -> str:
    c: object = client
    c.create_pool(  # type: ignore[attr-defined]
        m.BatchPoolCreateOptions(
            id="kept",
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=VMC,
            target_dedicated_nodes=1,
            start_task=m.BatchStartTask(command_line="true", wait_for_success=True) if start_task else None,
        )
    )
    c.create_job(m.BatchJobCreateOptions(id="job", pool_info=m.BatchPoolInfo(pool_id="kept")))  # type: ignore[attr-defined]
    node = wait_for(lambda: (n := list(c.list_nodes("kept"))) and n[0].state == "idle" and n[0], 10)  # type: ignore[attr-defined]
    return str(node.id)


def test_restart_keeps_the_account_and_requeues_running_tasks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with start_emulator(tmp_path / "first", state_dir=state) as emu:
        client = emu.client()
        node_id = _pool_and_job(client, start_task=True)
        client.create_task("job", m.BatchTaskCreateOptions(id="quick", command_line="echo kept output"))
        wait_for(lambda: client.get_task("job", "quick").state == m.BatchTaskState.COMPLETED, 10)
        client.create_task("job", m.BatchTaskCreateOptions(id="long", command_line="sleep 5; echo second run"))
        wait_for(lambda: client.get_task("job", "long").state == m.BatchTaskState.RUNNING, 10)
        client.create_pool(
            m.BatchPoolCreateOptions(
                id="scaled",
                vm_size="standard_d2s_v3",
                virtual_machine_configuration=VMC,
                enable_auto_scale=True,
                auto_scale_formula="$TargetDedicatedNodes = 0;",
                auto_scale_evaluation_interval=timedelta(minutes=5),
            )
        )
        client.create_job_schedule(
            m.BatchJobScheduleCreateOptions(
                id="nightly",
                schedule=m.BatchJobScheduleConfiguration(recurrence_interval=timedelta(days=1)),
                job_specification=m.BatchJobSpecification(pool_info=m.BatchPoolInfo(pool_id="kept")),
            )
        )
        before = client.get_pool("kept")
        first_endpoint = emu.endpoint
    # A graceful stop ends the running task as a node reboot would; the next emulator runs it again.
    with start_emulator(tmp_path / "second", state_dir=state) as emu:
        assert emu.endpoint != first_endpoint
        client = emu.client()
        pool = client.get_pool("kept")
        assert pool.creation_time == before.creation_time and pool.url == f"{emu.endpoint}/pools/kept"
        assert [n.id for n in client.list_nodes("kept")] == [node_id]
        assert client.get_pool("scaled").auto_scale_formula == "$TargetDedicatedNodes = 0;"
        assert client.get_job_schedule("nightly").schedule.recurrence_interval == timedelta(days=1)
        quick = client.get_task("job", "quick")
        assert quick.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
        assert b"".join(client.download_task_file("job", "quick", "stdout.txt")) == b"kept output\n"
        long = wait_for(lambda: (t := client.get_task("job", "long")).state == m.BatchTaskState.COMPLETED and t, 30)
        assert long.execution_info.requeue_count == 1 and long.execution_info.exit_code == 0
        assert b"".join(client.download_task_file("job", "long", "stdout.txt")) == b"second run\n"


def test_a_task_that_outlives_a_crashed_emulator_is_readopted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with start_emulator(tmp_path / "first", state_dir=state) as emu:
        client = emu.client()
        _pool_and_job(client)
        client.create_task("job", m.BatchTaskCreateOptions(id="survivor", command_line="sleep 6; echo done; exit 4"))
        wait_for(lambda: client.get_task("job", "survivor").state == m.BatchTaskState.RUNNING, 10)
        saved = state / "state.json"
        wait_for(lambda: saved.exists() and '"pid"' in saved.read_text(), 5)  # the saver has seen it run
        emu.process.send_signal(signal.SIGKILL)  # a crash: nothing is stopped, the task's process lives on
        emu.process.wait(5)
    with start_emulator(tmp_path / "second", state_dir=state) as emu:
        client = emu.client()
        assert client.get_task("job", "survivor").state == m.BatchTaskState.RUNNING  # adopted, not requeued
        task = wait_for(lambda: (t := client.get_task("job", "survivor")).state == m.BatchTaskState.COMPLETED and t, 15)  # noqa: E501
        assert task.execution_info.exit_code == 4 and task.execution_info.requeue_count == 0
        assert task.execution_info.failure_info.code == "FailureExitCode"
        assert b"".join(client.download_task_file("job", "survivor", "stdout.txt")) == b"done\n"
        assert list(client.list_nodes("kept"))[0].state == "idle"


def test_a_task_that_ends_while_the_emulator_is_down_is_not_run_again(tmp_path: Path) -> None:
    """A crash, the task's process ends before the restart: its exit code is taken, the work is done once."""
    state, counter = tmp_path / "state", tmp_path / "runs.txt"
    with start_emulator(tmp_path / "first", state_dir=state) as emu:
        client = emu.client()
        _pool_and_job(client)
        command = f"sh -c 'echo ran >> {counter}; sleep 1; echo done; exit 3'"
        client.create_task("job", m.BatchTaskCreateOptions(id="quiet", command_line=command))
        wait_for(lambda: client.get_task("job", "quiet").state == m.BatchTaskState.RUNNING, 10)
        saved = state / "state.json"
        wait_for(lambda: saved.exists() and '"pid"' in saved.read_text(), 5)
        emu.process.send_signal(signal.SIGKILL)
        emu.process.wait(5)
    # The process ends while no emulator runs: its wrapper leaves the code beside the task's directory.
    wait_for(lambda: any(p.read_text().strip() == "3" for p in (state / "work").rglob("*.exitcode")), 10)
    with start_emulator(tmp_path / "second", state_dir=state) as emu:
        client = emu.client()
        task = wait_for(lambda: (t := client.get_task("job", "quiet")).state == m.BatchTaskState.COMPLETED and t, 15)
        assert task.execution_info.exit_code == 3 and task.execution_info.requeue_count == 0
        assert task.execution_info.failure_info.code == "FailureExitCode"
        assert counter.read_text() == "ran\n"  # once: not started again after the restart
