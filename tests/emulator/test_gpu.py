"""The emulator's GPU rules: GPU sizes with their counts and quota families, retired GPU series refused,
a node's GPUs only with the NVIDIA driver, ``--gpus`` in a task's run options refused with
``ContainerInvalidSettings``, a family's quota as ``AccountVMFamilyCoreQuotaReached``, and the docker
executor passing the host's GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError

from batchmagic.emulator import Emulator, executors
from batchmagic.emulator.executors import TaskContext, docker_argv
from batchmagic.emulator.images import node_gpus, pool_gpus
from batchmagic.emulator.vmsizes import lookup
from tests.support.emulator import TEST_KEY, wait_for

HPC = {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404"}  # NvidiaTeslaDriverInstalled
PLAIN = {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server"}  # no driver


def _pool(size: str, image: dict[str, str], **vmc: object) -> dict[str, object]:
    agent = "batch.node.ubuntu 24.04"
    return {"vmSize": size, "virtualMachineConfiguration": {"imageReference": image, "nodeAgentSKUId": agent, **vmc}}


def test_gpu_sizes_have_their_counts_and_families_and_retired_series_are_refused() -> None:
    a100 = lookup("Standard_NC24ads_A100_v4")
    assert a100 is not None and (a100.gpus, a100.cores, a100.family) == (1, 24, "standardNCADSA100v4Family")
    h100 = lookup("standard_nd96isr_h100_v5")
    assert h100 is not None and (h100.gpus, h100.family) == (8, "standardNDSH100v5Family")
    assert lookup("Standard_D4s_v3").gpus == 0  # type: ignore[union-attr]
    for retired in ("Standard_NC6s_v3", "standard_nc24rs_v3", "Standard_NC6", "Standard_NC12s_v2", "Standard_ND6s"):
        assert lookup(retired) is None, retired
    assert lookup("Standard_NV12s_v3").gpus == 1  # type: ignore[union-attr]  # an N size not in the table


def test_a_node_has_gpus_only_with_the_driver_its_gpus_need() -> None:
    assert pool_gpus(_pool("Standard_ND96isr_H100_v5", HPC)) == 8
    assert pool_gpus(_pool("Standard_NC24ads_A100_v4", PLAIN)) == 0  # created and started, but no GPU in sight
    assert pool_gpus(_pool("Standard_D4s_v3", HPC)) == 0
    # NV sizes' vGPUs need GRID: the HPC image's Tesla driver is not it; the driver extension is.
    assert pool_gpus(_pool("Standard_NV36ads_A10_v5", HPC)) == 0
    extension = {"name": "gpu", "publisher": "Microsoft.HpcCompute", "type": "NvidiaGpuDriverLinux"}
    assert pool_gpus(_pool("Standard_NV36ads_A10_v5", HPC, extensions=[extension])) == 1
    custom = {"virtualMachineImageId": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/images/i"}
    assert node_gpus(_pool("Standard_NC24ads_A100_v4", custom), 1) == 1


VMC = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(**HPC), node_agent_sku_id="batch.node.ubuntu 24.04"
)


def test_gpus_in_run_options_fail_the_task_with_container_invalid_settings(tmp_path: Path) -> None:
    with Emulator(key=TEST_KEY, allocation_delay=0.1, workdir=tmp_path) as emu:
        client = BatchClient(emu.url, AzureNamedKeyCredential("devbatch", TEST_KEY))
        client.create_pool(
            m.BatchPoolCreateOptions(
                id="gpu",
                vm_size="Standard_NC24ads_A100_v4",
                virtual_machine_configuration=VMC,
                target_dedicated_nodes=1,
            )
        )
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="gpu")))
        for tid, options in (("bad", "--gpus all --shm-size 8g"), ("good", "--shm-size 8g")):
            settings = m.BatchTaskContainerSettings(image_name="img:1", container_run_options=options)
            client.create_task("j", m.BatchTaskCreateOptions(id=tid, command_line="true", container_settings=settings))
        bad = wait_for(lambda: (t := client.get_task("j", "bad")).state == m.BatchTaskState.COMPLETED and t)
        failure = bad.execution_info.failure_info
        assert failure.code == "ContainerInvalidSettings" and failure.category == m.BatchErrorSourceCategory.USER_ERROR
        assert "--gpus" in failure.details[0].value
        good = wait_for(lambda: (t := client.get_task("j", "good")).state == m.BatchTaskState.COMPLETED and t)
        assert good.execution_info.failure_info is None and good.execution_info.exit_code == 0


def test_a_retired_gpu_size_is_refused_when_the_pool_is_created(tmp_path: Path) -> None:
    with Emulator(key=TEST_KEY, allocation_delay=0.1, workdir=tmp_path) as emu:
        client = BatchClient(emu.url, AzureNamedKeyCredential("devbatch", TEST_KEY))
        with pytest.raises(HttpResponseError) as info:
            client.create_pool(
                m.BatchPoolCreateOptions(id="v100", vm_size="Standard_NC6s_v3", virtual_machine_configuration=VMC)
            )
        assert info.value.status_code == 400


def test_a_gpu_familys_quota_is_a_resize_error_naming_it(tmp_path: Path) -> None:
    quotas = {"standardNCADSA100v4Family": 24}
    with Emulator(key=TEST_KEY, allocation_delay=0.1, workdir=tmp_path, family_quotas=quotas) as emu:
        client = BatchClient(emu.url, AzureNamedKeyCredential("devbatch", TEST_KEY))
        for pool_id, nodes in (("one", 1), ("two", 2)):
            client.create_pool(
                m.BatchPoolCreateOptions(
                    id=pool_id, vm_size="Standard_NC24ads_A100_v4", virtual_machine_configuration=VMC,
                    target_dedicated_nodes=nodes,
                )
            )  # fmt: skip
        two = wait_for(lambda: (p := client.get_pool("two")).allocation_state == m.AllocationState.STEADY and p)
        (error,) = two.resize_errors
        values = {v["name"]: v["value"] for v in error.as_dict()["values"]}
        assert error.code == "AccountVMFamilyCoreQuotaReached"
        assert values["VmFamily"] == "standardNCADSA100v4Family" and values["RequestedCores"] == "48"
        assert two.current_dedicated_nodes == 0
        one = wait_for(lambda: (p := client.get_pool("one")).allocation_state == m.AllocationState.STEADY and p)
        assert one.current_dedicated_nodes == 1 and not one.resize_errors  # 24 cores: within the family's quota


def test_the_docker_executor_passes_the_hosts_gpus_to_a_gpu_nodes_containers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = TaskContext("j", "t", "p", "n", tmp_path, "python3 -m batchmagic.runner", {}, {"imageName": "img:1"}, None, 1)
    monkeypatch.setattr(executors, "host_gpus", lambda: 2)
    argv = docker_argv(ctx, "img:1", "c1")
    assert argv[argv.index("--gpus") + 1] == "all" and argv.index("--gpus") < argv.index("img:1")
    monkeypatch.setattr(executors, "host_gpus", lambda: 0)  # a host without GPUs: none to pass
    assert "--gpus" not in docker_argv(ctx, "img:1", "c1")
    monkeypatch.setattr(executors, "host_gpus", lambda: 2)
    cpu = TaskContext("j", "t", "p", "n", tmp_path, "true", {}, {"imageName": "img:1"}, None, 0)
    assert "--gpus" not in docker_argv(cpu, "img:1", "c1")  # a node without GPUs (or without the driver)
