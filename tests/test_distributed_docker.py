"""A distributed cell's ranks in the training image (``--backend local --container``), through a private
dockerd and the debootstrap base image: each rank its own container, on the host's network (rank 1 reaches
rank 0 at MASTER_ADDR:MASTER_PORT) with a /dev/shm NCCL can live with."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import docker as docker_parts
from tests.support.docker import DockerEngine

pytestmark = pytest.mark.slow

docker_engine = docker_parts.docker_engine
base_image = docker_parts.base_image

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
