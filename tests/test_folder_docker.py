"""A notebook's folder with subfolders, on the Batch emulator's docker executor: the task's container runs
as the task's user (as the service maps a Linux container task's user into its container), the runner
makes the folder's skeleton in the task's working directory, reads data/train.csv and writes results/,
with and without the node's warm worker. Through a private dockerd, the loopback registry, the debootstrap
base image, Azurite and the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchmagic.api import Session
from batchmagic.run.sweep import parse_grid
from tests.support import docker as docker_parts
from tests.support.azurite import RunningAzurite
from tests.support.docker import DockerEngine, RunningRegistry
from tests.support.emulator import RunningEmulator, start_emulator
from tests.support.settings import use_azure_images

pytestmark = pytest.mark.slow

docker_engine = docker_parts.docker_engine
base_image = docker_parts.base_image
registry = docker_parts.registry

#: Reads a file the folder ships, writes into a folder of the skeleton and into a new nested one.
CELL = """
import os
rows = open('data/train.csv').read().splitlines()[1:]
total = sum(int(r.split(',')[0]) for r in rows) + k
open(f'results/summary-{k}.txt', 'w').write(f'total={total}')
os.makedirs('out/deep', exist_ok=True)
open(f'out/deep/rows-{k}.txt', 'w').write(str(len(rows)))
uid = os.getuid()
parent = os.getppid()
forked = parent > 0 and b"batchmagic.runner.nodewarm" in open(f"/proc/{parent}/cmdline", "rb").read()
import time
time.sleep(0.5)  # the tasks do not wait for the preparation task: the worker's container starts meanwhile
"""


def make_project(root: Path) -> Path:
    """A notebook's folder: data beside it, an empty folder to write into."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.csv").write_text("x,y\n" + "".join(f"{i},{i * i}\n" for i in range(50)))
    (root / "results").mkdir()
    return root


@pytest.fixture
def docker_batch(
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    tmp_path: Path,
    docker_engine: DockerEngine,
    registry: RunningRegistry,
    base_image: str,
    azurite: RunningAzurite,
    request: pytest.FixtureRequest,
) -> Iterator[RunningEmulator]:
    """The emulator on the docker executor (its pool's non-admin auto-user ``request.param``, UID:GID, when
    given); the cell's image built for it and pushed to the registry."""
    env = {**docker_engine.env, "BATCHEMU_TASK_USER": getattr(request, "param", None) or "1000:1000"}
    with start_emulator(tmp_path / "batch", executor="docker", env=env, allocation_delay=0.1) as emu:
        use_azure_images(
            monkeypatch, emu, azurite, prefix="fdk", engine=docker_engine, registry=registry, base_image=base_image
        )
        yield emu


@pytest.mark.parametrize(
    ("docker_batch", "tasks", "uid"),
    [(None, 1, 1000), (None, 4, 1000), ("1001:1001", 4, 1001)],
    ids=["one-task", "sweep-with-node-worker", "task-user-not-the-images"],
    indirect=["docker_batch"],
)
def test_a_folder_with_subfolders_runs_in_the_task_container(
    docker_batch: RunningEmulator, tmp_path: Path, tasks: int, uid: int
) -> None:
    """The task runs as the task's user, who owns its working directory. Where that user is not the image's
    (the service's pool user has no fixed uid), the node's worker (the image's user) cannot write the task's
    directory: it refuses the task, which runs fresh, as the task's user."""
    project = make_project(tmp_path / "notebook")
    session = Session()
    try:
        sweep = tuple(parse_grid([f"k=range({tasks})"])) if tasks > 1 else None
        run = session.submit(CELL, {"k": 0}, backend="azure", folder=project, sweep=sweep, slots_per_node=1)
        results: Any = run.wait(timeout=600)
        got = {tid: run.download(tmp_path / "got" / tid, task_id=tid) for tid in run.task_ids} if tasks > 1 else {}
    finally:
        session.teardown()
    column = (lambda name: [results[name]]) if tasks == 1 else (lambda name: list(results[name]))
    assert column("total") == [1225 + k for k in range(tasks)]
    assert column("uid") == [uid] * tasks  # the task's user, whatever the image's USER
    if tasks == 1:  # what the cell wrote is in the notebook's folder, as if it had run here
        assert (project / "results" / "summary-0.txt").read_text() == "total=1225"
        assert (project / "out" / "deep" / "rows-0.txt").read_text() == "50"
        return
    # A sweep's files stay in storage, per task.
    for k, tid in enumerate(run.task_ids):
        assert (tmp_path / "got" / tid / "results" / f"summary-{k}.txt").read_text() == f"total={1225 + k}", got
        assert (tmp_path / "got" / tid / "out" / "deep" / f"rows-{k}.txt").read_text() == "50"
    if uid == 1000:  # the worker runs as the image's user, the tasks' user too: it forks them
        assert sum(column("forked")) >= 1, column("forked")
    else:  # it cannot write their directories: it refuses them, each runs fresh as the task's user
        assert not any(column("forked"))
