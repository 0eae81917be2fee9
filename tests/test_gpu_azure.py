"""A GPU run on the Azure path through the real parts (the Batch emulator, Azurite, real kernels' shell): the
requests Batch gets (size, node image, container settings, no --gpus, /dev/shm, the spec's GPUs), the
preflight through the real runner on a node whose container sees no GPU, GPU samples in the panel and the
record, and a GPU family's quota reported within two ticks. The emulator's process executor runs the
runner on this host, where a fake nvidia-smi (tests/support/gpu.py) first on its PATH stands in for the GPU."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import batchmagic
from batchmagic.errors import RunFailed
from tests.support.azurite import RunningAzurite, azurite_fixture
from tests.support.emulator import RunningEmulator, start_emulator, wait_for
from tests.support.gpu import fake_nvidia_smi, fake_torch
from tests.support.settings import use_azure

azurite = azurite_fixture()
CELL = "%%azbatch --gpu A100 --name gpu\nimport time\nopen('cell-ran', 'w').write('yes')\ntime.sleep(1.5)\nx = 41 + 1"


@pytest.fixture
def emulator(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningEmulator]:
    options = dict(getattr(request, "param", {}))
    path, env = os.environ.get("PATH", ""), {}
    if options.pop("gpu_host", True):  # a fake nvidia-smi on the "node" (this host, for the process executor)
        path = f"{fake_nvidia_smi(tmp_path / 'gpu-bin', gpus=1)}{os.pathsep}{path}"
        # and torch's CUDA build (this machine's venv may hold the CPU one, which the preflight refuses)
        torch = fake_torch(tmp_path / "site", count=1, cuda="12.6")
        env["PYTHONPATH"] = os.pathsep.join([str(torch), str(Path(batchmagic.__file__).resolve().parents[1])])
    else:  # no nvidia-smi anywhere the runner looks: a node whose container sees no GPU
        path = os.pathsep.join(p for p in path.split(os.pathsep) if not (Path(p) / "nvidia-smi").exists())
    env["PATH"] = path
    with start_emulator(tmp_path / "batch", allocation_delay=0.3, env=env, **options) as emu:
        yield emu


@pytest.fixture
def azure_env(monkeypatch, home, emulator: RunningEmulator, azurite: RunningAzurite) -> RunningEmulator:
    use_azure(monkeypatch, emulator, azurite, prefix="bmgpu")
    return emulator


def requests_to(emu: RunningEmulator, method: str, pattern: str) -> list[dict]:
    return [r for r in emu.requests() if r["method"] == method and re.fullmatch(pattern, r["path"])]


def spec_of(azurite: RunningAzurite, run) -> dict:
    blob = azurite.service().get_blob_client(run.store.container_name, f"runs/{run.id}/task-0/spec.json")
    return json.loads(blob.download_blob().readall())


def test_a_gpu_run_asks_batch_for_the_size_image_and_container_it_needs(azure_env, shell, azurite, capsys):
    shell.run_cell(CELL)
    assert shell.user_ns["x"] == 42
    run = shell.user_ns["_azbatch"]
    (create,) = requests_to(azure_env, "POST", "/jobs")
    pool = create["body"]["poolInfo"]["autoPoolSpecification"]["pool"]
    assert pool["vmSize"] == "Standard_NC24ads_A100_v4"  # the cheapest current size with an A100
    vmc = pool["virtualMachineConfiguration"]
    assert vmc["imageReference"]["offer"] == "ubuntu-hpc" and vmc["imageReference"]["sku"] == "2404"
    assert "extensions" not in vmc  # the image has the driver: no extension
    (task,) = requests_to(azure_env, "POST", f"/jobs/{run.id}/tasks")
    settings = task["body"]["containerSettings"]
    assert settings["containerRunOptions"] == "--shm-size 8g" and "--gpus" not in settings["containerRunOptions"]
    spec = spec_of(azurite, run)
    assert spec["gpus"] == 1 and spec["machine"] == "Standard_NC24ads_A100_v4"
    # The GPU in sight: samples in the run's state, peak memory and mean utilisation in the record.
    gpus = run.state().gpus
    assert gpus and gpus[0].samples and gpus[0].total_mib == 81920 and gpus[0].peak_mib > 0
    _out, err = capsys.readouterr()
    assert "1x A100 80 GB" in err


@pytest.mark.parametrize("emulator", [{"gpu_host": False}], indirect=True)
def test_a_node_whose_container_sees_no_gpu_fails_before_the_cell_in_one_line(azure_env, shell, azurite):
    shell.run_cell("x = 1")
    with pytest.raises(RunFailed) as info:
        shell.run_cell(CELL)
    message = str(info.value)
    assert "\n" not in message
    assert "GPU preflight: this Standard_NC24ads_A100_v4 node should have 1 GPU, but no nvidia-smi" in message
    assert "NvidiaTeslaDriverInstalled" in message and "The cell did not run" in message
    assert shell.user_ns["x"] == 1
    assert not list(azure_env.workdir.rglob("cell-ran"))  # the cell never ran on the node


@pytest.mark.parametrize("emulator", [{"family_quotas": {"standardNCADSA100v4Family": 0}}], indirect=True)
def test_a_gpu_familys_quota_is_reported_within_two_ticks(azure_env, shell):
    with pytest.raises(RunFailed) as info:
        shell.run_cell("%%azbatch --gpu A100:2\nx = 1")
    message = str(info.value)
    assert "AccountVMFamilyCoreQuotaReached" in message and "\n" not in message
    assert (
        "1 x Standard_NC48ads_A100_v4 (2x A100 80 GB) needs 48 dedicated cores of family standardNCADSA100v4Family"
        in message
    )
    assert "Batch account > Quotas > Request quota increase" in message
    run = shell.magics_manager.registry["AzBatch"].session.runs[-1]
    assert run.ticks <= 2
    client = azure_env.client()
    wait_for(lambda: not list(client.list_pools()), timeout=20)
