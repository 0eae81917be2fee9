"""The training image through real parts: a private dockerd, Debian's docker-registry on loopback,
a debootstrap base image, the Batch emulator's docker executor and Azurite.

The image for the cell is built and pushed once (the first test); the others reuse it.
"""

from __future__ import annotations

import importlib.metadata as md
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from batchmagic.errors import ConfigError
from batchmagic.package.environment import LABEL, EnvironmentSpec, environment_spec
from batchmagic.package.image import RegistryClient, ensure_image
from tests.support import docker as docker_parts
from tests.support.azurite import RunningAzurite
from tests.support.docker import DockerEngine, RunningRegistry
from tests.support.emulator import RunningEmulator, start_emulator, wait_for
from tests.support.settings import azure_environment

pytestmark = pytest.mark.slow

docker_engine = docker_parts.docker_engine
registry = docker_parts.registry
base_image = docker_parts.base_image
CELL = "import tabulate\ntable = tabulate.tabulate([[n, n * n] for n in range(3)], headers=['n', 'sq'])\nprint(table)"


@pytest.fixture(scope="module")
def docker_emulator(docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    with start_emulator(
        tmp_path_factory.mktemp("image-emu"), executor="docker", env=docker_engine.env, allocation_delay=0.1
    ) as emu:
        yield emu


@pytest.fixture
def image_env(
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    docker_engine: DockerEngine,
    registry: RunningRegistry,
    base_image: str,
) -> RunningRegistry:
    """Engine, registry and base image in the environment a notebook would have."""
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    monkeypatch.setenv("BATCHMAGIC_REGISTRY", f"{registry.host}/batchmagic")
    monkeypatch.setenv("BATCHMAGIC_BASE_IMAGE", base_image)
    monkeypatch.setenv("BATCHMAGIC_REGISTRY_USERNAME", registry.username)
    monkeypatch.setenv("BATCHMAGIC_REGISTRY_PASSWORD", registry.password)
    monkeypatch.delenv("BATCHMAGIC_IMAGE", raising=False)
    return registry


@pytest.fixture
def azure_image_env(
    image_env: RunningRegistry,
    monkeypatch: pytest.MonkeyPatch,
    docker_emulator: RunningEmulator,
    azurite: RunningAzurite,
) -> RunningEmulator:
    settings = azure_environment(docker_emulator, azurite, container=f"img-{int(time.time() * 1000) % 10**9}")
    settings.pop("BATCHMAGIC_IMAGE")  # this image is built for the cell: BATCHMAGIC_REGISTRY (image_env) says where
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return docker_emulator


def _jobs_created(emu: RunningEmulator) -> list[dict]:
    return [r for r in emu.requests() if r["method"] == "POST" and r["path"] == "/jobs"]


def _image_events(engine: DockerEngine, since: float) -> list[str]:
    return [
        f"{e.get('Action')} {e.get('Actor', {}).get('ID', '')}" for e in engine.events(since) if e["Type"] == "image"
    ]


def test_cell_builds_pushes_runs_in_the_image_and_a_rerun_costs_nothing(
    azure_image_env, shell, image_env, docker_engine, capsys
):
    registry = image_env
    started = time.time()
    shell.run_cell(f"%%azbatch --name first\n{CELL}")
    first_seconds = time.time() - started
    assert shell.user_ns["table"].splitlines()[0].split() == ["n", "sq"]
    out, err = capsys.readouterr()
    assert "sq" in out
    run = shell.user_ns["_azbatch"]
    phases = [span.phase.value for span in run.state().phases]
    assert "building image" in phases and "pushing image" in phases and phases[-1] == "done"

    # The image is in the registry, tagged by the environment's hash, the spec in its labels.
    assert "batchmagic" in registry.catalog()
    (tag,) = [t for t in registry.tags("batchmagic") if t.startswith("env-")]
    image = f"{registry.host}/batchmagic:{tag}"
    labels = RegistryClient(registry.host, (registry.username, registry.password)).labels("batchmagic", tag)
    spec = EnvironmentSpec.from_json(labels[LABEL])
    assert f"tabulate=={md.version('tabulate')}" in spec.requirements
    assert not any(r.lower().startswith(("ipython", "ipywidgets")) for r in spec.requirements)

    # Batch was told to pull it with the registry's credentials; the task ran in it.
    (create,) = [r for r in _jobs_created(azure_image_env) if r["body"]["id"] == run.id]
    containers = create["body"]["poolInfo"]["autoPoolSpecification"]["pool"]["virtualMachineConfiguration"][
        "containerConfiguration"
    ]
    assert containers["containerImageNames"] == [image]
    assert containers["containerRegistries"][0]["registryServer"] == registry.host
    task = [r for r in azure_image_env.requests() if r["method"] == "POST" and r["path"] == f"/jobs/{run.id}/tasks"]
    assert task[0]["body"]["containerSettings"]["imageName"] == image

    # The password is nowhere a task, a log or the panel could show it.
    everything = json.dumps(azure_image_env.requests()) + azure_image_env.log() + out + err
    assert registry.password not in everything

    # The same cell again: zero builds, zero pushes.
    uploads_before = len(registry.uploads())
    since = time.time()
    started = time.time()
    shell.run_cell(f"%%azbatch --name again\n{CELL}")
    again_seconds = time.time() - started
    rerun = shell.user_ns["_azbatch"]
    phases = [span.phase.value for span in rerun.state().phases]
    assert "building image" not in phases and "pushing image" not in phases and phases[-1] == "done"
    assert len(registry.uploads()) == uploads_before
    assert not [e for e in _image_events(docker_engine, since) if e.split()[0] in ("tag", "push", "build")]
    heads = [r for r in registry.requests() if r["method"] == "HEAD" and f"/manifests/{tag}" in r["path"]]
    assert heads and heads[-1]["status"] == 200
    print(f"first run {first_seconds:.1f} s, re-run {again_seconds:.1f} s")


def test_local_container_runs_the_cell_in_the_image(image_env, shell, docker_engine, monkeypatch):
    monkeypatch.delenv("BATCHMAGIC_REGISTRY")  # a local-only image, built from the engine's layer cache
    since = time.time()
    shell.run_cell(
        "%%azbatch --backend local --container\nimport os, sys, tabulate\n"
        "where = (sys.prefix, os.path.exists('/.dockerenv'), tabulate.__version__)"
    )
    prefix, in_docker, version = shell.user_ns["where"]
    assert prefix == "/opt/batchmagic" and in_docker and version == md.version("tabulate")
    tags = docker_engine.run("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode().split()
    assert any(t.startswith("batchmagic:env-") for t in tags)
    assert all(not e.startswith("push") for e in _image_events(docker_engine, since))


def test_registry_exists_check(image_env):
    registry = image_env
    client = RegistryClient(registry.host, (registry.username, registry.password))
    assert client.manifest_exists("batchmagic", "env-000000000000") is False
    with pytest.raises(ConfigError, match=r"registry 127\.0\.0\.1:\d+ refused the credentials of user 'trainer'"):
        RegistryClient(registry.host, ("trainer", "wrong")).manifest_exists("batchmagic", "env-000000000000")
    with pytest.raises(ConfigError, match="needs credentials"):
        RegistryClient(registry.host).manifest_exists("batchmagic", "env-000000000000")


def test_refused_registry_credentials_are_one_line_and_nothing_is_submitted(azure_image_env, shell, monkeypatch):
    monkeypatch.setenv("BATCHMAGIC_REGISTRY_PASSWORD", "not-the-password")
    jobs_before = len(_jobs_created(azure_image_env))
    with pytest.raises(UsageError) as err:
        shell.run_cell(f"%%azbatch\n{CELL}")
    message = str(err.value)
    assert "\n" not in message and "refused the credentials of user 'trainer'" in message
    assert "not-the-password" not in message
    assert len(_jobs_created(azure_image_env)) == jobs_before


def test_uninstallable_package_is_the_failing_requirement(image_env, base_image):
    spec = environment_spec([], base_image=base_image, pip=["tabulate==99.0.0"])
    with pytest.raises(ConfigError) as err:
        ensure_image(spec, "", push=False)
    assert str(err.value) == "pip cannot install tabulate==99.0.0 in the image: no such version on the package index"


def test_guard_refuses_an_image_built_for_another_python(image_env, azure_image_env, shell, docker_engine, base_image):
    import docker

    registry = image_env
    other = EnvironmentSpec(
        python="3.10", base_image=base_image, batchmagic="0.1.0", requirements=("cloudpickle==2.0.0",)
    )
    name = f"{registry.host}/batchmagic:py310"
    client = docker.DockerClient(base_url=docker_engine.host)
    client.images.build(
        fileobj=io.BytesIO(f"FROM {base_image}\n".encode()), tag=name, labels={LABEL: other.to_json()}, rm=True
    )
    ours = md.version("cloudpickle")
    with pytest.raises(UsageError) as err:
        shell.run_cell(f"%%azbatch --backend local --container --image {name}\nx = 1")
    message = str(err.value)
    assert f"Python {sys.version_info.major}.{sys.version_info.minor} in the kernel, 3.10 in the image" in message
    assert f"cloudpickle {ours} in the kernel, 2.0.0 in the image" in message

    # The same through the registry's config blob, on the Azure path: refused before any job.
    for line in client.api.push(name.rsplit(":", 1)[0], tag="py310", auth_config={
        "username": registry.username, "password": registry.password}, stream=True, decode=True):  # fmt: skip
        assert "error" not in line, line
    client.images.remove(name)
    with pytest.raises(UsageError, match="3.10 in the image"):
        shell.run_cell(f"%%azbatch --backend azure --image {name}\nx = 1")
    # And when it is the configured image (BATCHMAGIC_IMAGE / AzBatch.image), not a flag.
    shell.run_line_magic("config", f"AzBatch.image = '{name}'")
    with pytest.raises(UsageError, match="3.10 in the image"):
        shell.run_cell("%%azbatch --backend azure\nx = 1")
    assert not [r for r in _jobs_created(azure_image_env) if "py310" in json.dumps(r["body"])]


def test_cli_finds_the_cells_image_and_lists_it(image_env, capsys):
    from batchmagic.cli import main

    registry = image_env
    assert main(["image", "build", "--import", "tabulate"]) == 0  # built here, or by an earlier test
    capsys.readouterr()
    uploads = len(registry.uploads())
    assert main(["image", "build", "--import", "tabulate"]) == 0  # the same environment again
    out = capsys.readouterr().out
    assert out.startswith(f"{registry.host}/batchmagic:env-") and "already there: nothing built or pushed" in out
    assert len(registry.uploads()) == uploads
    assert main(["image", "ls"]) == 0
    listed = capsys.readouterr().out
    assert out.split()[0] in listed and f"tabulate=={md.version('tabulate')}" in listed
    assert registry.password not in out + listed


def test_unpullable_image_is_one_line_and_the_pool_goes(azure_image_env, shell, monkeypatch, registry):
    """Container pull failure: the node cannot pull the training image; reported, never waited out."""
    monkeypatch.setenv("BATCHMAGIC_IMAGE", f"{registry.host}/batchmagic/missing:env-000000000000")
    monkeypatch.delenv("BATCHMAGIC_REGISTRY")
    from batchmagic.errors import RunFailed

    with pytest.raises(RunFailed, match="the node could not start \\(ContainerInvalidImage") as info:
        shell.run_cell("%%azbatch --timeout 10m\nx = 1")
    assert "BATCHMAGIC_IMAGE" in str(info.value) and "\n" not in str(info.value)
    assert "x" not in shell.user_ns
    client = azure_image_env.client()
    wait_for(lambda: not list(client.list_pools()), timeout=30)
    assert [j.id for j in client.list_jobs() if str(getattr(j.state, "value", j.state)) == "active"] == []
