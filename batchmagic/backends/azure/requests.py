"""The requests batchmagic sends to Batch, built from plain data: no client, no call, no clock.

Each function takes what the run or the pool is (a :class:`~batchmagic.backends.base.TaskSubmission`,
a :class:`~batchmagic.backends.azure.poolspec.PoolRequest`, the node image, URLs already signed, the
time to mark) and returns the SDK's model, so a test reads the request without a service. The SDK
is imported in the functions: it is heavy, and only a run on Azure needs it.
"""

from __future__ import annotations

import shlex
from datetime import datetime, timedelta
from typing import Any

from batchmagic.backends.azure.gpus import container_run_options, driver_extension
from batchmagic.backends.azure.nodeimages import NodeImage
from batchmagic.backends.azure.poolspec import (
    CLOCK_SKEW,
    EVALUATION_INTERVAL,
    META_CLIENT,
    META_CREATED_BY,
    META_CREATOR,
    META_IDLE,
    META_IMAGE,
    META_KIND,
    META_MAX_NODES,
    Pool,
    PoolRequest,
    autoscale_formula,
)
from batchmagic.backends.base import TaskSubmission
from batchmagic.config import Settings
from batchmagic.protocol import SPEC_FILENAME, Layout
from batchmagic.runner.node import SOCKET_DIR, container_name, socket_name

__all__ = [
    "COMMAND",
    "CREATED_BY",
    "autoscale_update",
    "auto_pool",
    "end_with_tasks",
    "job_request",
    "node_worker",
    "preload_modules",
    "warm_start_command",
    "warm_stop_command",
    "named_pool",
    "pool_request",
    "registries",
    "registry_host",
    "run_metadata",
    "task_registry",
    "task_request",
    "vm_configuration",
]

CREATED_BY = "batchmagic"
COMMAND = f"python3 -P -m batchmagic.runner --spec {SPEC_FILENAME}"


def run_metadata(submission: TaskSubmission) -> list[Any]:
    """The tags of a run's job and auto pool: who made it, which run, which ledger entry."""
    from azure.batch import models as m

    return [
        m.BatchMetadataItem(name="created-by", value=CREATED_BY),
        m.BatchMetadataItem(name="run-id", value=submission.run_id),
        m.BatchMetadataItem(name="ledger-id", value=submission.ledger_id),
    ]


def auto_pool(submission: TaskSubmission, node: NodeImage, image: str, settings: Settings) -> Any:
    """The pool info of a run on its own pool: made for the job, gone with it, ``image`` prefetched."""
    from azure.batch import models as m

    pool = m.BatchPoolSpecification(
        vm_size=submission.vm_size,
        virtual_machine_configuration=vm_configuration(node, [image], settings),
        task_slots_per_node=1 if submission.distributed else max(1, submission.slots_per_node),
        enable_inter_node_communication=submission.distributed or None,
        target_dedicated_nodes=0 if submission.low_priority else submission.nodes,
        target_low_priority_nodes=submission.nodes if submission.low_priority else 0,
        metadata=run_metadata(submission),
    )
    return m.BatchPoolInfo(
        auto_pool_specification=m.BatchAutoPoolSpecification(
            pool_lifetime_option=m.BatchPoolLifetimeOption.JOB, keep_alive=False, auto_pool_id_prefix="bm", pool=pool
        )
    )


def named_pool(name: str) -> Any:
    """The pool info of a run on a named pool: the job only points at it, and its end never touches it."""
    from azure.batch import models as m

    return m.BatchPoolInfo(pool_id=name)


def job_request(submission: TaskSubmission, pool_info: Any, worker: tuple[Any, Any] | None = None) -> Any:
    """The run's job: ``--timeout`` its wall clock limit, ending with its tasks only once they are in;
    ``worker``: the job preparation and release tasks of its nodes' warm worker (:func:`node_worker`)."""
    from azure.batch import models as m

    prep, release = worker or (None, None)
    return m.BatchJobCreateOptions(
        job_preparation_task=prep,
        job_release_task=release,
        id=submission.run_id,
        display_name=submission.name[:1024],
        pool_info=pool_info,
        # Batch considers a job without tasks complete: terminatejob is set once the tasks are in.
        all_tasks_complete_mode=m.BatchAllTasksCompleteMode.NO_ACTION,
        constraints=m.BatchJobConstraints(max_wall_clock_time=timedelta(seconds=submission.timeout)),
        metadata=run_metadata(submission),
    )


#: The most characters of module names a preparation task's command line carries (the service documents
#: no limit of its own for a command line; a request body is capped at 1 MB): what does not fit, a forked
#: runner imports itself.
PRELOAD_CHARS = 6000


def preload_modules(modules: list[str]) -> list[str]:
    """The modules a node's warm worker imports before it forks, of ``modules`` (the kernel's: what the
    cell's image has of them is imported, the rest skipped): packages first, a package before its
    submodules, none private, at most :data:`PRELOAD_CHARS` characters in all."""
    public = [m for m in modules if m.isascii() and not any(part.startswith("_") for part in m.split("."))]
    chosen, size = [], 0
    for name in sorted(set(public), key=lambda n: (n.count("."), n)):
        if size + len(name) + 1 > PRELOAD_CHARS:
            break
        chosen.append(name)
        size += len(name) + 1
    return chosen


def warm_start_command(job_id: str, image: str, modules: list[str]) -> str:
    """The preparation task's command line, run on the node itself (no container settings: as root, it
    reaches the node's Docker engine): the job's warm worker in ``image``, detached, the node's root
    directory bound at the same path, so the socket it makes in the shared directory and the task
    directories are where the tasks' containers see them. Where that fails (no engine answers, as on the
    emulator's process executor, whose tasks run on the node itself) the worker starts on the node; it
    forks only for tasks of its own interpreter outside a container (:func:`batchmagic.runner.node.identity`),
    so a container task never runs there. Always exits 0: a task finds the worker, or runs fresh.

    The container is removed when its worker ends (``--rm``): one that leaves by itself (idle, its socket
    gone) or one started after the release task already ran (``waitForSuccess`` false: the release does
    not wait for a preparation task still starting) leaves no stopped container on the node."""
    name = container_name(job_id)
    worker = shlex.join(["python3", "-P", "-m", "batchmagic.runner.nodewarm", *modules])
    script = (
        # Open to the image's user (the worker binds its socket there; it is not the node's root), sticky.
        f'D="$AZ_BATCH_NODE_SHARED_DIR/{SOCKET_DIR}"; mkdir -p "$D"; chmod 1777 "$D"; '
        'dk() { docker "$@" || sudo -n docker "$@"; }; '
        f'dk rm -f "{name}" >/dev/null 2>&1; '
        f'dk run -d --rm --name "{name}" --network host -v "$AZ_BATCH_NODE_ROOT_DIR:$AZ_BATCH_NODE_ROOT_DIR" '
        f"-e AZ_BATCH_NODE_SHARED_DIR -e AZ_BATCH_JOB_ID {shlex.quote(image)} {worker} || "
        f'(setsid {worker} </dev/null >"$D/{socket_name(job_id)}.log" 2>&1 &); exit 0'
    )
    return shlex.join(["/bin/sh", "-c", script])


def warm_stop_command(job_id: str) -> str:
    """The release task's command line: the worker's container removed, its socket too (a worker on the
    node itself leaves when its socket goes)."""
    name = container_name(job_id)
    script = (
        'dk() { docker "$@" || sudo -n docker "$@"; }; '
        f'dk rm -f "{name}" >/dev/null 2>&1; '
        f'rm -f "$AZ_BATCH_NODE_SHARED_DIR/{SOCKET_DIR}/{socket_name(job_id)}"; exit 0'
    )
    return shlex.join(["/bin/sh", "-c", script])


def node_worker(submission: TaskSubmission, image: str, modules: list[str]) -> tuple[Any, Any] | None:
    """The job preparation and release tasks that keep one warm worker per node for a sweep's tasks; None
    for a run that gains nothing from one (a single task, a distributed run, a GPU run: its worker would
    not have the tasks' GPUs). The preparation does not hold the tasks back (``waitForSuccess`` false):
    a task that starts before the worker runs fresh, and a failed preparation never keeps a node from
    the job. Both run as the pool's admin auto-user: the node's Docker engine is root's."""
    if len(submission.task_ids) < 2 or submission.distributed or submission.gpus > 0:
        return None
    from azure.batch import models as m

    admin = m.UserIdentity(
        auto_user=m.AutoUserSpecification(scope=m.AutoUserScope.POOL, elevation_level=m.ElevationLevel.ADMIN)
    )
    prep = m.BatchJobPreparationTask(
        id="batchmagic-warm",
        command_line=warm_start_command(submission.run_id, image, preload_modules(modules)),
        wait_for_success=False,
        user_identity=admin,
        constraints=m.BatchTaskConstraints(max_wall_clock_time=timedelta(minutes=10), max_task_retry_count=0),
    )
    release = m.BatchJobReleaseTask(
        id="batchmagic-warm-end",
        command_line=warm_stop_command(submission.run_id),
        user_identity=admin,
        max_wall_clock_time=timedelta(minutes=2),
    )
    return prep, release


def end_with_tasks() -> Any:
    """The job update that has the job end once its tasks have."""
    from azure.batch import models as m

    return m.BatchJobUpdateOptions(all_tasks_complete_mode=m.BatchAllTasksCompleteMode.TERMINATE_JOB)


def task_request(
    submission: TaskSubmission, task_id: str, *, image: str, spec_url: str, outputs_url: str, registry: Any = None
) -> Any:
    """One task: the runner in the training image, its spec a resource file, Batch's std*.txt uploaded."""
    from azure.batch import models as m

    upload = m.OutputFile(
        file_pattern="../std*.txt",
        destination=m.OutputFileDestination(
            container=m.OutputFileBlobContainerDestination(
                container_url=outputs_url, path=Layout.process_files(submission.run_id, task_id)
            )
        ),
        upload_options=m.OutputFileUploadConfiguration(upload_condition=m.OutputFileUploadCondition.TASK_COMPLETION),
    )
    return m.BatchTaskCreateOptions(
        id=task_id,
        command_line=COMMAND,
        container_settings=m.BatchTaskContainerSettings(
            image_name=image,
            working_directory=m.ContainerWorkingDirectory.TASK_WORKING_DIRECTORY,
            registry=registry,
            # /dev/shm for a GPU or distributed run, InfiniBand for a distributed one on an RDMA size; never --gpus
            # (Batch gives the container the GPUs itself)
            container_run_options=container_run_options(
                gpus=submission.gpus,
                distributed=submission.distributed,
                shm_size=submission.shm_size,
                vm_size=submission.vm_size,
            ),
        ),
        resource_files=[m.ResourceFile(http_url=spec_url, file_path=SPEC_FILENAME)],
        output_files=[upload],
        constraints=m.BatchTaskConstraints(
            max_wall_clock_time=timedelta(seconds=submission.timeout), max_task_retry_count=submission.retries
        ),
    )


def task_registry(pool: Pool, image: str, settings: Settings) -> Any:
    """The registry a task on a named pool pulls ``image`` with, when the pool does not prefetch it and
    lacks the credentials; None when the pool has what it needs."""
    if pool.image and image == pool.image:
        return None
    found = registries(image, settings)
    return found[0] if found and pool.registry != registry_host(image) else None


def vm_configuration(node: NodeImage, images: list[str], settings: Settings) -> Any:
    """A pool's VM configuration: the node image, Docker, ``images`` prefetched, the registry's credentials."""
    from azure.batch import models as m

    found = registries(images[0], settings) if images else []
    if not found and settings.registry:
        found = registries(settings.registry.rstrip("/") + "/x", settings)
    return m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(
            publisher=node.publisher, offer=node.offer, sku=node.sku, version=node.version
        ),
        node_agent_sku_id=node.node_agent_sku,
        container_configuration=m.BatchContainerConfiguration(
            type=m.ContainerType.DOCKER_COMPATIBLE,
            container_image_names=images or None,
            container_registries=found or None,
        ),
        extensions=[driver_extension(m)] if node.driver_extension else None,
    )


def registries(image: str, settings: Settings) -> list[Any]:
    """The pool's registry reference, when credentials are configured (the password stays in the pool
    spec, where Batch keeps it: never in a task's command line or environment)."""
    user = settings.secrets.registry_username
    password = settings.secrets.registry_password
    if not (user and password) or "/" not in image:
        return []
    from azure.batch import models as m

    return [m.ContainerRegistryReference(registry_server=image.split("/")[0], username=user, password=password)]


def registry_host(image: str) -> str:
    """The registry part of an image name ("" for a Docker Hub name without one)."""
    return image.split("/")[0] if "/" in image else ""


def pool_request(request: PoolRequest, node: NodeImage, settings: Settings, *, client_id: str, now: datetime) -> Any:
    """A named pool at zero nodes, with its autoscale formula, prefetching ``AzBatch.image`` if set."""
    from azure.batch import models as m

    image = settings.image
    values = {
        META_CREATED_BY: CREATED_BY,
        META_KIND: "named",
        META_CREATOR: settings.user or "unknown",
        META_CLIENT: client_id,
        META_IDLE: str(int(request.idle)),
        META_MAX_NODES: str(request.max_nodes),
        META_IMAGE: image,
    }
    return m.BatchPoolCreateOptions(
        id=request.name,
        vm_size=request.vm_size,
        virtual_machine_configuration=vm_configuration(node, [image] if image else [], settings),
        task_slots_per_node=request.slots_per_node,
        enable_inter_node_communication=request.inter_node or None,
        # Spread: a sweep's tasks go to different nodes first, so it uses the pool's width.
        task_scheduling_policy=m.BatchTaskSchedulingPolicy(node_fill_type=m.BatchNodeFillType.SPREAD),
        enable_auto_scale=True,
        auto_scale_formula=autoscale_formula(request, floor=0, mark=now - CLOCK_SKEW),
        auto_scale_evaluation_interval=timedelta(seconds=EVALUATION_INTERVAL),
        metadata=[m.BatchMetadataItem(name=k, value=v) for k, v in values.items() if v],
    )


def autoscale_update(pool: Pool, request: PoolRequest, *, floor: int, now: datetime) -> Any:
    """The pool's formula with a new floor. With an interval, Batch stops the pool's evaluation schedule
    and starts a new one now: the formula is evaluated at once and the pool starts growing (or shrinking)
    without waiting for its next turn."""
    from azure.batch import models as m

    return m.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula=autoscale_formula(request, floor=floor, mark=now - CLOCK_SKEW),
        auto_scale_evaluation_interval=timedelta(seconds=pool.evaluation_interval),
    )
