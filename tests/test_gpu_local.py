"""The local backend on a machine with an NVIDIA GPU, checked without one: the GPUs are found with a fake
nvidia-smi on PATH, a --container run's `docker run` gets them (and a large /dev/shm), a run without
--container or on a machine without GPUs does not, and a GPU run's image is planned FROM a CUDA base with
the frameworks' CUDA builds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchmagic.backends.base import TaskSubmission
from batchmagic.backends.local import LocalBackend, _container_argv, _Task
from batchmagic.errors import RunFailed
from batchmagic.package.cuda import CUDA_IMAGES, cuda_base_image
from batchmagic.package.environment import python_version
from batchmagic.package.image.plan import plan_image
from tests.support import docker as docker_parts
from tests.support.gpu import fake_nvidia_smi


def submission(**changes: object) -> TaskSubmission:
    values: dict[str, object] = dict(
        run_id="r1", name="r1", task_ids=["task-0"], spec_keys={}, vm_size="Standard_D2s_v3", timeout=60,
        image="batchmagic:env-test",
    )  # fmt: skip
    values.update(changes)
    return TaskSubmission(**values)  # type: ignore[arg-type]


def argv(tmp_path: Path, **changes: object) -> list[str]:
    task = _Task("task-0", tmp_path / "spec.json", tmp_path)
    return _container_argv(submission(**changes), task, tmp_path, tmp_path)


def test_a_gpu_machines_container_gets_every_gpu_and_a_large_shm(tmp_path: Path) -> None:
    gpu = argv(tmp_path, gpus=2, shm_size="16g")
    assert gpu[gpu.index("--gpus") + 1] == "all" and gpu[gpu.index("--shm-size") + 1] == "16g"
    assert gpu.index("--gpus") < gpu.index("batchmagic:env-test")  # docker options before the image
    cpu = argv(tmp_path)
    assert "--gpus" not in cpu and "--shm-size" not in cpu


def test_the_local_backend_finds_this_machines_gpus_only_for_container_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalBackend(tmp_path / "home")
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    assert backend.gpus("Standard_NC24ads_A100_v4", container=True) == 0  # no nvidia-smi: no GPU, whatever --vm
    monkeypatch.setenv("PATH", os.pathsep.join([str(fake_nvidia_smi(tmp_path / "bin", gpus=2)), "/usr/bin", "/bin"]))
    assert backend.gpus("Standard_D2s_v3", container=True) == 2
    assert backend.gpus("Standard_D2s_v3", container=False) == 0  # the kernel's own environment: not checked


def test_a_gpu_runs_image_is_planned_from_a_cuda_base() -> None:
    request = plan_image("local", container=True, registry="", base_image="python:3.11-slim")
    assert request is not None and not request.gpu and request.base_image == "python:3.11-slim"
    request.for_gpu("")
    assert request.gpu and request.base_image == cuda_base_image(python_version())
    assert CUDA_IMAGES["3.11"].startswith("nvidia/cuda:") and "cudnn-runtime-ubuntu22.04" in CUDA_IMAGES["3.11"]
    assert CUDA_IMAGES["3.12"].endswith("ubuntu24.04") and cuda_base_image("3.14") == "python:3.14-slim"
    request.for_gpu("myregistry.azurecr.io/cuda-base:12.6")  # AzBatch.gpu_base_image wins
    assert request.base_image == "myregistry.azurecr.io/cuda-base:12.6"


# --- through a real Docker engine (the tests' private dockerd, which has no NVIDIA runtime) ---

docker_engine = docker_parts.docker_engine
base_image = docker_parts.base_image


def test_a_gpu_machine_whose_docker_cannot_give_gpus_is_one_line(
    shell, home, docker_engine, base_image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This machine "has" a GPU (a fake nvidia-smi first on PATH), so the local --container run asks Docker for
    it (--gpus all) and builds FROM AzBatch.gpu_base_image (here the tests' base); the private dockerd has no
    NVIDIA runtime and refuses, and the run says so in one line instead of an exit code."""
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    monkeypatch.setenv("BATCHMAGIC_GPU_BASE_IMAGE", base_image)
    monkeypatch.delenv("BATCHMAGIC_REGISTRY", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(fake_nvidia_smi(tmp_path / "bin")), os.environ["PATH"]]))
    with pytest.raises(RunFailed) as info:
        shell.run_cell("%%azbatch --backend local --container --name gpu-here\nx = 1")
    message = str(info.value)
    assert "Docker could not give the container this machine's GPUs" in message and "\n" not in message
    assert "nvidia-container-toolkit" in message and "x" not in shell.user_ns
    run = shell.user_ns["_azbatch"]
    assert run.gpus == 1 and run.gpu_label == "1 GPU here"
