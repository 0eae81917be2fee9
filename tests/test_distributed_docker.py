"""A distributed cell's ranks in the training image, through a private dockerd and the debootstrap base
image: locally (``--backend local --container``, each rank its own container) and on the Batch emulator's
docker executor (a multi-instance task: each node's commands in the task's container there). Either way on
the host's network (rank 1 reaches rank 0 at MASTER_ADDR:MASTER_PORT) with a /dev/shm NCCL can live with."""

from __future__ import annotations

import functools
import glob
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import docker as docker_parts
from tests.support.azurite import RunningAzurite, azurite_fixture
from tests.support.docker import DockerEngine, RunningRegistry
from tests.support.emulator import RunningEmulator, start_emulator
from tests.support.settings import use_azure_images
from tests.test_distributed import need_torch

pytestmark = pytest.mark.slow

docker_engine = docker_parts.docker_engine
base_image = docker_parts.base_image
registry = docker_parts.registry
azurite = azurite_fixture()

CELL = """
import os, socket, time
rank = int(os.environ["RANK"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
if rank == 0:
    server = socket.create_server((addr, port))
    peer, _ = server.accept()
    heard = peer.recv(100).decode()
else:
    for _ in range(300):
        try:
            sock = socket.create_connection((addr, port))
            break
        except OSError:
            time.sleep(0.1)
    sock.sendall(f"hello from rank {rank}".encode())
    heard = ""
shm = os.statvfs("/dev/shm")
where = (os.path.exists("/.dockerenv"), shm.f_blocks * shm.f_frsize, os.environ["WORLD_SIZE"])
print("in a container:", where[0])
"""


def test_each_rank_runs_in_the_image_and_they_reach_each_other(
    shell: Any, docker_engine: DockerEngine, base_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    monkeypatch.setenv("BATCHMAGIC_BASE_IMAGE", base_image)
    monkeypatch.delenv("BATCHMAGIC_REGISTRY", raising=False)
    shell.run_cell(f"%%azbatch --backend local --container --nodes 2 --distributed --out heard,where\n{CELL}")
    assert shell.user_ns["heard"] == "hello from rank 1"
    in_docker, shm_bytes, world = shell.user_ns["where"]
    assert in_docker and world == "2"
    assert shm_bytes > 1 << 30  # Docker's default is 64 MB
    logs = shell.user_ns["_azbatch"].logs()
    assert "[rank 0] in a container: True" in logs and "[rank 1] in a container: True" in logs


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
    """The emulator on the docker executor, and a notebook whose cells' images are built and pushed."""
    with start_emulator(tmp_path / "batch", executor="docker", env=docker_engine.env, allocation_delay=0.1) as emu:
        use_azure_images(
            monkeypatch, emu, azurite, prefix="distd", engine=docker_engine, registry=registry, base_image=base_image
        )
        yield emu


def test_the_ranks_of_a_multi_instance_task_run_in_each_nodes_container(
    docker_batch: RunningEmulator, shell: Any, docker_engine: DockerEngine
) -> None:
    shell.run_cell(f"%%azbatch --nodes 2 --distributed --out heard,where\n{CELL}")
    assert shell.user_ns["heard"] == "hello from rank 1"
    in_docker, shm_bytes, world = shell.user_ns["where"]
    assert in_docker and world == "2" and shm_bytes > 1 << 30
    left = docker_engine.run("ps", "-a", "--filter", "name=batchemu-mi-", "--format", "{{.Names}}").stdout.decode()
    assert left.split() == []  # each node's task container went with the task


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="session")
def torch_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A package index on loopback holding the kernel's torch wheel: a private mirror, as a user behind one has.

    torch's CPU build (``2.13.0+cpu``) is not on PyPI and the build reaches no other index here; the wheel is
    on this machine's disk (pip finds it through ``PIP_FIND_LINKS``). Served as a PEP 503 ``simple/`` tree
    (a directory listing is such a page) on the host network the image build uses."""
    need_torch()
    import torch

    wanted = f"torch-{torch.__version__}-".replace("+", "*")
    dirs = [d for d in os.environ.get("PIP_FIND_LINKS", "").split() if os.path.isdir(d)]
    wheels = [w for d in dirs for w in glob.glob(os.path.join(d, wanted + "cp311-*.whl"))]
    if not wheels:
        docker_parts.unavailable_in_ci(
            f"no wheel of torch {torch.__version__} in PIP_FIND_LINKS ({dirs or 'unset'}) for the image's index"
        )
    root = tmp_path_factory.mktemp("index")
    (root / "simple" / "torch").mkdir(parents=True)
    os.symlink(wheels[0], root / "simple" / "torch" / os.path.basename(wheels[0]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


# The image build (torch unpacked: about 1.2 GB) and its push dominate: 3m27s for both cases on this 2-core
# machine (the first call 168 s, the 4-rank one, whose image is built, 13 to 27 s; the session's dockerd
# teardown 2 s with its data root in memory, 30 to 100 s when it was deleted from the disk), more when loaded.
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("options", "world"), [("--nodes 2", 2), ("--nodes 2 --procs-per-node 2", 4)])
def test_ddp_training_through_the_docker_executor_equals_one_process(
    docker_batch: RunningEmulator,
    torch_index: str,
    shell: Any,
    registry: RunningRegistry,
    monkeypatch: pytest.MonkeyPatch,
    options: str,
    world: int,
) -> None:
    """The training image is built from the kernel's environment (torch from the mirror), pushed, and two
    nodes' containers train with DDP over gloo, one rank each, then two each (4 ranks: a node's ranks share
    its container): rank 0's weights equal one process's over the same global batches."""
    from tests.support.training import TRAIN_CELL, assert_same_weights, data, train_alone

    monkeypatch.setenv("BATCHMAGIC_PIP_EXTRA_INDEX_URL", torch_index)
    shell.user_ns.update(data())
    shell.run_cell(f"%%azbatch {options} --distributed --out weights\n{TRAIN_CELL}")
    assert "weights" in shell.user_ns, shell.user_ns["_azbatch"].logs()
    assert_same_weights(shell.user_ns["weights"], train_alone(shell.user_ns))
    run = shell.user_ns["_azbatch"]
    logs = run.logs()
    assert all(f"[rank {k}] step 20 loss" in logs for k in range(world)), logs
    rows = run.state().ranks
    assert [r.state for r in rows] == ["succeeded"] * world
    assert len({r.node for r in rows}) == 2  # two nodes, each holding world / 2 ranks
    assert any(repo.endswith("batchmagic") for repo in registry.catalog())  # built here, pushed, pulled there


def test_docker_takes_the_infiniband_options_and_maps_a_device_directory(
    docker_engine: DockerEngine, base_image: str
) -> None:
    """The InfiniBand options a distributed run on an RDMA size asks for, given to a real Docker engine with
    the one change this machine needs (no InfiniBand here: /dev/net, a directory of character devices as
    /dev/infiniband is, stands in for it): the engine takes them, maps every device of the directory, gives
    CAP_IPC_LOCK, and unlimited locked memory where the engine may raise the limit (a Batch node's dockerd,
    root on its VM; this sandbox withholds CAP_SYS_RESOURCE, so there the runtime refuses it, and the test
    checks it is that refusal and runs again at this machine's hard limit)."""
    import resource
    import shlex

    from batchmagic.backends.azure.gpus import INFINIBAND_OPTIONS

    options = shlex.split(INFINIBAND_OPTIONS.replace("/dev/infiniband", "/dev/net"))
    assert len(options) == 6 and "/dev/net" in options
    probe = "ls /dev/net; ulimit -l; grep CapEff /proc/self/status"

    def run(given: list[str]) -> subprocess.CompletedProcess[bytes]:
        return docker_engine.run("run", "--rm", "--network", "host", *given, base_image, "sh", "-c", probe, timeout=120)

    done, memlock = run(options), "unlimited"
    if done.returncode == 125 and b"error setting rlimit type 8: operation not permitted" in done.stderr:
        assert not _capable(24), "the engine may raise limits, yet refused memlock=-1"  # 24: CAP_SYS_RESOURCE
        hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
        done, memlock = run([o.replace("memlock=-1", f"memlock={hard}") for o in options]), str(hard // 1024)
    assert done.returncode == 0, done.stderr.decode()
    devices, locked, caps = done.stdout.decode().split("\n")[:3]
    assert (devices, locked) == ("tun", memlock), done.stdout
    assert int(caps.split()[1], 16) & (1 << 14), caps  # CAP_IPC_LOCK is bit 14


def _capable(bit: int) -> bool:
    """Whether this process has the capability ``bit`` (its effective set, /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << bit))
    return False
