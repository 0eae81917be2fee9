"""A sweep's tasks fork from the node's warm worker on the Batch emulator's docker executor: the job's
preparation task starts the worker's container from the node (``docker run -d`` in the training image),
each task's container reaches it through the node's shared directory, and the release task removes it.
Through a private dockerd, the loopback registry, the debootstrap base image, Azurite and the emulator."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchmagic.api import Session
from batchmagic.backends.azure.requests import warm_start_command
from batchmagic.run.sweep import parse_grid
from tests.support import docker as docker_parts
from tests.support.azurite import RunningAzurite
from tests.support.docker import DockerEngine, RunningRegistry
from tests.support.emulator import RunningEmulator, start_emulator, wait_for
from tests.support.procs import processes
from tests.support.settings import use_azure_images

pytestmark = pytest.mark.slow

docker_engine = docker_parts.docker_engine
base_image = docker_parts.base_image
registry = docker_parts.registry

#: In the worker's container the worker is process 1: a forked runner's parent is it; a fresh runner is
#: process 1 of its own task container.
CELL = """
import os
from pathlib import Path
parent = os.getppid()
forked = parent > 0 and b"batchmagic.runner.nodewarm" in Path(f"/proc/{parent}/cmdline").read_bytes()
in_container = os.path.exists("/.dockerenv")
y = k * k
import time
time.sleep(0.5)  # the tasks do not wait for the preparation task: the worker's container starts meanwhile
"""


@pytest.fixture
def docker_batch(
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    tmp_path: Path,
    docker_engine: DockerEngine,
    registry: RunningRegistry,
    base_image: str,
    azurite: RunningAzurite,
) -> Iterator[RunningEmulator]:
    """The emulator on the docker executor, and a notebook (in a folder of its own) whose cells' images are
    built and pushed."""
    (tmp_path / "notebook").mkdir()
    monkeypatch.chdir(tmp_path / "notebook")
    with start_emulator(tmp_path / "batch", executor="docker", env=docker_engine.env, allocation_delay=0.1) as emu:
        use_azure_images(
            monkeypatch, emu, azurite, prefix="nwd", engine=docker_engine, registry=registry, base_image=base_image
        )
        yield emu


def worker_containers(engine: DockerEngine, job_id: str) -> list[str]:
    out = engine.run("ps", "-a", "--filter", f"name=bm-warm-{job_id}", "--format", "{{.Names}}").stdout.decode()
    return out.split()


def test_a_sweeps_task_containers_fork_from_the_nodes_worker_container(
    docker_batch: RunningEmulator, docker_engine: DockerEngine
) -> None:
    session = Session()
    try:
        run = session.submit(CELL, {}, backend="azure", sweep=tuple(parse_grid(["k=range(6)"])), slots_per_node=1)
        results: Any = run.wait(timeout=600)
        assert list(results.y) == [k * k for k in range(6)]  # as the plain loop
        assert results.in_container.all()
        # The first task may start before the worker's container listens; the later ones are forked there.
        assert results.forked.sum() >= 4, list(results.forked)
        wait_for(lambda: not worker_containers(docker_engine, run.id), timeout=60)  # the release task's work
        status = list(docker_batch.client().list_job_preparation_and_release_task_status(run.id))
        assert [s.job_release_task_execution_info.exit_code for s in status] == [0]
    finally:
        session.teardown()


#: The first task forked in the worker's container sleeps, leaving its task id where the test finds it (the
#: socket folder: open to the image's user).
KILLED_CELL = """
import os, time
from pathlib import Path
here = Path(os.environ["AZ_BATCH_NODE_SHARED_DIR"], "batchmagic-warm")
forked = b"nodewarm" in Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
if forked and not (here / "task").exists():
    (here / "task").write_text(os.environ["AZ_BATCH_TASK_ID"])
    time.sleep(300)
time.sleep(0.5)
y = k
"""


def children_of(pid: int) -> list[int]:
    """This machine's processes whose parent is ``pid``."""
    return [p.pid for p in processes() if p.ppid == pid]


def test_a_killed_task_container_ends_its_runner_in_the_worker_container(
    docker_batch: RunningEmulator, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    session = Session()
    try:
        run = session.submit(
            KILLED_CELL, {}, backend="azure", sweep=tuple(parse_grid(["k=range(6)"])), slots_per_node=1
        )
        marker = wait_for(lambda: list((tmp_path / "batch").glob("**/batchmagic-warm/task")), timeout=600)[0]
        [name] = worker_containers(docker_engine, run.id)
        worker = int(docker_engine.run("inspect", "-f", "{{.State.Pid}}", name).stdout.decode())
        [runner] = children_of(worker)  # the sleeping task's runner, in the worker's container
        docker_batch.client().terminate_task(run.id, marker.read_text())  # Batch removes the task's container
        wait_for(lambda: not Path(f"/proc/{runner}").exists(), timeout=60)
        run.cancel()
    finally:
        session.teardown()


def test_a_worker_container_that_leaves_by_itself_leaves_no_container(
    docker_engine: DockerEngine, base_image: str, tmp_path: Path
) -> None:
    """The base image has Python but not batchmagic: its worker ends at once, as one that sat idle or whose
    socket went (a release task that ran before it started) would. Its container goes with it."""
    job = f"rm{int(time.time() * 1000) % 10**9}"
    root = tmp_path / "node"
    (root / "shared").mkdir(parents=True)
    env = {
        **os.environ,
        **docker_engine.env,
        "AZ_BATCH_NODE_ROOT_DIR": str(root),
        "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
        "AZ_BATCH_JOB_ID": job,
        "AZ_BATCH_NODE_ID": "tvmps_1",
    }
    done = subprocess.run(shlex.split(warm_start_command(job, base_image, [])), env=env, check=False)
    assert done.returncode == 0
    # docker run -d did start it (no worker fell back to the host: no log of one there)
    assert not list((root / "shared").glob("batchmagic-warm/*.log"))
    wait_for(lambda: not worker_containers(docker_engine, job), timeout=60)
