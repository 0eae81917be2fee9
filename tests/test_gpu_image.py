"""A GPU run's training image through the real parts, on a machine without a GPU: a GPU spec built FROM
AzBatch.gpu_base_image (here the tests' Debian base: Docker Hub is out of reach) into the private dockerd, and
run by the Batch emulator's docker executor on a Standard_NC4as_T4_v3 node. This host has no GPU, so the
container sees none, and the runner's preflight, inside the real training image, ends the task before the
cell runs: one line in the notebook, as on a node whose driver or container toolkit is missing."""

from __future__ import annotations

import json

import pytest

from batchmagic.errors import RunFailed
from batchmagic.package.environment import LABEL, EnvironmentSpec, environment_spec
from batchmagic.package.image import ensure_image
from tests.support.azurite import azurite_fixture
from tests.support.settings import use_azure
from tests.test_image import base_image, docker_emulator, docker_engine

__all__ = ["base_image", "docker_emulator", "docker_engine"]
azurite = azurite_fixture()


@pytest.mark.slow
def test_a_gpu_image_runs_its_preflight_in_the_container_and_the_cell_never_runs(
    docker_engine, docker_emulator, azurite, base_image, home, shell, monkeypatch
):
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    # The GPU image, in the engine the docker executor runs containers with: no registry, no push.
    spec = environment_spec(["tabulate"], base_image=base_image, gpu=True)
    image = ensure_image(spec, "", push=False).image
    labels = docker_engine.run("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout.decode()
    assert EnvironmentSpec.from_json(json.loads(labels)[LABEL]).gpu
    use_azure(monkeypatch, docker_emulator, azurite, prefix="bmgpuimg", image=image)
    shell.run_cell("x = 1")
    with pytest.raises(RunFailed) as info:
        shell.run_cell("%%azbatch --gpu T4 --name gpu-image\nimport tabulate\nx = 2")
    message = str(info.value)
    assert "GPU preflight: this Standard_NC4as_T4_v3 node should have 1 GPU, but no nvidia-smi" in message
    assert "\n" not in message and shell.user_ns["x"] == 1
    (task,) = [r for r in docker_emulator.requests() if r["method"] == "POST" and r["path"].endswith("/tasks")][-1:]
    assert task["body"]["containerSettings"]["containerRunOptions"] == "--shm-size 8g"
