"""The requests batchmagic sends to Batch, built from plain data: no client, no call, no clock.

Each function takes what the run or the pool is (a :class:`~batchmagic.backends.base.TaskSubmission`,
a :class:`~batchmagic.backends.azure.poolspec.PoolRequest`, the node image, URLs already signed, the
time to mark) and returns the SDK's model, so a test reads the request without a service. The SDK
is imported in the functions: it is heavy, and only a run on Azure needs it.
"""

from __future__ import annotations

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

__all__ = [
    "COMMAND",
    "CREATED_BY",
    "autoscale_update",
    "auto_pool",
    "end_with_tasks",
    "job_request",
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


def job_request(submission: TaskSubmission, pool_info: Any) -> Any:
    """The run's job: ``--timeout`` its wall clock limit, ending with its tasks only once they are in."""
    from azure.batch import models as m

    return m.BatchJobCreateOptions(
        id=submission.run_id,
        display_name=submission.name[:1024],
        pool_info=pool_info,
        # Batch considers a job without tasks complete: terminatejob is set once the tasks are in.
        all_tasks_complete_mode=m.BatchAllTasksCompleteMode.NO_ACTION,
        constraints=m.BatchJobConstraints(max_wall_clock_time=timedelta(seconds=submission.timeout)),
        metadata=run_metadata(submission),
    )


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
            # /dev/shm for a GPU or distributed run; never --gpus (Batch gives the container the GPUs itself)
            container_run_options=container_run_options(
                gpus=submission.gpus, distributed=submission.distributed, shm_size=submission.shm_size
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
