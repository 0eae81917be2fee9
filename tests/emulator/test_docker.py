"""The emulator's docker executor against a private dockerd and a tiny image made from host binaries."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as m

from batchmagic.emulator.executors import own_task_dir
from tests.support import docker as docker_parts
from tests.support.docker import DockerEngine
from tests.support.emulator import start_emulator, wait_for

IMAGE = "batchemu/mini:1"
BAD_IMAGE = "127.0.0.1:1/missing/image:1"
BINARIES = ["/bin/sh", "/bin/sleep", "/bin/cat", "/bin/pwd", "/usr/bin/env"]


def _docker(env: dict[str, str], *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", *args], env={**os.environ, **env}, capture_output=True, check=False, **kwargs)


docker_engine = docker_parts.docker_engine  # one private dockerd for the whole session


@pytest.fixture(scope="module")
def docker_env(docker_engine: DockerEngine) -> Iterator[dict[str, str]]:
    """DOCKER_HOST of the session's engine, with the tiny image imported into it."""
    env = {"DOCKER_HOST": docker_engine.host}
    if _docker(env, "image", "inspect", IMAGE).returncode != 0:
        rootfs = Path(tempfile.mkdtemp(prefix="emu-rootfs-"))
        for binary in BINARIES:
            libs = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
            for path in [binary] + [w for w in libs.split() if w.startswith("/")]:
                dest = rootfs / path.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(path), dest)
        (rootfs / "tmp").mkdir(exist_ok=True)
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
        assert _docker(env, "import", "-", IMAGE, input=tar).returncode == 0
        shutil.rmtree(rootfs, ignore_errors=True)
    yield env


@pytest.fixture(scope="module")
def docker_emulator(docker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with start_emulator(tmp_path_factory.mktemp("docker-emu"), executor="docker", env=docker_env) as emu:
        yield emu


def _pool(client: Any, pool_id: str, images: list[str]) -> None:
    client.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_d2s_v3",
            target_dedicated_nodes=1,
            task_slots_per_node=2,
            virtual_machine_configuration=m.VirtualMachineConfiguration(
                image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
                node_agent_sku_id="batch.node.ubuntu 22.04",
                container_configuration=m.BatchContainerConfiguration(
                    type=m.ContainerType.DOCKER_COMPATIBLE, container_image_names=images
                ),
            ),
        )
    )


def _done(client: Any, job_id: str, task_id: str) -> Any:
    return wait_for(lambda: (t := client.get_task(job_id, task_id)).state == m.BatchTaskState.COMPLETED and t, 60)


def test_container_task_runs_in_image(docker_emulator: Any) -> None:
    client = docker_emulator.client()
    _pool(client, "dock", [IMAGE])
    wait_for(lambda: [n for n in client.list_nodes("dock") if n.state == m.BatchNodeState.IDLE], 60)
    client.create_job(m.BatchJobCreateOptions(id="dock", pool_info=m.BatchPoolInfo(pool_id="dock")))
    settings = m.BatchTaskContainerSettings(image_name=IMAGE, container_run_options="--rm")
    client.create_task(
        "dock",
        m.BatchTaskCreateOptions(
            id="hello",
            command_line="/bin/sh -c 'echo in-container $AZ_BATCH_TASK_ID $GREETING; pwd; cat /proc/1/cmdline'",
            container_settings=settings,
            environment_settings=[m.EnvironmentSetting(name="GREETING", value="hi")],
        ),
    )
    task = _done(client, "dock", "hello")
    assert task.execution_info.exit_code == 0, task.execution_info.failure_info
    out = b"".join(client.download_task_file("dock", "hello", "stdout.txt")).decode()
    lines = out.splitlines()
    assert lines[0] == "in-container hello hi"
    assert lines[1].endswith("/tasks/dock/job-1/hello/wd")
    # The task reports its container ("set only if the Task runs in a container context"): docker's id, and
    # its status as docker inspect gives it.
    container = task.execution_info.container_info
    assert len(container.container_id) == 64 and container.state == "exited"

    client.create_task(
        "dock", m.BatchTaskCreateOptions(id="sleepy", command_line="sleep 100", container_settings=settings)
    )
    running = wait_for(lambda: (t := client.get_task("dock", "sleepy")).state == m.BatchTaskState.RUNNING and t, 30)
    container = wait_for(lambda: client.get_task("dock", "sleepy").execution_info.container_info, 10)
    assert container.state == "running" and container.container_id != task.execution_info.container_info.container_id
    assert running.execution_info.start_time is not None
    time.sleep(0.5)
    started = time.monotonic()
    client.terminate_task("dock", "sleepy")
    sleepy = _done(client, "dock", "sleepy")
    assert time.monotonic() - started < 15
    assert sleepy.execution_info.failure_info.code == "TaskEnded"

    client.create_task(
        "dock",
        m.BatchTaskCreateOptions(
            id="badimage", command_line="true", container_settings=m.BatchTaskContainerSettings(image_name=BAD_IMAGE)
        ),
    )
    bad = _done(client, "dock", "badimage")
    info = bad.execution_info.failure_info
    assert (info.category, info.code) == ("usererror", "ContainerInvalidImage")
    assert {d.name for d in info.details} == {"ContainerImage", "Message"}


def test_a_multi_instance_container_task_has_one_shared_dir_path_and_subtasks_container_info(
    docker_emulator: Any,
) -> None:
    """AZ_BATCH_TASK_SHARED_DIR "is identical on every node allocated to the multi-instance task", each node's
    own directory ("Batch does not share the directory in a remote access sense"): a container has it there.
    A subtask of a container task reports its container (``containerInfo``, as docker inspect sees it)."""
    client = docker_emulator.client()
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="mi-dock",
            vm_size="standard_d2s_v3",
            target_dedicated_nodes=2,
            enable_inter_node_communication=True,
            virtual_machine_configuration=m.VirtualMachineConfiguration(
                image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
                node_agent_sku_id="batch.node.ubuntu 22.04",
                container_configuration=m.BatchContainerConfiguration(
                    type=m.ContainerType.DOCKER_COMPATIBLE, container_image_names=[IMAGE]
                ),
            ),
        )
    )
    wait_for(lambda: [n.state for n in client.list_nodes("mi-dock")] == [m.BatchNodeState.IDLE] * 2, 60)
    client.create_job(m.BatchJobCreateOptions(id="mi-dock", pool_info=m.BatchPoolInfo(pool_id="mi-dock")))
    # Each node writes its id into the shared directory, and notes the path it was given in its own task dir.
    coordination = (
        '/bin/sh -c "echo $AZ_BATCH_NODE_ID > $AZ_BATCH_TASK_SHARED_DIR/node; '
        'echo $AZ_BATCH_TASK_SHARED_DIR > $AZ_BATCH_TASK_DIR/shared-path"'
    )
    client.create_task(
        "mi-dock",
        m.BatchTaskCreateOptions(
            id="mi",
            command_line='/bin/sh -c "sleep 2; cat $AZ_BATCH_TASK_SHARED_DIR/node; echo $AZ_BATCH_TASK_SHARED_DIR"',
            container_settings=m.BatchTaskContainerSettings(image_name=IMAGE),
            multi_instance_settings=m.MultiInstanceSettings(
                number_of_instances=2, coordination_command_line=coordination
            ),
        ),
    )
    subs = wait_for(lambda: [s for s in client.list_subtasks("mi-dock", "mi") if s.container_info], 30)
    running = subs[0].container_info
    assert running.container_id and running.state == "running"
    task = _done(client, "mi-dock", "mi")
    assert task.execution_info.exit_code == 0, task.execution_info.failure_info
    assert task.execution_info.container_info.container_id
    primary = task.node_info.node_id
    node, path = b"".join(client.download_task_file("mi-dock", "mi", "stdout.txt")).decode().split()
    assert node == primary  # the primary's own file: the subtask's write went to its own node's directory
    (sub,) = client.list_subtasks("mi-dock", "mi")
    assert sub.container_info.container_id == running.container_id and sub.container_info.state == "exited"
    other = sub.node_info.node_id
    rel = "tasks/mi-dock/job-1/mi"
    assert b"".join(client.download_node_file("mi-dock", other, f"{rel}/node")).decode().split() == [other]
    for node_id in (primary, other):  # one path on both nodes: the primary's task directory
        assert b"".join(client.download_node_file("mi-dock", node_id, f"{rel}/shared-path")).decode().split() == [path]
    assert path.endswith(f"/{primary}/{rel}")


def test_unpullable_pool_image_makes_node_unusable(docker_emulator: Any) -> None:
    client = docker_emulator.client()
    _pool(client, "badpool", [BAD_IMAGE])
    node = wait_for(lambda: [n for n in client.list_nodes("badpool") if n.state == m.BatchNodeState.UNUSABLE], 60)[0]
    assert node.errors[0].code == "ContainerInvalidImage"
    assert node.errors[0].error_details[0].value == BAD_IMAGE


def test_container_start_task_shares_the_startup_dir_with_container_tasks(docker_emulator: Any) -> None:
    client = docker_emulator.client()
    in_image = m.BatchTaskContainerSettings(image_name=IMAGE)
    for pool_id, command in (("st-docker", "/bin/sh -c 'echo from-start > $AZ_BATCH_NODE_STARTUP_DIR/marker'"),
                             ("st-docker-bad", "/bin/sh -c 'exit 5'")):  # fmt: skip
        client.create_pool(
            m.BatchPoolCreateOptions(
                id=pool_id,
                vm_size="standard_d2s_v3",
                target_dedicated_nodes=1,
                virtual_machine_configuration=m.VirtualMachineConfiguration(
                    image_reference=m.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
                    node_agent_sku_id="batch.node.ubuntu 22.04",
                    container_configuration=m.BatchContainerConfiguration(
                        type=m.ContainerType.DOCKER_COMPATIBLE, container_image_names=[IMAGE]
                    ),
                ),
                start_task=m.BatchStartTask(command_line=command, container_settings=in_image, wait_for_success=True),
            )
        )
    node = wait_for(lambda: (n := list(client.list_nodes("st-docker"))) and n[0].state == "idle" and n[0], 60)
    assert node.start_task_info.exit_code == 0
    started_in = node.start_task_info.container_info  # the start task reports its container, as tasks do
    assert len(started_in.container_id) == 64 and started_in.state == "exited"
    bad = wait_for(
        lambda: (n := list(client.list_nodes("st-docker-bad"))) and n[0].state == "starttaskfailed" and n[0], 60
    )
    assert bad.start_task_info.exit_code == 5 and bad.start_task_info.failure_info.code == "FailureExitCode"
    prep = m.BatchJobPreparationTask(command_line="/bin/sh -c 'echo prepared'", container_settings=in_image)
    client.create_job(
        m.BatchJobCreateOptions(
            id="st-docker", pool_info=m.BatchPoolInfo(pool_id="st-docker"), job_preparation_task=prep
        )
    )
    client.create_task(
        "st-docker",
        m.BatchTaskCreateOptions(
            id="reads",
            command_line="/bin/sh -c 'cat $AZ_BATCH_NODE_STARTUP_DIR/marker'",
            container_settings=in_image,
        ),
    )
    task = _done(client, "st-docker", "reads")
    assert task.execution_info.exit_code == 0, task.execution_info
    assert b"".join(client.download_task_file("st-docker", "reads", "stdout.txt")) == b"from-start\n"
    (status,) = client.list_job_preparation_and_release_task_status("st-docker")
    prepared = status.job_preparation_task_execution_info
    assert prepared.exit_code == 0 and len(prepared.container_info.container_id) == 64
    assert prepared.container_info.state == "exited"


def test_a_container_a_preparation_task_left_goes_with_the_node(
    docker_emulator: Any, docker_env: dict[str, str]
) -> None:
    """A preparation task on the node itself starts a detached container with the node's root bound (a
    service for the job's tasks); it outlives the preparation task, and goes when the node leaves its pool
    (on the service, with the node's VM)."""
    client = docker_emulator.client()
    _pool(client, "svcpool", [IMAGE])
    prep = (
        "/bin/sh -c 'docker run -d --name emu-svc-$AZ_BATCH_NODE_ID "
        f'-v "$AZ_BATCH_NODE_ROOT_DIR:$AZ_BATCH_NODE_ROOT_DIR" {IMAGE} sleep 300\''
    )
    client.create_job(
        m.BatchJobCreateOptions(
            id="svc",
            pool_info=m.BatchPoolInfo(pool_id="svcpool"),
            job_preparation_task=m.BatchJobPreparationTask(command_line=prep),
        )
    )
    settings = m.BatchTaskContainerSettings(image_name=IMAGE)
    client.create_task("svc", m.BatchTaskCreateOptions(id="t", command_line="sleep 0", container_settings=settings))
    assert _done(client, "svc", "t").execution_info.exit_code == 0

    def running() -> list[str]:
        return _docker(docker_env, "ps", "-q", "--filter", "name=emu-svc-").stdout.decode().split()

    assert running()  # the preparation task ended: its container did not
    client.begin_delete_job("svc", polling_interval=0.1).result()
    client.begin_delete_pool("svcpool", polling_interval=0.1).result()
    wait_for(lambda: not _docker(docker_env, "ps", "-aq", "--filter", "name=emu-svc-").stdout.strip(), 60)


def test_a_container_task_runs_as_its_task_user_who_owns_its_directory(docker_emulator: Any) -> None:
    """As the service on Linux: the container runs as the task's user (the pool's non-admin auto-user unless
    its userIdentity says admin: root), not the image's, and that user owns the task's working directory
    and resource files ("All files and directories of a task are owned by the task user")."""
    client = docker_emulator.client()
    _pool(client, "whom", [IMAGE])
    wait_for(lambda: [n for n in client.list_nodes("whom") if n.state == m.BatchNodeState.IDLE], 60)
    client.create_job(m.BatchJobCreateOptions(id="whom", pool_info=m.BatchPoolInfo(pool_id="whom")))
    admin = m.UserIdentity(
        auto_user=m.AutoUserSpecification(scope=m.AutoUserScope.POOL, elevation_level=m.ElevationLevel.ADMIN)
    )
    line = "/bin/sh -c 'echo made > $AZ_BATCH_TASK_WORKING_DIR/made.txt && cat /proc/self/status'"
    for task_id, identity in (("plain", None), ("admin", admin)):
        client.create_task(
            "whom",
            m.BatchTaskCreateOptions(
                id=task_id,
                command_line=line,
                container_settings=m.BatchTaskContainerSettings(image_name=IMAGE),
                user_identity=identity,
            ),
        )
    expected = {"plain": "1000" if os.geteuid() == 0 else str(os.geteuid()), "admin": str(os.geteuid())}
    for task_id, uid in expected.items():
        task = _done(client, "whom", task_id)
        out = b"".join(client.download_task_file("whom", task_id, "stdout.txt")).decode()
        assert task.execution_info.exit_code == 0, (task_id, out, task.execution_info.failure_info)
        [uids] = [row.split()[1:] for row in out.splitlines() if row.startswith("Uid:")]
        assert uids[0] == uid, (task_id, out)
        assert b"".join(client.download_task_file("whom", task_id, "wd/made.txt")) == b"made\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives a task's files to its user")
def test_giving_a_task_dir_to_its_user_never_reaches_through_a_link(tmp_path, monkeypatch) -> None:
    """The walk runs as root while the task user may change the task dir: a link to root's files outside,
    there from the start or swapped in for a subdirectory mid-walk, gives the user none of them."""
    outside, task_dir = tmp_path / "outside", tmp_path / "task"
    outside.mkdir()
    (outside / "secret").write_text("root's")
    (task_dir / "wd" / "sub").mkdir(parents=True)
    (task_dir / "wd" / "sub" / "mine.txt").write_text("mine")
    (task_dir / "wd" / "link").symlink_to(outside / "secret")
    sub = task_dir / "wd" / "sub"
    real = {"open": os.open, "scandir": os.scandir}

    def swap_first(call: str) -> Any:
        def entering(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, str) and path.endswith("sub") and not sub.is_symlink():
                shutil.rmtree(sub)  # the task user wins the race: the folder checked is a link when entered
                sub.symlink_to(outside)
            return real[call](path, *args, **kwargs)

        return entering

    for call in real:
        monkeypatch.setattr(os, call, swap_first(call))
    own_task_dir(task_dir, (1000, 1000))
    monkeypatch.undo()
    assert os.stat(outside / "secret").st_uid == 0 and os.stat(outside).st_uid == 0
    assert os.stat(task_dir / "wd").st_uid == 1000 and os.lstat(task_dir / "wd" / "link").st_uid == 1000
    assert os.stat(task_dir).st_uid == 1000
