"""On a machine with an NVIDIA GPU (``make test-gpu``; never in CI, whose machines have none): a cell that puts a
tensor on ``cuda:0``, run in its training image with the GPU, on the local backend with ``--container`` and
through the Batch emulator's docker executor, each showing GPU samples in its panel state.

Needs: the NVIDIA driver (``nvidia-smi``), Docker with the NVIDIA Container Toolkit (``docker run --gpus all``
works) on its default socket or ``DOCKER_HOST``, Docker Hub reachable (the CUDA base image), and torch in the
kernel's environment (``make test-gpu`` installs it). The images are built FROM ``AzBatch.gpu_base_image``'s
default, with the CUDA build of the kernel's torch.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchmagic.package.cuda import cuda_base_image
from batchmagic.package.environment import environment_spec, python_version
from batchmagic.package.image import ensure_image
from tests.support.azurite import RunningAzurite, azurite_fixture
from tests.support.emulator import RunningEmulator, start_emulator
from tests.support.settings import use_azure

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.timeout(3600)]
azurite = azurite_fixture()

# Long enough for several 5-second GPU samples while the tensor is in use.
CELL = """\
import time
import torch
x = torch.randn(2048, 2048, device="cuda:0")
for _ in range(40):
    y = x @ x
    time.sleep(0.3)
device = str(y.device)
total = float(y.sum().item()) * 0 + 1.0
"""


@pytest.fixture(scope="module", autouse=True)
def gpu_machine() -> None:
    """Fail (not skip) with what is missing: this module only runs when asked for with ``-m gpu``."""
    if shutil.which("nvidia-smi") is None or subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode:
        pytest.fail("make test-gpu needs an NVIDIA GPU: nvidia-smi -L does not list one")
    probe = ["docker", "run", "--rm", "--gpus", "all", cuda_base_image(python_version()), "nvidia-smi", "-L"]
    if subprocess.run(probe, capture_output=True, timeout=900).returncode:
        pytest.fail("make test-gpu needs Docker with the NVIDIA Container Toolkit: `docker run --gpus all` failed")
    pytest.importorskip("torch", reason="make test-gpu installs torch into the kernel's environment")


def _assert_gpu_samples(run: object) -> None:
    gpus = run.state().gpus  # type: ignore[attr-defined]
    assert gpus, "no GPU samples reached the panel"
    assert gpus[0].samples >= 2 and gpus[0].total_mib > 0 and gpus[0].peak_mib > 0
    assert gpus[0].mean_utilization is not None


def test_a_cell_uses_cuda_0_in_its_container_on_the_local_backend(shell, capsys) -> None:
    shell.run_cell(f"%%azbatch --backend local --container --name gpu-local\n{CELL}")
    assert shell.user_ns["device"] == "cuda:0"
    run = shell.user_ns["_azbatch"]
    _assert_gpu_samples(run)
    _out, err = capsys.readouterr()
    assert "GPU" in err


@pytest.fixture
def gpu_emulator(tmp_path: Path) -> Iterator[RunningEmulator]:
    with start_emulator(tmp_path / "batch", executor="docker", allocation_delay=0.3) as emu:
        yield emu


def test_a_cell_uses_cuda_0_through_the_emulators_docker_executor(
    monkeypatch, home, shell, gpu_emulator: RunningEmulator, azurite: RunningAzurite
) -> None:
    # The training image, in the engine the docker executor runs containers with (no registry needed).
    spec = environment_spec(["torch"], base_image=cuda_base_image(python_version()), gpu=True)
    image = ensure_image(spec, "", push=False).image
    use_azure(monkeypatch, gpu_emulator, azurite, prefix="bmgpu", image=image)
    shell.run_cell(f"%%azbatch --gpu T4 --name gpu-emulator\n{CELL}")
    assert shell.user_ns["device"] == "cuda:0"
    run = shell.user_ns["_azbatch"]
    _assert_gpu_samples(run)
    (task,) = [r for r in gpu_emulator.requests() if r["method"] == "POST" and r["path"].endswith("/tasks")]
    assert "--gpus" not in task["body"]["containerSettings"].get("containerRunOptions", "")
