"""The Azure Batch backend: each run is a job on its own auto pool, whose lifetime is the job's.

This is the only module that imports ``azure.batch``. Per run it creates one job (``onAllTasksComplete``
terminatejob, ``maxWallClockTime`` from ``--timeout``) with an auto pool (``poolLifetimeOption`` job,
``keepAlive`` false, a container-ready Ubuntu image with the training image prefetched) and adds the
task: ``python3 -m batchmagic.runner --spec spec.json`` in the training image, the spec arriving as a
resource file through a SAS URL. The run's data is in Blob Storage (:class:`~batchmagic.storage.BlobStore`).

A poll tick costs a fixed number of calls however long the run: the job, its pool, the pool's nodes
(until a task has started) and the task, each with ``$select``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from batchmagic.backends.base import (
    Backend,
    BackendStatus,
    Phase,
    TaskStatus,
    TaskSubmission,
    exit_reason,
    format_duration,
)
from batchmagic.config import Settings
from batchmagic.errors import ConfigError, RunFailed
from batchmagic.protocol import SPEC_FILENAME, Layout
from batchmagic.storage import BlobStore, check_container_name

log = logging.getLogger("batchmagic.backends.azure")

CREATED_BY = "batchmagic"
COMMAND = f"python3 -m batchmagic.runner --spec {SPEC_FILENAME}"
# An Ubuntu image with Docker, as Batch lists it in `list_supported_images` (container-capable).
IMAGE_REFERENCE = {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"}
NODE_AGENT_SKU = "batch.node.ubuntu 22.04"
_VM_SIZE = re.compile(r"^(Standard|Basic)_[A-Z]+(\d+)[a-z-]*(\d*)[a-z]*(_[A-Za-z0-9]+)*$", re.IGNORECASE)
_QUOTA_CODES = {
    "AccountCoreQuotaReached",
    "AccountVMFamilyCoreQuotaReached",
    "AccountLowPriorityCoreQuotaReached",
    "AccountSpotCoreQuotaReached",
}
T = TypeVar("T")


def vm_cores(vm_size: str) -> int:
    """vCPUs of an Azure VM size, from the table or, for sizes it lacks, from the name.

    Raises
    ------
    ConfigError
        The name is not an Azure VM size at all.
    """
    from batchmagic.vmsizes import cores_for

    cores = cores_for(vm_size)
    if cores is not None:
        return cores
    match = _VM_SIZE.match(vm_size or "")
    if not match:
        raise ConfigError(
            f"--vm {vm_size!r} is not an Azure VM size: use a name like Standard_D4s_v3 or Standard_E32_v3 "
            "(az vm list-sizes --location <region> lists them)"
        )
    return int(match.group(2))


@dataclass
class _AzureRun:
    submission: TaskSubmission
    pool_id: str = ""
    started_task: bool = False
    released: bool = False


class AzureBackend(Backend):
    """Runs tasks on Azure Batch; see the module docstring for what it creates."""

    name = "azure"
    poll_intervals = (1.0, 10.0)
    store: BlobStore

    def __init__(self, client: Any, store: BlobStore, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self._runs: dict[str, _AzureRun] = {}
        self._checked = False
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureBackend:
        """Build the Batch client and the run store from ``settings`` (and its secrets).

        Raises
        ------
        ConfigError
            A missing or invalid setting: the message names it and how to set it.
        """
        if not settings.batch_endpoint:
            raise ConfigError(
                "AZURE_BATCH_ENDPOINT is not set: export it (https://<account>.<region>.batch.azure.com) "
                "or %config AzBatch.batch_endpoint = '...'"
            )
        if not re.match(r"^https?://[^/\s]+/?$", settings.batch_endpoint):
            raise ConfigError(f"AZURE_BATCH_ENDPOINT {settings.batch_endpoint!r} is not a URL like https://host")
        try:
            check_container_name(settings.container)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        # With a registry, Session.submit builds (or reuses) the image and passes it in the submission.
        if not settings.image and not settings.registry:
            raise ConfigError(
                "BATCHMAGIC_IMAGE is not set: export it to the training image to run "
                "(e.g. myregistry.azurecr.io/batchmagic:env-...) or %config AzBatch.image = '...', "
                "or set BATCHMAGIC_REGISTRY to have the image built for the cell"
            )
        return cls(_batch_client(settings), _blob_store(settings), settings)

    # --- the protocol ---

    @property
    def default_image(self) -> str:
        return self.settings.image

    def check_access(self) -> None:
        """One cheap call to each service, so bad credentials fail before anything is created."""
        if self._checked:
            return
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

        endpoint = self.settings.batch_endpoint
        try:
            next(iter(self.client.list_supported_images(max_results=1)), None)
        except (ClientAuthenticationError, HttpResponseError) as err:
            code = _code(err) or str(err.status_code)
            if getattr(err, "status_code", None) in (401, 403) or code == "AuthenticationFailed":
                raise ConfigError(
                    f"Azure Batch at {endpoint} refused the credentials ({code}): "
                    "check AZURE_BATCH_ACCOUNT and AZURE_BATCH_ACCESS_KEY, or your az login"
                ) from err
            raise ConfigError(f"Azure Batch at {endpoint} answered {code}: {_message(err)}") from err
        except ServiceRequestError as err:
            raise ConfigError(f"cannot reach Azure Batch at {endpoint}: {err}; check AZURE_BATCH_ENDPOINT") from err
        try:
            self.store.ensure_container()
        except (ClientAuthenticationError, HttpResponseError) as err:
            raise ConfigError(
                f"Blob Storage refused access to container {self.settings.container!r} ({_code(err) or err}): "
                "check AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL and your role on it"
            ) from err
        except ServiceRequestError as err:
            raise ConfigError(f"cannot reach Blob Storage ({err}): check the storage settings") from err
        self._checked = True

    def validate(self, submission: TaskSubmission) -> None:
        """Everything that can be checked before a byte is uploaded or a resource created."""
        vm_cores(submission.vm_size)
        if submission.nodes < 1:
            raise ConfigError(f"--nodes must be at least 1, not {submission.nodes}")
        self.check_access()

    def submit(self, submission: TaskSubmission) -> None:
        from azure.batch import models as m

        run = _AzureRun(submission)
        self._runs[submission.run_id] = run
        expiry = submission.sas_expiry or datetime.now(UTC) + timedelta(seconds=submission.timeout, hours=1)
        metadata = [
            m.BatchMetadataItem(name="created-by", value=CREATED_BY),
            m.BatchMetadataItem(name="run-id", value=submission.run_id),
            m.BatchMetadataItem(name="ledger-id", value=submission.ledger_id),
        ]
        pool = m.BatchPoolSpecification(
            vm_size=submission.vm_size,
            virtual_machine_configuration=m.VirtualMachineConfiguration(
                image_reference=m.BatchVmImageReference(**IMAGE_REFERENCE),
                node_agent_sku_id=NODE_AGENT_SKU,
                container_configuration=m.BatchContainerConfiguration(
                    type=m.ContainerType.DOCKER_COMPATIBLE,
                    container_image_names=[submission.image or self.settings.image],
                    container_registries=_registries(submission.image or self.settings.image, self.settings) or None,
                ),
            ),
            task_slots_per_node=max(1, submission.slots_per_node),
            target_dedicated_nodes=0 if submission.low_priority else submission.nodes,
            target_low_priority_nodes=submission.nodes if submission.low_priority else 0,
            metadata=metadata,
        )
        limit = timedelta(seconds=submission.timeout)
        job = m.BatchJobCreateOptions(
            id=submission.run_id,
            display_name=submission.name[:1024],
            pool_info=m.BatchPoolInfo(
                auto_pool_specification=m.BatchAutoPoolSpecification(
                    pool_lifetime_option=m.BatchPoolLifetimeOption.JOB,
                    keep_alive=False,
                    auto_pool_id_prefix="bm",
                    pool=pool,
                )
            ),
            # Batch considers a job without tasks complete: terminatejob is set once the tasks are in.
            all_tasks_complete_mode=m.BatchAllTasksCompleteMode.NO_ACTION,
            constraints=m.BatchJobConstraints(max_wall_clock_time=limit),
            metadata=metadata,
        )
        self._call(lambda: self.client.create_job(job), "create the job")
        outbox = self.store.outbox(submission.run_id)
        outbox.ensure_container()
        outputs_url = outbox.container_url(permissions="cw", expiry=expiry)  # write-only, this run's container
        tasks = []
        for task_id in submission.task_ids:
            spec_url = self.store.url(submission.spec_keys[task_id], permissions="r", expiry=expiry)
            tasks.append(
                m.BatchTaskCreateOptions(
                    id=task_id,
                    command_line=COMMAND,
                    container_settings=m.BatchTaskContainerSettings(
                        image_name=submission.image or self.settings.image,
                        working_directory=m.ContainerWorkingDirectory.TASK_WORKING_DIRECTORY,
                    ),
                    resource_files=[m.ResourceFile(http_url=spec_url, file_path=SPEC_FILENAME)],
                    output_files=[
                        m.OutputFile(
                            file_pattern="../std*.txt",
                            destination=m.OutputFileDestination(
                                container=m.OutputFileBlobContainerDestination(
                                    container_url=outputs_url,
                                    path=Layout.process_files(submission.run_id, task_id),
                                )
                            ),
                            upload_options=m.OutputFileUploadConfiguration(
                                upload_condition=m.OutputFileUploadCondition.TASK_COMPLETION
                            ),
                        )
                    ],
                    environment_settings=[m.EnvironmentSetting(name=k, value=v) for k, v in submission.env.items()]
                    or None,
                    constraints=m.BatchTaskConstraints(
                        max_wall_clock_time=limit, max_task_retry_count=submission.retries
                    ),
                )
            )
        if len(tasks) == 1:
            self._call(lambda: self.client.create_task(submission.run_id, tasks[0]), "add the task")
        else:
            self._call(lambda: self.client.create_tasks(submission.run_id, tasks, max_concurrency=4), "add the tasks")
        self._call(
            lambda: self.client.update_job(
                submission.run_id,
                m.BatchJobUpdateOptions(all_tasks_complete_mode=m.BatchAllTasksCompleteMode.TERMINATE_JOB),
            ),
            "set the job to end with its tasks",
        )

    def poll(self, run_id: str) -> BackendStatus:
        from azure.core.exceptions import ResourceNotFoundError

        run = self._runs[run_id]
        sub = run.submission
        job = self._call(lambda: self.client.get_job(run_id, select=["id", "state", "executionInfo"]), "read the job")
        info = job.execution_info
        if not run.pool_id and info is not None and info.pool_id:
            run.pool_id = info.pool_id
        tasks, preparing = self._task_statuses(run_id, sub)
        if info is not None and info.scheduling_error is not None:
            err = info.scheduling_error
            return BackendStatus(
                phase=Phase.FAILED, tasks=tasks, error=f"Batch could not create the pool ({err.code}: {err.message})"
            )
        if _value(job.state) in ("completed", "terminating") and info is not None:
            reason = info.termination_reason or ""
            if reason == "MaxWallClockTimeExpiry":
                return BackendStatus(
                    phase=Phase.FAILED,
                    tasks=tasks,
                    error=f"the run went past its --timeout of {format_duration(sub.timeout)} and Batch ended it",
                )
            if reason and reason != "AllTasksComplete" and not all(t.state == "completed" for t in tasks.values()):
                return BackendStatus(phase=Phase.FAILED, tasks=tasks, error=f"the job ended ({reason})")
        if all(t.state == "completed" for t in tasks.values()):
            return BackendStatus(phase=Phase.RUNNING, tasks=tasks)
        if any(t.state == "running" for t in tasks.values()) or run.started_task:
            run.started_task = True
            return BackendStatus(phase=Phase.RUNNING, tasks=tasks)
        if preparing:
            return BackendStatus(phase=Phase.PULLING_IMAGE, tasks=tasks, detail="pulling the image")
        if not run.pool_id:
            return BackendStatus(phase=Phase.CREATING_POOL, tasks=tasks)
        try:
            pool = self.client.get_pool(
                run.pool_id,
                select=[
                    "id", "state", "allocationState", "resizeErrors", "currentDedicatedNodes",
                    "currentLowPriorityNodes", "targetDedicatedNodes", "targetLowPriorityNodes",
                ],
            )  # fmt: skip
        except ResourceNotFoundError:
            return BackendStatus(phase=Phase.CREATING_POOL, tasks=tasks)
        error = self._resize_error(pool, sub)
        if error:
            return BackendStatus(phase=Phase.FAILED, tasks=tasks, error=error)
        nodes = list(self.client.list_nodes(run.pool_id, select=["id", "state", "errors"]))
        unusable = [n for n in nodes if _value(n.state) in ("unusable", "starttaskfailed")]
        if unusable:
            errs = unusable[0].errors or []
            why = f"{errs[0].code}: {errs[0].message}" if errs else unusable[0].state
            return BackendStatus(
                phase=Phase.FAILED,
                tasks=tasks,
                error=f"the node could not start ({why}); check BATCHMAGIC_IMAGE and the registry settings",
            )
        ready = sum(1 for n in nodes if _value(n.state) in ("idle", "running"))
        want = sub.nodes
        if ready == 0 and _value(pool.allocation_state) == "resizing" and not nodes:
            return BackendStatus(phase=Phase.ALLOCATING, tasks=tasks, detail=f"{ready} of {want} {sub.vm_size} ready")
        if ready == 0:
            return BackendStatus(phase=Phase.NODE_STARTING, tasks=tasks, detail=f"{len(nodes)} of {want} booting")
        return BackendStatus(phase=Phase.QUEUED, tasks=tasks, detail=f"{ready} of {want} nodes ready")

    def _task_statuses(self, run_id: str, sub: TaskSubmission) -> tuple[dict[str, TaskStatus], bool]:
        """The tasks' statuses, and whether any is preparing (downloading resources, pulling its image)."""
        preparing = False
        select = ["id", "state", "executionInfo", "nodeInfo"]
        if len(sub.task_ids) == 1:
            found = [self._call(lambda: self.client.get_task(run_id, sub.task_ids[0], select=select), "read the task")]
        else:
            found = list(self.client.list_tasks(run_id, select=select))
        statuses = {tid: TaskStatus(tid) for tid in sub.task_ids}
        for task in found:
            status = statuses.setdefault(task.id, TaskStatus(task.id))
            state = _value(task.state)
            status.state = {"active": "pending", "preparing": "pending"}.get(state, state)
            if state == "preparing":
                preparing = True
            if task.node_info is not None:
                status.node = task.node_info.node_id or ""
            info = task.execution_info
            if info is not None:
                status.started = info.start_time.timestamp() if info.start_time else None
                status.ended = info.end_time.timestamp() if info.end_time else None
                status.exit_code = info.exit_code
                if state == "completed":
                    status.failure = _task_failure(info, sub)
        return statuses, preparing

    def _resize_error(self, pool: Any, sub: TaskSubmission) -> str:
        errors = pool.resize_errors or []
        current = (pool.current_dedicated_nodes or 0) + (pool.current_low_priority_nodes or 0)
        if not errors or current > 0 or _value(pool.allocation_state) != "steady":
            return ""
        err = errors[0]
        message = (err.message or "").split("\n")[0]
        if err.code in _QUOTA_CODES:
            cores = vm_cores(sub.vm_size) * sub.nodes
            kind = "low-priority" if sub.low_priority else "dedicated"
            return (
                f"{err.code}: {sub.nodes} x {sub.vm_size} needs {cores} {kind} cores, over the account's quota "
                f"({message}). Ask for a quota increase, pick a smaller --vm, or use --low-priority"
            )
        return f"the pool could not get nodes ({err.code}: {message})"

    def cancel(self, run_id: str) -> None:
        self._terminate(run_id)

    def release(self, run_id: str) -> list[str]:
        run = self._runs.get(run_id)
        if run is None or run.released:
            return []
        removed = self._terminate(run_id)  # raises when it cannot: a later teardown tries again
        run.released = True
        return removed

    def _terminate(self, run_id: str) -> list[str]:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            job = self.client.get_job(run_id, select=["id", "state", "executionInfo"])
        except ResourceNotFoundError:
            return []
        if _value(job.state) in ("completed", "deleting"):
            return []
        pool_id = job.execution_info.pool_id if job.execution_info else ""
        try:
            # azure-batch 15.1 raises ValueError when the options are empty: give a reason.
            options: Any = {"terminateReason": "batchmagic teardown"}
            self.client.begin_terminate_job(run_id, options, polling_interval=1).result(timeout=60)
        except HttpResponseError as err:
            if _code(err) not in ("JobCompleted", "JobBeingTerminated", "JobNotFound"):
                raise RunFailed(f"could not terminate job {run_id}: {_message(err)}") from err
        return [f"Azure Batch job {run_id}" + (f" and its auto pool {pool_id}" if pool_id else "")]

    def task_log_hint(self, run_id: str, task_id: str) -> str:
        """Batch's own stderr of the task (uploaded by outputFiles), its last lines."""
        try:
            text = (
                self.store.outbox(run_id)
                .get_bytes(f"{Layout.process_files(run_id, task_id)}/stderr.txt")
                .decode(errors="replace")
            )
        except KeyError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()][-3:]
        return "Batch's stderr of the task ends: " + " | ".join(lines) if lines else ""

    def teardown_all(self, *, blobs: bool = False) -> list[str]:
        """Find batchmagic-tagged jobs and pools left by any client and end them."""
        from azure.core.exceptions import HttpResponseError

        removed: list[str] = []
        for job in self.client.list_jobs(filter="state eq 'active'", select=["id", "state", "metadata"]):
            if _tagged(job.metadata):
                removed.extend(self._terminate(job.id))
        for pool in self.client.list_pools(select=["id", "state", "metadata"]):
            if _tagged(pool.metadata) and _value(pool.state) != "deleting" and not pool.id.startswith("bm_"):
                try:
                    self.client.begin_delete_pool(pool.id, polling_interval=1)
                    removed.append(f"Azure Batch pool {pool.id}")
                except HttpResponseError as err:
                    log.warning("could not delete pool %s: %s", pool.id, _message(err))
        if blobs:
            count = self.store.delete_prefix(Layout.RUNS)
            for name in self.store.outbox_names():
                box = BlobStore(self.store._service().get_container_client(name))  # noqa: SLF001
                count += len(box.list_keys(""))
                box.delete_container()
            if count:
                removed.append(f"{count} blobs of run data in container {self.settings.container} and its runs'")
        return removed

    # --- helpers ---

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """Translate azure-core errors into ours, at the boundary."""
        from azure.core.exceptions import HttpResponseError, ServiceRequestError

        try:
            return fn()
        except HttpResponseError as err:
            code = _code(err)
            if getattr(err, "status_code", None) in (401, 403):
                raise ConfigError(f"Azure Batch refused to {what} ({code}): check the Batch credentials") from err
            if getattr(err, "status_code", None) == 400:
                raise ConfigError(f"Azure Batch refused to {what}: {code}: {_message(err)}") from err
            raise RunFailed(f"could not {what}: {code or err.status_code}: {_message(err)}") from err
        except ServiceRequestError as err:
            raise RunFailed(f"could not reach Azure Batch to {what}: {err}") from err


def _task_failure(info: Any, sub: TaskSubmission) -> str:
    """One line for a task that ended without the runner's own verdict; empty when the result explains."""
    failure = info.failure_info
    details = {d.name: d.value for d in (failure.details or [])} if failure is not None else {}
    if "MaxWallClockTime" in details:
        return f"the task went past its --timeout of {format_duration(sub.timeout)} and Batch ended it"
    if info.exit_code is None and failure is not None:
        return f"{failure.code}: {str(failure.message).splitlines()[0]}"
    return exit_reason(info.exit_code)


def _value(enum_or_str: Any) -> str:
    """The wire string of an SDK enum (``str()`` of one gives its class name)."""
    return str(getattr(enum_or_str, "value", enum_or_str) or "")


def _tagged(metadata: Any) -> bool:
    return any(item.name == "created-by" and item.value == CREATED_BY for item in metadata or [])


def _code(err: Any) -> str:
    error = getattr(err, "error", None)
    return getattr(error, "code", None) or ""


def _message(err: Any) -> str:
    error = getattr(err, "error", None)
    text = getattr(error, "message", None) or str(err)
    return str(text).split("\n")[0]


def _registries(image: str, settings: Settings) -> list[Any]:
    """The pool's registry reference, when credentials are configured (the password stays in the pool
    spec, where Batch keeps it: never in a task's command line or environment)."""
    user = settings.secrets.registry_username
    password = settings.secrets.registry_password
    if not (user and password) or "/" not in image:
        return []
    from azure.batch import models as m

    return [m.ContainerRegistryReference(registry_server=image.split("/")[0], username=user, password=password)]


def _batch_client(settings: Settings) -> Any:
    from azure.batch import BatchClient

    key = settings.secrets.batch_key
    if key:
        if not settings.batch_account:
            raise ConfigError("AZURE_BATCH_ACCOUNT is not set: export the Batch account name to go with its key")
        from azure.core.credentials import AzureNamedKeyCredential

        credential: Any = AzureNamedKeyCredential(settings.batch_account, key)
    else:
        if settings.batch_endpoint.startswith("http://"):
            raise ConfigError(
                "AZURE_BATCH_ACCESS_KEY is not set, and Entra ID tokens need an https endpoint: set the key"
            )
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    logging.getLogger("azure.batch._utils.model_base").setLevel(logging.ERROR)
    return BatchClient(settings.batch_endpoint.rstrip("/"), credential)


def _blob_store(settings: Settings) -> BlobStore:
    connection = settings.secrets.storage_connection_string
    try:
        if connection:
            return BlobStore.from_connection_string(connection, settings.container)
        if settings.storage_account_url:
            from azure.identity import DefaultAzureCredential

            return BlobStore.from_account_url(
                settings.storage_account_url, settings.container, DefaultAzureCredential()
            )
    except ValueError as err:
        raise ConfigError(f"storage settings: {err}") from None
    raise ConfigError(
        "no Blob Storage configured: export AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL "
        "(with az login) for the account that holds run data"
    )
