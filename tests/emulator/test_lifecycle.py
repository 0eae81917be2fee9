"""Starting and stopping the emulator: in-process API, no leaked task processes, empty terminatejob jobs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential

from batchmagic.emulator import Emulator
from batchmagic.emulator.vmsizes import lookup
from tests.support.emulator import TEST_KEY, start_emulator, wait_for

VMC = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead for our purpose
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_vm_size_table() -> None:
    # The emulator's own table (the client keeps its own in batchmagic/backends/azure/vmsizes.py).
    assert lookup("Standard_D4s_v3").cores == 4
    assert lookup("standard_nc24ads_a100_v4").cores == 24
    assert lookup("standard_nc6s_v3") is None  # NCv3: retired on 2025-09-30
    assert lookup("standard_nope") is None


def test_in_process_emulator_and_state(tmp_path: Path) -> None:
    with Emulator(key=TEST_KEY, allocation_delay=0.1, workdir=tmp_path, empty_job_grace=0.3) as emu:
        client = BatchClient(emu.url, AzureNamedKeyCredential("devbatch", TEST_KEY))
        client.create_pool(
            m.BatchPoolCreateOptions(
                id="p", vm_size="standard_a1_v2", virtual_machine_configuration=VMC, target_dedicated_nodes=1
            )
        )
        assert set(emu.state.pools) == {"p"}
        client.create_job(
            m.BatchJobCreateOptions(
                id="empty",
                pool_info=m.BatchPoolInfo(pool_id="p"),
                all_tasks_complete_mode=m.BatchAllTasksCompleteMode.TERMINATE_JOB,
            )
        )
        # Like the service, a terminatejob job without tasks completes (here after empty_job_grace).
        job = wait_for(lambda: (j := client.get_job("empty")).state == m.BatchJobState.COMPLETED and j, 5)
        assert job.execution_info.termination_reason == "AllTasksComplete"
        assert emu.state.jobs["empty"].data["state"] == "completed"


def test_stopping_the_emulator_kills_running_tasks(tmp_path: Path) -> None:
    with start_emulator(tmp_path) as emu:
        client = emu.client()
        client.create_pool(
            m.BatchPoolCreateOptions(
                id="p", vm_size="standard_d2s_v3", virtual_machine_configuration=VMC, target_dedicated_nodes=1
            )
        )
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="echo $$ > ../pid; exec sleep 100"))
        wait_for(lambda: client.get_task("j", "t").state == m.BatchTaskState.RUNNING)
        # "running" can be reported a moment before the shell has written its pid.
        pid_file = wait_for(lambda: next(emu.workdir.glob("nodes/*/tasks/j/job-1/t/pid"), None))
        pid = int(wait_for(lambda: pid_file.read_text().strip()))
        assert _alive(pid)
    deadline = time.monotonic() + 30  # a hang guard for a loaded machine, not a speed check
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
