"""The Azure Batch backend: each run is a job, on its own auto pool or on a named pool.

This is the only module that imports ``azure.batch``. Per run it creates one job (``onAllTasksComplete``
terminatejob, ``maxWallClockTime`` from ``--timeout``) and adds the task: ``python3 -m batchmagic.runner
--spec spec.json`` in the training image, the spec arriving as a resource file through a SAS URL. The
job runs on an auto pool (``poolLifetimeOption`` job, ``keepAlive`` false, a container-ready Ubuntu image
with the training image prefetched) or, with ``--pool NAME``, on a named pool that outlives it: named
pools (:mod:`batchmagic.backends.azure.poolspec`) are created, listed, resized and deleted here too. The node image is
chosen from the account's supported images (:mod:`batchmagic.backends.azure.nodeimages`). The run's data is in Blob
Storage (:class:`~batchmagic.storage.BlobStore`).

A poll tick costs a fixed number of calls however long the run: the job, its pool, the pool's nodes
(until a task has started) and the task, each with ``$select``. A sweep's tick does not read its whole
task list: it reads the job's task counts and only the tasks whose state changed since the last tick
(``$filter`` on ``stateTransitionTime``), and the counts check what it holds (see :meth:`AzureBackend.poll`).
While a task runs, the nodes the run holds (for its cost) are read every :data:`HOLDING_INTERVAL` seconds.
"""

from __future__ import annotations

import base64
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar, cast

from batchmagic.backends.azure.nodeimages import NodeImage, SupportedImage, choose_node_image
from batchmagic.backends.azure.poolspec import (
    CLOCK_SKEW,
    DEFAULT_IDLE,
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
    formula_parameters,
    nodes_for,
    scale_to_zero_at,
)
from batchmagic.backends.azure.ranks import as_multi_instance, batch_view, lost_node, rank_statuses
from batchmagic.backends.base import (
    Backend,
    BackendStatus,
    Holding,
    Phase,
    TaskStatus,
    TaskSubmission,
    exit_reason,
    format_duration,
)
from batchmagic.config import Settings
from batchmagic.errors import ConfigError, RunFailed
from batchmagic.protocol import SPEC_FILENAME, Layout, NodeState, RankGroup
from batchmagic.storage import BlobStore, check_container_name

log = logging.getLogger("batchmagic.backends.azure")

CREATED_BY = "batchmagic"
COMMAND = f"python3 -m batchmagic.runner --spec {SPEC_FILENAME}"
_POOL_SELECT = [
    "id", "state", "allocationState", "vmSize", "currentDedicatedNodes", "currentLowPriorityNodes",
    "targetDedicatedNodes", "targetLowPriorityNodes", "taskSlotsPerNode", "metadata", "autoScaleFormula",
    "autoScaleEvaluationInterval", "creationTime", "resizeErrors", "virtualMachineConfiguration",
    "enableInterNodeCommunication",
]  # fmt: skip
_VM_SIZE = re.compile(r"^(Standard|Basic)_[A-Z]+(\d+)[a-z-]*(\d*)[a-z]*(_[A-Za-z0-9]+)*$", re.IGNORECASE)
_QUOTA_CODES = {
    "AccountCoreQuotaReached",
    "AccountVMFamilyCoreQuotaReached",
    "AccountLowPriorityCoreQuotaReached",
    "AccountSpotCoreQuotaReached",
}
T = TypeVar("T")
HOLDING_INTERVAL = 30.0  # seconds between reads of the pool's node counts once a task runs (the cost)
_TASK_SELECT = ["id", "state", "stateTransitionTime", "executionInfo", "nodeInfo"]


def vm_cores(vm_size: str) -> int:
    """vCPUs of an Azure VM size, from the table or, for sizes it lacks, from the name.

    Raises
    ------
    ConfigError
        The name is not an Azure VM size at all.
    """
    from batchmagic.backends.azure.vmsizes import cores_for

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
    pool: Pool | None = None  # the named pool it runs on (None: its own auto pool)
    prefetched: tuple[str, ...] = ()  # images its pool's nodes pull as they start
    # What the client knows of the tasks, updated by what changed (a sweep's tick reads no more).
    tasks: dict[str, TaskStatus] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)  # task id -> Batch's state (active, preparing...)
    tally: Counter[str] = field(default_factory=Counter)  # Batch state -> tasks in it, per ``states``
    watermark: datetime | None = None  # the latest stateTransitionTime read
    synced: bool = False  # the whole list was read once
    disagreements: int = 0  # consecutive ticks where the job's task counts disagreed with ``tally``
    full_reads: int = 0  # whole-list reads (the first, and each resynchronization)
    unfiltered: bool = False  # the service refused the stateTransitionTime filter: read the whole list
    holding: Holding | None = None
    holding_read: float = 0.0  # time.monotonic() of the last node-count read
    changed: set[str] = field(default_factory=set)  # tasks read this tick

    def __post_init__(self) -> None:
        self.tasks = {tid: TaskStatus(tid) for tid in self.submission.task_ids}


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
        self._images: list[SupportedImage] | None = None  # the account's supported images, listed once
        self._named: dict[str, Pool] = {}  # named pools found by validate, for the submit that follows
        self._ranks: dict[str, TaskSubmission] = {}  # distributed runs: their ranks (Batch runs one task)
        self._warm: set[tuple[str, str, str]] = set()  # (pool, node, image) a task of ours ran on: pulled there

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
        return cls(_batch_client(settings), _blob_store(settings), settings)

    # --- the protocol ---

    @property
    def default_image(self) -> str:
        return self.settings.image

    def check_access(self) -> None:
        """One cheap call to each service, so bad credentials fail before anything is created."""
        if self._checked:
            return
        self.check_batch()
        self.check_storage()
        self._checked = True

    def check_batch(self) -> None:
        """One cheap call to Batch: a refused key or an unreachable endpoint is one line (ConfigError)."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

        endpoint = self.settings.batch_endpoint
        try:
            # The account's node images: the one call that proves the credentials, and the choice of image.
            self._images = [_supported_image(i) for i in self.client.list_supported_images()]
        except (ClientAuthenticationError, HttpResponseError) as err:
            code = _code(err) or str(err.status_code)
            if getattr(err, "status_code", None) in (401, 403) or code == "AuthenticationFailed":
                raise ConfigError(
                    f"Azure Batch at {endpoint} refused the credentials ({code}): "
                    "check AZURE_BATCH_ACCOUNT and AZURE_BATCH_ACCESS_KEY, or your az login"
                ) from err
            raise ConfigError(f"Azure Batch at {endpoint} answered {code}: {_message(err)}") from err
        except ServiceRequestError as err:
            raise ConfigError(
                f"cannot reach Azure Batch at {endpoint} ({_first_line(err)}): check AZURE_BATCH_ENDPOINT"
            ) from err

    def check_storage(self) -> None:
        """The run container exists (created if not): refused access is one line (ConfigError)."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

        try:
            self.store.ensure_container()
        except (ClientAuthenticationError, HttpResponseError) as err:
            raise ConfigError(
                f"Blob Storage refused access to container {self.settings.container!r} "
                f"({_code(err) or _storage_code(err)}): check AZURE_STORAGE_CONNECTION_STRING or "
                "AZURE_STORAGE_ACCOUNT_URL and your role on it"
            ) from err
        except ServiceRequestError as err:
            raise ConfigError(f"cannot reach Blob Storage ({_first_line(err)}): check the storage settings") from err

    def validate(self, submission: TaskSubmission) -> None:
        """Everything that can be checked before a byte is uploaded or a resource created.

        On a named pool the run takes the pool's VM size (``submission.vm_size`` is set to it).
        """
        # With a registry, Session.submit builds (or reuses) the image and passes it in the submission.
        # (Checked here, not when the backend is made: managing named pools needs no image.)
        if not self.settings.image and not self.settings.registry:
            raise ConfigError(
                "BATCHMAGIC_IMAGE is not set: export it to the training image to run "
                "(e.g. myregistry.azurecr.io/batchmagic:env-...) or %config AzBatch.image = '...', "
                "or set BATCHMAGIC_REGISTRY to have the image built for the cell"
            )
        if submission.pool:
            self.check_access()
            pool = self.get_pool(submission.pool)
            if pool.state != "active":
                raise ConfigError(f"pool {pool.name} is being deleted: create it again, or run without --pool")
            submission.vm_size = pool.vm_size
            if submission.distributed and not (pool.inter_node and pool.slots_per_node == 1):
                raise ConfigError(
                    f"pool {pool.name} cannot take --distributed runs (Batch needs inter-node communication and one "
                    "task per node): %azbatch_pool create NAME --inter-node makes one, or run without --pool"
                )
            self._named[submission.run_id] = pool
            return
        vm_cores(submission.vm_size)
        if submission.nodes < 1:
            raise ConfigError(f"--nodes must be at least 1, not {submission.nodes}")
        # With a registry, Session.submit builds (or reuses) the image and passes it in the submission.
        if not (submission.image or self.settings.image or self.settings.registry):
            raise ConfigError(
                "BATCHMAGIC_IMAGE is not set: export it to the training image to run "
                "(e.g. myregistry.azurecr.io/batchmagic:env-...) or %config AzBatch.image = '...', "
                "or set BATCHMAGIC_REGISTRY to have the image built for the cell"
            )
        self.check_access()
        self.node_image(submission.vm_size)

    def node_image(self, vm_size: str) -> NodeImage:
        """The image a new pool of ``vm_size`` boots: ``AzBatch.node_image``, else the newest fitting one
        the account lists (see :mod:`batchmagic.backends.azure.nodeimages`). ConfigError when none fits."""
        self.check_access()
        today = datetime.now(UTC).date()
        return choose_node_image(self._images or [], vm_size, today=today, override=self.settings.node_image)

    def submit(self, submission: TaskSubmission) -> None:
        from azure.batch import models as m

        ranks, submission = self._follow_ranks(submission)
        run = _AzureRun(submission)
        self._runs[submission.run_id] = run
        expiry = submission.sas_expiry or datetime.now(UTC) + timedelta(seconds=submission.timeout, hours=1)
        image = submission.image or self.settings.image
        metadata = [
            m.BatchMetadataItem(name="created-by", value=CREATED_BY),
            m.BatchMetadataItem(name="run-id", value=submission.run_id),
            m.BatchMetadataItem(name="ledger-id", value=submission.ledger_id),
        ]
        task_registry = None
        if submission.pool:
            # A named pool: the job only points at it, and its end never touches the pool.
            named = self._named.pop(submission.run_id, None) or self.get_pool(submission.pool)
            run.pool, run.pool_id = named, named.name
            run.prefetched = (named.image,) if named.image else ()
            if image not in run.prefetched:
                # Pulled by the task's container settings, once per node; credentials only if the pool lacks them.
                registries = _registries(image, self.settings)
                task_registry = registries[0] if registries and named.registry != _registry_host(image) else None
            pool_info = m.BatchPoolInfo(pool_id=named.name)
        else:
            node = self.node_image(submission.vm_size)
            run.prefetched = (image,)
            pool = m.BatchPoolSpecification(
                vm_size=submission.vm_size,
                virtual_machine_configuration=_vm_configuration(node, [image], self.settings),
                task_slots_per_node=1 if submission.distributed else max(1, submission.slots_per_node),
                enable_inter_node_communication=submission.distributed or None,
                target_dedicated_nodes=0 if submission.low_priority else submission.nodes,
                target_low_priority_nodes=submission.nodes if submission.low_priority else 0,
                metadata=metadata,
            )
            pool_info = m.BatchPoolInfo(
                auto_pool_specification=m.BatchAutoPoolSpecification(
                    pool_lifetime_option=m.BatchPoolLifetimeOption.JOB,
                    keep_alive=False,
                    auto_pool_id_prefix="bm",
                    pool=pool,
                )
            )
        limit = timedelta(seconds=submission.timeout)
        job = m.BatchJobCreateOptions(
            id=submission.run_id,
            display_name=submission.name[:1024],
            pool_info=pool_info,
            # Batch considers a job without tasks complete: terminatejob is set once the tasks are in.
            all_tasks_complete_mode=m.BatchAllTasksCompleteMode.NO_ACTION,
            constraints=m.BatchJobConstraints(max_wall_clock_time=limit),
            metadata=metadata,
        )
        self._call(
            lambda: self.client.create_job(job),
            "create the job",
            accept=lambda err: _code(err) == "JobExists" and self._job_is_ours(submission.run_id),
        )
        try:
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
                            image_name=image,
                            working_directory=m.ContainerWorkingDirectory.TASK_WORKING_DIRECTORY,
                            registry=task_registry,
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
                        constraints=m.BatchTaskConstraints(
                            max_wall_clock_time=limit, max_task_retry_count=submission.retries
                        ),
                    )
                )
            if ranks is not None:
                as_multi_instance(m, tasks[0], ranks, self._upload_group(ranks, expiry))
            if len(tasks) == 1:
                self._call(  # the job is this run's: a task of the same id in it is the one a lost answer made
                    lambda: self.client.create_task(submission.run_id, tasks[0]),
                    "add the task",
                    accept=lambda err: _code(err) == "TaskExists",
                )
            else:
                self._call(
                    lambda: self.client.create_tasks(submission.run_id, tasks, max_concurrency=4), "add the tasks"
                )
            self._call(
                lambda: self.client.update_job(
                    submission.run_id,
                    m.BatchJobUpdateOptions(all_tasks_complete_mode=m.BatchAllTasksCompleteMode.TERMINATE_JOB),
                ),
                "set the job to end with its tasks",
                # A retry after a lost answer: the first call took, and the job has ended with its tasks.
                accept=lambda err: _code(err) in ("JobCompleted", "JobBeingTerminated"),
            )
            if run.pool is not None:  # a distributed run's one task holds a node per instance
                self._grow_for(run.pool, ranks.nodes if ranks is not None else len(tasks))
        except BaseException:  # Ctrl-C too: a half-made run leaves no job (nor its auto pool) behind
            self._delete_job(submission.run_id)
            raise

    def attach(self, submission: TaskSubmission, *, take_over: bool = True) -> None:
        """Follow a job another client submitted: its tasks' states are read whole on the first poll."""
        _ranks, submission = self._follow_ranks(submission)
        run = _AzureRun(submission)
        if submission.pool:
            run.pool = self.get_pool(submission.pool)
            run.pool_id = run.pool.name
        self._runs[submission.run_id] = run

    def poll(self, run_id: str) -> BackendStatus:
        run = self._runs[run_id]
        run.changed, reads = set(), run.full_reads
        status = self._status(run_id)
        status.completed = run.tally["completed"]
        status.changed = frozenset(run.changed) if run.full_reads == reads else None
        if status.holding is None:
            status.holding = run.holding
        ranks = self._ranks.get(run_id)
        return status if ranks is None else self._rank_status(ranks, status)

    def _follow_ranks(self, submission: TaskSubmission) -> tuple[TaskSubmission | None, TaskSubmission]:
        """A distributed run is one Batch task: (the ranks' submission, what Batch runs); else (None, it)."""
        if not submission.distributed:
            return None, submission
        self._ranks[submission.run_id] = submission
        return submission, batch_view(submission)

    def _upload_group(self, sub: TaskSubmission, expiry: datetime) -> str:
        """The run's RankGroup in the store (each node reads it); its read URL."""
        group = RankGroup(
            run_id=sub.run_id,
            nodes=sub.nodes,
            procs_per_node=sub.procs_per_node,
            master_port=sub.master_port,
            specs=tuple(self.store.url(sub.spec_keys[t], permissions="r", expiry=expiry) for t in sub.task_ids),
            states=tuple(
                self.store.url(Layout.node_state(sub.run_id, n), permissions="rcw", expiry=expiry)
                for n in range(sub.nodes)
            ),
        )
        self.store.put_bytes(Layout.group(sub.run_id), group.to_json())
        return self.store.url(Layout.group(sub.run_id), permissions="r", expiry=expiry)

    def _rank_status(self, sub: TaskSubmission, status: BackendStatus) -> BackendStatus:
        """The Batch task's status as the ranks': each from its node's state; a lost node ends the task."""
        task = status.tasks.get(sub.task_ids[0]) or TaskStatus(sub.task_ids[0])
        states: list[NodeState | None] = []
        for node in range(sub.nodes):
            try:
                states.append(NodeState.from_json(self.store.get_bytes(Layout.node_state(sub.run_id, node))))
            except (KeyError, ValueError):
                states.append(None)  # that node's supervisor has not started (or is mid-write)
        error = status.error
        if not error and task.state == "running":
            subtasks = self._call(lambda: list(self.client.list_subtasks(sub.run_id, task.task_id)), "read the nodes")
            error = lost_node(subtasks)
            if error:
                self._terminate(sub.run_id)
        tasks = rank_statuses(sub, task, states)
        return replace(status, tasks=tasks, completed=None, changed=None, error=error)

    def _status(self, run_id: str) -> BackendStatus:
        from azure.core.exceptions import ResourceNotFoundError

        run = self._runs[run_id]
        sub = run.submission
        job = self._call(lambda: self.client.get_job(run_id, select=["id", "state", "executionInfo"]), "read the job")
        info = job.execution_info
        if not run.pool_id and info is not None and info.pool_id:
            run.pool_id = info.pool_id
        preparing = self._task_statuses(run_id, run)
        tasks = run.tasks
        completed = run.tally["completed"]
        done = completed >= len(tasks)
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
            if reason and reason != "AllTasksComplete" and not done:
                return BackendStatus(phase=Phase.FAILED, tasks=tasks, error=f"the job ended ({reason})")
        image = sub.image or self.settings.image
        for tid in run.changed:  # the tasks read this tick (all of them on a whole-list read)
            task = tasks[tid]
            if task.node and task.state in ("running", "completed"):
                self._warm.add((run.pool_id, task.node, image))  # the image is on that node now
        if done:
            return BackendStatus(phase=Phase.RUNNING, tasks=tasks, note=self._scale_note(run), holding=run.holding)
        if run.tally["running"] or run.started_task:
            run.started_task = True
            holding = self._holding(run)
            return BackendStatus(phase=Phase.RUNNING, tasks=tasks, completed=completed, holding=holding)
        if preparing:
            # Preparing is resource files and, on a node that lacks the image, its pull: say "pulling image"
            # only for a node that really pulls (not one that prefetched it or already ran it for us).
            pulling = [
                node
                for node in preparing
                if image not in run.prefetched and (run.pool_id, node, image) not in self._warm
            ]
            holding = self._holding(run)
            if pulling:
                detail = f"pulling {image} on the node"
                return BackendStatus(phase=Phase.PULLING_IMAGE, tasks=tasks, detail=detail, holding=holding)
            detail = "starting on a node that has the image"
            return BackendStatus(phase=Phase.QUEUED, tasks=tasks, detail=detail, holding=holding)
        if not run.pool_id:
            return BackendStatus(phase=Phase.CREATING_POOL, tasks=tasks, holding=Holding(sub.vm_size))
        try:
            pool = self.client.get_pool(
                run.pool_id,
                select=[
                    "id", "state", "allocationState", "resizeErrors", "currentDedicatedNodes",
                    "currentLowPriorityNodes", "targetDedicatedNodes", "targetLowPriorityNodes",
                ],
            )  # fmt: skip
        except ResourceNotFoundError:
            if run.pool is not None:
                return BackendStatus(
                    phase=Phase.FAILED, tasks=tasks, error=f"pool {run.pool_id} was deleted while the run waited for it"
                )
            return BackendStatus(phase=Phase.CREATING_POOL, tasks=tasks, holding=Holding(sub.vm_size))
        if run.pool is not None and _value(pool.state) == "deleting":
            return BackendStatus(phase=Phase.FAILED, tasks=tasks, error=f"pool {run.pool_id} is being deleted")
        error = self._resize_error(pool, sub)
        if error:
            return BackendStatus(phase=Phase.FAILED, tasks=tasks, error=error)
        nodes = list(self.client.list_nodes(run.pool_id, select=["id", "state", "errors", "isDedicated"]))
        run.holding = _holding_of_nodes(sub.vm_size, nodes)
        run.holding_read = time.monotonic()
        held = run.holding
        unusable = [n for n in nodes if _value(n.state) in ("unusable", "starttaskfailed")]
        if run.pool is not None:
            return self._named_pool_status(run, tasks, pool, nodes)
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
            detail = f"{ready} of {want} {sub.vm_size} ready"
            return BackendStatus(phase=Phase.ALLOCATING, tasks=tasks, detail=detail, holding=held)
        if ready == 0:
            detail = f"{len(nodes)} of {want} booting, pulling the training image as they start"
            return BackendStatus(phase=Phase.NODE_STARTING, tasks=tasks, detail=detail, holding=held)
        return BackendStatus(phase=Phase.QUEUED, tasks=tasks, detail=f"{ready} of {want} nodes ready", holding=held)

    def _named_pool_status(
        self, run: _AzureRun, tasks: dict[str, TaskStatus], pool: Any, nodes: list[Any]
    ) -> BackendStatus:
        """Where a run waiting on a named pool is: a node of the pool free for it, or the pool growing."""
        name, named = run.pool_id, run.pool
        assert named is not None
        want = nodes_for(len(tasks), named.slots_per_node, named.max_nodes or len(tasks))
        ready = sum(1 for n in nodes if _value(n.state) in ("idle", "running"))
        usable = [n for n in nodes if _value(n.state) not in ("unusable", "starttaskfailed", "leavingpool")]
        if nodes and not usable:
            errs = nodes[0].errors or []
            why = f"{errs[0].code}: {errs[0].message}" if errs else _value(nodes[0].state)
            return BackendStatus(
                phase=Phase.FAILED,
                tasks=tasks,
                error=f"no node of pool {name} can start ({why}); check the pool's image and registry settings",
            )
        if ready:
            idle = sum(1 for n in nodes if _value(n.state) == "idle")
            busy = f", {ready - idle} busy with other tasks" if ready > idle else ""
            return BackendStatus(phase=Phase.QUEUED, tasks=tasks, detail=f"pool {name}: {idle} nodes idle{busy}")
        if usable:
            return BackendStatus(
                phase=Phase.NODE_STARTING,
                tasks=tasks,
                detail=f"{len(usable)} of {want} nodes of pool {name} booting"
                + (", pulling the training image as they start" if run.prefetched else ""),
            )
        target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
        if target:
            return BackendStatus(
                phase=Phase.ALLOCATING, tasks=tasks, detail=f"pool {name} growing to {target} {named.vm_size}"
            )
        return BackendStatus(
            phase=Phase.ALLOCATING,
            tasks=tasks,
            detail=f"waiting for pool {name} to grow: its formula runs every {_minutes(named.evaluation_interval)}",
        )

    def _scale_note(self, run: _AzureRun) -> str:
        """For a run on a named pool: about when the pool is back at zero nodes if no other task comes."""
        named = run.pool
        if named is None or not named.idle:
            return ""
        at = scale_to_zero_at(datetime.now().astimezone(), named.idle, named.evaluation_interval)
        return f"pool {named.name} stays warm; scales to zero at about {at:%H:%M} if no task comes"

    def _task_statuses(self, run_id: str, run: _AzureRun) -> list[str]:
        """Bring ``run.tasks`` up to date; return the nodes of the tasks preparing (resources, maybe the image).

        One task: read it. A sweep: the job's task counts, then only the tasks whose state changed
        since the latest ``stateTransitionTime`` read (the first tick reads the whole list). Should the
        counts disagree with what the client holds on two ticks running (a change it missed), or say
        every task is done while it holds otherwise, the whole list is read again: so the results table
        is complete at the end, and a tick with nothing changed costs two calls however many tasks.
        """
        sub = run.submission
        if len(sub.task_ids) == 1:
            task = self._call(
                lambda: self.client.get_task(run_id, sub.task_ids[0], select=_TASK_SELECT), "read the task"
            )
            self._note_tasks(run, [task])
            return self._preparing(run)
        counts = self._call(lambda: self.client.get_job_task_counts(run_id), "count the tasks").task_counts
        if not run.synced or run.unfiltered:
            self._read_all_tasks(run_id, run)
        else:
            since = run.watermark.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if run.watermark else ""
            changed = f"stateTransitionTime gt datetime'{since}'" if since else None
            try:
                found = self._list_tasks(run_id, changed)
            except ConfigError:  # a 400: a service that does not take the filter; read the whole list, as before
                log.warning("Batch refused the task filter %r; run %s reads its whole task list", changed, run_id)
                run.unfiltered = True
                self._read_all_tasks(run_id, run)
                return self._preparing(run)
            self._note_tasks(run, found)
            tally = run.tally
            agrees = (counts.active, counts.running, counts.completed) == (
                tally["active"], tally["running"] + tally["preparing"], tally["completed"]
            )  # fmt: skip
            run.disagreements = 0 if agrees else run.disagreements + 1
            if run.disagreements >= 2 or (counts.completed >= len(run.tasks) > tally["completed"]):
                log.debug("run %s: task counts %s disagree with the client's; reading every task", run_id, counts)
                self._read_all_tasks(run_id, run)
        return self._preparing(run)

    @staticmethod
    def _preparing(run: _AzureRun) -> list[str]:
        if not run.tally["preparing"]:
            return []
        return [run.tasks[tid].node for tid, state in run.states.items() if state == "preparing"]

    def _read_all_tasks(self, run_id: str, run: _AzureRun) -> None:
        self._note_tasks(run, self._list_tasks(run_id, None))
        run.synced = True
        run.disagreements = 0
        run.full_reads += 1

    def _list_tasks(self, run_id: str, filter_: str | None) -> list[Any]:
        return self._call(
            lambda: list(self.client.list_tasks(run_id, filter=filter_, select=_TASK_SELECT)), "list the tasks"
        )

    def _note_tasks(self, run: _AzureRun, found: Iterable[Any]) -> None:
        """Fold tasks read from Batch into ``run``: statuses, state tally, watermark."""
        sub = run.submission
        for task in found:
            run.changed.add(task.id)
            status = run.tasks.get(task.id)
            if status is None:
                status = run.tasks[task.id] = TaskStatus(task.id)
            state = _value(task.state)
            previous = run.states.get(task.id)
            if previous != state:
                if previous is not None:
                    run.tally[previous] -= 1
                run.tally[state] += 1
                run.states[task.id] = state
            stamp = task.state_transition_time
            if stamp is not None and (run.watermark is None or stamp > run.watermark):
                run.watermark = stamp
            status.state = {"active": "pending", "preparing": "pending"}.get(state, state)
            if task.node_info is not None:
                status.node = task.node_info.node_id or ""
            info = task.execution_info
            if info is not None:
                status.started = info.start_time.timestamp() if info.start_time else None
                status.ended = info.end_time.timestamp() if info.end_time else None
                status.exit_code = info.exit_code
                if state == "completed":
                    status.failure = _task_failure(info, sub)

    def _holding(self, run: _AzureRun) -> Holding | None:
        """The nodes of the run's pool, by state: read again every HOLDING_INTERVAL seconds (one call)."""
        if not run.pool_id:
            return run.holding
        if run.holding is not None and time.monotonic() - run.holding_read < HOLDING_INTERVAL:
            return run.holding
        pool_filter = f"poolId eq '{run.pool_id}'"
        try:
            found = list(self.client.list_pool_node_counts(filter=pool_filter))
        except Exception:  # the cost is an estimate: a failed read keeps the last one, never fails the run
            log.debug("could not read the node counts of %s", run.pool_id, exc_info=True)
            return run.holding
        run.holding_read = time.monotonic()
        entry = next((e for e in found if e.pool_id == run.pool_id), None)
        run.holding = Holding(
            run.submission.vm_size,
            _kind_states(entry.dedicated if entry is not None else None),
            _kind_states(entry.low_priority if entry is not None else None),
        )
        return run.holding

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

    def _delete_job(self, run_id: str) -> None:
        """Delete a job that failed half-way through its submission (its auto pool goes with it); a
        failure here is logged: the submission's own error is the one to report, and release retries."""
        try:
            self.client.begin_delete_job(run_id, polling_interval=1)
        except Exception:
            log.warning("could not delete job %s after its submission failed", run_id, exc_info=True)

    def release(self, run_id: str) -> list[str]:
        run = self._runs.get(run_id)
        if run is None or run.released:
            return []
        removed = self._terminate(run_id)  # raises when it cannot: a later teardown tries again
        run.released = True
        return removed

    def _terminate(self, run_id: str) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        job = self._call(
            lambda: self.client.get_job(run_id, select=["id", "state", "executionInfo", "poolInfo"]),
            "read the job",
            accept=lambda err: isinstance(err, ResourceNotFoundError),
        )
        if job is None:
            return []
        if _value(job.state) in ("completed", "deleting"):
            return []
        pool_id = job.execution_info.pool_id if job.execution_info else ""
        named = job.pool_info.pool_id if job.pool_info is not None else ""
        # azure-batch 15.1 raises ValueError when the options are empty: give a reason.
        options: Any = {"terminateReason": "batchmagic teardown"}
        self._call(
            lambda: self.client.begin_terminate_job(run_id, options, polling_interval=1).result(timeout=60),
            f"terminate job {run_id}",
            accept=lambda err: _code(err) in ("JobCompleted", "JobBeingTerminated", "JobNotFound"),
        )
        if named:
            return [f"Azure Batch job {run_id} (its pool {named} stays: a named pool)"]
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

        self.check_batch()
        if blobs:
            self.check_storage()
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

    # --- named pools ---

    def create_pool(self, request: PoolRequest, *, client_id: str = "") -> Pool:
        """Create the named pool ``request`` describes, at zero nodes, with its autoscale formula.

        It prefetches the configured training image (``AzBatch.image``), if any, and knows the
        registry's credentials, if any. ConfigError, before anything is created, for a size, image or name
        that cannot work; after, for a pool that already exists.
        """
        from azure.batch import models as m

        vm_cores(request.vm_size)
        node = self.node_image(request.vm_size)
        image = self.settings.image
        values = {
            META_CREATED_BY: CREATED_BY,
            META_KIND: "named",
            META_CREATOR: self.settings.user or "unknown",
            META_CLIENT: client_id,
            META_IDLE: str(int(request.idle)),
            META_MAX_NODES: str(request.max_nodes),
            META_IMAGE: image,
        }
        body = m.BatchPoolCreateOptions(
            id=request.name,
            vm_size=request.vm_size,
            virtual_machine_configuration=_vm_configuration(node, [image] if image else [], self.settings),
            task_slots_per_node=request.slots_per_node,
            enable_inter_node_communication=request.inter_node or None,
            # Spread: a sweep's tasks go to different nodes first, so it uses the pool's width.
            task_scheduling_policy=m.BatchTaskSchedulingPolicy(node_fill_type=m.BatchNodeFillType.SPREAD),
            enable_auto_scale=True,
            auto_scale_formula=autoscale_formula(request, floor=0, mark=datetime.now(UTC) - CLOCK_SKEW),
            auto_scale_evaluation_interval=timedelta(seconds=EVALUATION_INTERVAL),
            metadata=[m.BatchMetadataItem(name=k, value=v) for k, v in values.items() if v],
        )
        try:
            self._pool_call(lambda: self.client.create_pool(body), request.name, "create")
        except ConfigError:
            # The SDK retries a create that failed with a 5xx: the pool may be ours, made by the first try.
            existing = self._find_pool(request.name)
            if (
                existing is None
                or not client_id
                or existing.client_id != client_id
                or existing.vm_size.lower() != request.vm_size.lower()
            ):
                raise
            return existing
        return self.get_pool(request.name)

    def _find_pool(self, name: str) -> Pool | None:
        try:
            return self.get_pool(name)
        except ConfigError:
            return None

    def get_pool(self, name: str) -> Pool:
        """The named pool ``name``: its size, nodes by state, limits. ConfigError when there is none."""
        self.check_access()
        pool = self._pool_call(lambda: self.client.get_pool(name, select=_POOL_SELECT), name, "read")
        nodes: dict[str, int] = {}
        for node in self._pool_call(lambda: list(self.client.list_nodes(name, select=["id", "state"])), name, "read"):
            state = _value(node.state)
            nodes[state] = nodes.get(state, 0) + 1
        return _describe_pool(pool, nodes)

    def list_pools(self) -> list[Pool]:
        """batchmagic's named pools in the account, with their nodes by state: two calls."""
        self.check_access()
        pools = self._call(lambda: list(self.client.list_pools(select=_POOL_SELECT)), "list the pools")
        counts = {c.pool_id: c for c in self._call(lambda: list(self.client.list_pool_node_counts()), "count nodes")}
        return [_describe_pool(p, _node_states(counts.get(p.id))) for p in pools if _named(p.metadata)]

    def resize_pool(self, name: str, nodes: int) -> Pool:
        """Bring the pool to ``nodes`` now and hold them for its idle period (tasks may grow it further);
        0 lets its nodes go once their tasks are done. The autoscale formula stays in charge."""
        pool = self.get_pool(name)
        if not pool.batchmagic:
            raise ConfigError(f"pool {name} was not created by batchmagic: resize it with az batch pool resize")
        if pool.max_nodes is not None and nodes > pool.max_nodes:
            raise ConfigError(
                f"pool {name} grows to at most {pool.max_nodes} nodes (--max-nodes): resize to {pool.max_nodes} or "
                "fewer, or delete and create it with a larger --max-nodes"
            )
        self._set_floor(pool, nodes)
        return self.get_pool(name)

    def delete_pool(self, name: str) -> str:
        """Delete a batchmagic named pool (its nodes go at once); one line saying what was removed."""
        pool = self.get_pool(name)
        if not pool.batchmagic:
            raise ConfigError(f"pool {name} was not created by batchmagic: delete it with az batch pool delete")
        if pool.state == "deleting":
            return f"Azure Batch pool {name} (already being deleted)"
        self._pool_call(lambda: self.client.begin_delete_pool(name, polling_interval=1), name, "delete")
        count = pool.current_nodes
        return f"Azure Batch pool {name} (with {count} node{'' if count == 1 else 's'} of {pool.vm_size})"

    def _grow_for(self, pool: Pool, tasks: int) -> None:
        """Have the pool grow now for ``tasks`` new tasks rather than at its next evaluation (up to 5 minutes
        away, and blind to tasks its metrics have not sampled yet): a floor that holds for its idle period."""
        need = nodes_for(tasks, pool.slots_per_node, pool.max_nodes or 1)
        if not pool.batchmagic or pool.target_nodes >= need:
            return
        try:
            self._set_floor(pool, need)
        except (ConfigError, RunFailed):
            # Batch takes enableautoscale at most every 30 s per pool: the formula grows it a little later.
            log.info("could not hurry pool %s; its formula grows it at its next evaluation", pool.name, exc_info=True)

    def _set_floor(self, pool: Pool, nodes: int) -> None:
        from azure.batch import models as m

        request = PoolRequest(
            pool.name,
            pool.vm_size,
            max_nodes=pool.max_nodes or max(1, nodes),
            low_priority=pool.low_priority_nodes,
            idle=pool.idle or DEFAULT_IDLE,
            slots_per_node=pool.slots_per_node,
        )
        # With an interval, Batch stops the pool's evaluation schedule and starts a new one now: the formula
        # is evaluated at once and the pool starts growing (or shrinking) without waiting for its next turn.
        options = m.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula=autoscale_formula(request, floor=nodes, mark=datetime.now(UTC) - CLOCK_SKEW),
            auto_scale_evaluation_interval=timedelta(seconds=pool.evaluation_interval),
        )
        self._pool_call(lambda: self.client.enable_pool_auto_scale(pool.name, options), pool.name, "resize")

    def _pool_call(self, fn: Callable[[], T], name: str, verb: str) -> T:
        """A call on a named pool, its errors in the pool's terms."""
        from azure.core.exceptions import HttpResponseError

        try:
            return fn()
        except HttpResponseError as err:
            code = _code(err)
            if code == "PoolNotFound" or getattr(err, "status_code", None) == 404:
                raise ConfigError(
                    f"there is no pool {name}: create it with %azbatch_pool create {name} --vm SIZE "
                    "(batchmagic pool create in a terminal); %azbatch_pool ls lists them"
                ) from err
            if code == "PoolExists":
                raise ConfigError(f"pool {name} already exists: %azbatch_pool ls shows it; pick another name") from err
            if code == "PoolBeingDeleted":
                raise ConfigError(f"pool {name} is being deleted: wait a minute, or pick another name") from err
            failure = err
            self._call(lambda: _reraise(failure), f"{verb} pool {name}")  # translated as any other call's error
            raise

    # --- helpers ---

    def _call(self, fn: Callable[[], T], what: str, *, accept: Callable[[Any], bool] | None = None) -> T:
        """Call Batch, retrying what is transient, and translate azure-core errors into ours, at the boundary.

        Retried (``_RETRIES`` times, backing off with jitter, after ``Retry-After`` when the service gives
        one): a connection that failed or was reset before or after the answer, 408, 429 and 5xx. The
        SDK retries none of these for a POST without Retry-After, and a reset after the answer means the
        call may have happened: so every call that creates must be safe to repeat, and ``accept(err)``
        says when an error is success (the job exists already and is ours; the task exists already).
        """
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        attempt = 0
        while True:
            try:
                return fn()
            except HttpResponseError as err:
                if accept is not None and accept(err):
                    return cast(T, None)
                status = getattr(err, "status_code", None)
                # No status: no answer came (create_tasks reports a chunk's dropped connection this way).
                if (status in _TRANSIENT or status is None) and attempt < _RETRIES:
                    attempt += 1
                    log.info("%s: %s, retrying (%d of %d)", what, status, attempt, _RETRIES)
                    time.sleep(_retry_after(err) or _backoff(attempt))
                    continue
                code = _code(err)
                if status in (401, 403):
                    raise ConfigError(f"Azure Batch refused to {what} ({code}): check the Batch credentials") from err
                if status == 400:
                    raise ConfigError(f"Azure Batch refused to {what}: {code}: {_message(err)}") from err
                raise RunFailed(f"could not {what}: {code or status}: {_message(err)}") from err
            except (ServiceRequestError, ServiceResponseError) as err:
                if attempt < _RETRIES:
                    attempt += 1
                    log.info("%s: %s, retrying (%d of %d)", what, _first_line(err), attempt, _RETRIES)
                    time.sleep(_backoff(attempt))
                    continue
                raise RunFailed(f"could not reach Azure Batch to {what}: {_first_line(err)}") from err

    def _job_is_ours(self, run_id: str) -> bool:
        """The job ``run_id`` exists and carries this run's id in its metadata (a retried create found it)."""
        job = self._call(lambda: self.client.get_job(run_id, select=["id", "metadata"]), "read the job")
        return any(item.name == "run-id" and item.value == run_id for item in job.metadata or [])


_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
_RETRIES = 8


def _backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1, 2...): 0.5, 1, 2, 4, 8 at most, each with up to 50 % jitter."""
    return float(min(8.0, 0.25 * 2.0**attempt)) * (1 + random.random() / 2)


def _retry_after(err: Any) -> float:
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        return float(min(60.0, float(headers.get("Retry-After", 0) or 0)))
    except (TypeError, ValueError):
        return 0.0


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _storage_code(err: Any) -> str:
    """Blob Storage's error code (the SDK keeps it on the exception), else the status and first line."""
    code = getattr(err, "error_code", None)
    if code:
        return str(getattr(code, "value", code))
    return f"HTTP {getattr(err, 'status_code', '?')}: {_first_line(err)}"


def _task_failure(info: Any, sub: TaskSubmission) -> str:
    """One line for a task that ended without the runner's own verdict; empty when the result explains."""
    failure = info.failure_info
    details = {d.name: d.value for d in (failure.details or [])} if failure is not None else {}
    if "MaxWallClockTime" in details:
        return f"the task went past its --timeout of {format_duration(sub.timeout)} and Batch ended it"
    if info.exit_code is None and failure is not None:
        return f"{failure.code}: {str(failure.message).splitlines()[0]}"
    return exit_reason(info.exit_code)


def _kind_states(counts: Any) -> dict[str, int]:
    """One kind's BatchNodeCounts (dedicated or low-priority) as node state -> count (``total`` left out)."""
    if counts is None:
        return {}
    data = counts.as_dict() if hasattr(counts, "as_dict") else dict(counts)
    return {str(k): int(v) for k, v in data.items() if k != "total" and isinstance(v, int) and v}


def _holding_of_nodes(vm_size: str, nodes: list[Any]) -> Holding:
    dedicated: Counter[str] = Counter()
    low: Counter[str] = Counter()
    for node in nodes:
        # A node that does not say is counted as dedicated: the dearer guess.
        (low if node.is_dedicated is False else dedicated)[_value(node.state)] += 1
    return Holding(vm_size, dict(dedicated), dict(low))


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


def _minutes(seconds: float) -> str:
    return format_duration(seconds)


def _reraise(err: BaseException) -> NoReturn:
    raise err


def _supported_image(image: Any) -> SupportedImage:
    """The SDK's BatchSupportedImage as :class:`~batchmagic.backends.azure.nodeimages.SupportedImage`."""
    ref = image.image_reference
    return SupportedImage(
        publisher=ref.publisher or "",
        offer=ref.offer or "",
        sku=ref.sku or "",
        version=ref.version or "latest",
        node_agent_sku=image.node_agent_sku_id or "",
        os_type=_value(image.os_type) or "linux",
        verified=_value(image.verification_type) != "unverified",
        capabilities=tuple(image.capabilities or ()),
        end_of_life=image.batch_support_end_of_life,
    )


def _vm_configuration(node: NodeImage, images: list[str], settings: Settings) -> Any:
    """A pool's VM configuration: the node image, Docker, ``images`` prefetched, the registry's credentials."""
    from azure.batch import models as m

    registries = _registries(images[0], settings) if images else []
    if not registries and settings.registry:
        registries = _registries(settings.registry.rstrip("/") + "/x", settings)
    return m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(
            publisher=node.publisher, offer=node.offer, sku=node.sku, version=node.version
        ),
        node_agent_sku_id=node.node_agent_sku,
        container_configuration=m.BatchContainerConfiguration(
            type=m.ContainerType.DOCKER_COMPATIBLE,
            container_image_names=images or None,
            container_registries=registries or None,
        ),
    )


def _registry_host(image: str) -> str:
    return image.split("/")[0] if "/" in image else ""


def _named(metadata: Any) -> bool:
    """A batchmagic named pool (not a run's auto pool, not someone else's pool)."""
    items = {item.name: item.value for item in metadata or []}
    return items.get(META_CREATED_BY) == CREATED_BY and items.get(META_KIND) == "named"


def _node_states(counts: Any) -> dict[str, int]:
    """A pool's BatchPoolNodeCounts as node state -> count, dedicated and low-priority together."""
    states: dict[str, int] = {}
    if counts is None:
        return states
    for kind in (counts.dedicated, counts.low_priority):
        if kind is None:
            continue
        for state, attr in (
            ("creating", "creating"), ("starting", "starting"), ("waitingforstarttask", "waiting_for_start_task"),
            ("idle", "idle"), ("running", "running"), ("leavingpool", "leaving_pool"), ("unusable", "unusable"),
            ("starttaskfailed", "start_task_failed"), ("preempted", "preempted"), ("offline", "offline"),
            ("rebooting", "rebooting"), ("reimaging", "reimaging"), ("unknown", "unknown"),
        ):  # fmt: skip
            n = getattr(kind, attr, 0) or 0
            if n:
                states[state] = states.get(state, 0) + n
    return states


def _describe_pool(pool: Any, nodes: dict[str, int]) -> Pool:
    """The SDK's BatchPool (selected with _POOL_SELECT) as a :class:`~batchmagic.backends.azure.poolspec.Pool`."""
    meta = {item.name: item.value for item in pool.metadata or []}
    params = formula_parameters(pool.auto_scale_formula)
    vmc = pool.virtual_machine_configuration
    containers = vmc.container_configuration if vmc is not None else None
    ref = vmc.image_reference if vmc is not None else None
    errors = pool.resize_errors or []
    interval = pool.auto_scale_evaluation_interval

    def number(text: str | None) -> int | None:
        return int(text) if text and text.isdigit() else None

    return Pool(
        name=pool.id,
        vm_size=pool.vm_size or "",
        state=_value(pool.state) or "active",
        allocation_state=_value(pool.allocation_state) or "steady",
        dedicated=pool.current_dedicated_nodes or 0,
        low_priority=pool.current_low_priority_nodes or 0,
        target_dedicated=pool.target_dedicated_nodes or 0,
        target_low_priority=pool.target_low_priority_nodes or 0,
        nodes=nodes,
        max_nodes=number(meta.get(META_MAX_NODES)) or number(params.get("max-nodes")),
        idle=float(number(meta.get(META_IDLE)) or number(params.get("idle")) or 0) or None,
        slots_per_node=pool.task_slots_per_node or 1,
        inter_node=bool(pool.enable_inter_node_communication),
        low_priority_nodes=params.get("low-priority") == "1",
        image=(containers.container_image_names or [""])[0] if containers is not None else "",
        registry=next((r.registry_server or "" for r in (containers.container_registries or [])), "")
        if containers is not None
        else "",
        node_image=f"{ref.publisher}:{ref.offer}:{ref.sku}:{ref.version}" if ref is not None and ref.offer else "",
        creator=meta.get(META_CREATOR, ""),
        client_id=meta.get(META_CLIENT, ""),
        created=pool.creation_time,
        evaluation_interval=interval.total_seconds() if interval else EVALUATION_INTERVAL,
        batchmagic=_named(pool.metadata),
        resize_error=f"{errors[0].code}: {(errors[0].message or '').splitlines()[0]}" if errors else "",
    )


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
        try:
            base64.b64decode(key, validate=True)
        except ValueError:  # binascii.Error: the SDK would fail on every request with a traceback
            raise ConfigError(
                "AZURE_BATCH_ACCESS_KEY is not a base64 key: copy the account's key again "
                "(az batch account keys list, or the portal's Keys blade)"
            ) from None
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
        variable = "AZURE_STORAGE_CONNECTION_STRING" if connection else "AZURE_STORAGE_ACCOUNT_URL"
        raise ConfigError(f"{variable} is not usable: {err}") from None
    raise ConfigError(
        "no Blob Storage configured: export AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL "
        "(with az login) for the account that holds run data"
    )
