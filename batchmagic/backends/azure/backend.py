"""The Azure Batch backend: each run is a job, on its own auto pool or on a named pool.

Per run it creates one job (``onAllTasksComplete`` terminatejob, ``maxWallClockTime`` from
``--timeout``) and adds the task: ``python3 -P -m batchmagic.runner --spec spec.json`` in the training
image, the spec arriving as a resource file through a SAS URL. The job runs on an auto pool
(``poolLifetimeOption`` job, ``keepAlive`` false, a container-ready Ubuntu image with the training
image prefetched) or, with ``--pool NAME``, on a named pool that outlives it. The node image is chosen
from the account's supported images (:mod:`batchmagic.backends.azure.nodeimages`). The run's data is
in Blob Storage (:class:`~batchmagic.storage.BlobStore`).

This class is the facade: the requests are built in :mod:`~batchmagic.backends.azure.requests`, the
status decided in :mod:`~batchmagic.backends.azure.status`, named pools managed in
:mod:`~batchmagic.backends.azure.named_pools`, and every call goes through
:class:`~batchmagic.backends.azure.calls.BatchCalls` (retries, errors translated).

A poll tick costs a fixed number of calls however long the run: the job, its pool, the pool's nodes
(until a task has started) and the task, each with ``$select``. A sweep's tick does not read its whole
task list: it reads the job's task counts and only the tasks whose state changed since the last tick
(``$filter`` on ``stateTransitionTime``), and the counts check what it holds (see :meth:`AzureBackend.poll`).
While a task runs, the nodes the run holds (for its cost) are read every :data:`HOLDING_INTERVAL` seconds.
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from batchmagic.backends.azure import requests, status
from batchmagic.backends.azure.calls import (
    BatchCalls,
    batch_client,
    blob_store,
    code,
    first_line,
    message,
    storage_code,
)
from batchmagic.backends.azure.named_pools import AzurePools
from batchmagic.backends.azure.nodeimages import NodeImage, SupportedImage, choose_node_image
from batchmagic.backends.azure.poolspec import Pool, PoolRequest
from batchmagic.backends.azure.ranks import (
    SILENT_WHY,
    RankWatch,
    a_rank_failed,
    as_multi_instance,
    batch_view,
    failed_instances,
    gone_causes,
    primary_lost,
    rank_statuses,
    requeue_causes,
    tail_lines,
    this_attempt,
)
from batchmagic.backends.azure.status import AzureRun, value
from batchmagic.backends.azure.vmsizes import gpus_for, vm_cores
from batchmagic.backends.base import Backend, BackendStatus, NamedPools, TaskStatus, TaskSubmission
from batchmagic.backends.warm import kernel_modules
from batchmagic.config import Settings
from batchmagic.errors import ConfigError
from batchmagic.protocol import Layout, NodeState, RankGroup
from batchmagic.storage import BlobStore, check_container_name, read_at_once

__all__ = ["AzureBackend", "AzureRun", "HOLDING_INTERVAL"]

log = logging.getLogger("batchmagic.backends.azure")

HOLDING_INTERVAL = 30.0  # seconds between reads of the pool's node counts once a task runs (the cost)
TASK_SELECT = ["id", "state", "stateTransitionTime", "executionInfo", "nodeInfo"]
_POOL_STATUS_SELECT = [
    "id", "state", "allocationState", "resizeErrors", "currentDedicatedNodes",
    "currentLowPriorityNodes", "targetDedicatedNodes", "targetLowPriorityNodes",
]  # fmt: skip
_NO_IMAGE = (
    "BATCHMAGIC_IMAGE is not set: export it to the training image to run "
    "(e.g. myregistry.azurecr.io/batchmagic:env-...) or %config AzBatch.image = '...', "
    "or set BATCHMAGIC_REGISTRY to have the image built for the cell"
)


class AzureBackend(Backend, NamedPools):
    """Runs tasks on Azure Batch; see the module docstring for what it creates."""

    name = "azure"
    poll_intervals = (1.0, 10.0)
    store: BlobStore

    def __init__(self, client: Any, store: BlobStore, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.calls = BatchCalls(client)
        self.pools = AzurePools(self.calls, settings, check_access=self.check_access, node_image=self.node_image)
        self._runs: dict[str, AzureRun] = {}
        self._checked = False
        self._images: list[SupportedImage] | None = None  # the account's supported images, listed once
        self._named: dict[str, Pool] = {}  # named pools found by validate, for the submit that follows
        self._ranks: dict[str, TaskSubmission] = {}  # distributed runs: their ranks (Batch runs one task)
        self._watches: dict[str, RankWatch] = {}  # distributed runs: what their polls keep (heartbeats...)
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
        return cls(batch_client(settings), blob_store(settings), settings)

    # --- the protocol ---

    @property
    def default_image(self) -> str:
        return self.settings.image

    def gpus(self, vm_size: str, *, container: bool = True) -> int:
        """The GPUs of a node of ``vm_size`` (the size table's count)."""
        return gpus_for(vm_size)

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
            error = code(err) or str(err.status_code)
            if getattr(err, "status_code", None) in (401, 403) or error == "AuthenticationFailed":
                raise ConfigError(
                    f"Azure Batch at {endpoint} refused the credentials ({error}): "
                    "check AZURE_BATCH_ACCOUNT and AZURE_BATCH_ACCESS_KEY, or your az login"
                ) from err
            raise ConfigError(f"Azure Batch at {endpoint} answered {error}: {message(err)}") from err
        except ServiceRequestError as err:
            raise ConfigError(
                f"cannot reach Azure Batch at {endpoint} ({first_line(err)}): check AZURE_BATCH_ENDPOINT"
            ) from err

    def check_storage(self) -> None:
        """The run container exists (created if not): refused access is one line (ConfigError)."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

        try:
            self.store.ensure_container()
        except (ClientAuthenticationError, HttpResponseError) as err:
            raise ConfigError(
                f"Blob Storage refused access to container {self.settings.container!r} "
                f"({code(err) or storage_code(err)}): check AZURE_STORAGE_CONNECTION_STRING or "
                "AZURE_STORAGE_ACCOUNT_URL and your role on it"
            ) from err
        except ServiceRequestError as err:
            raise ConfigError(f"cannot reach Blob Storage ({first_line(err)}): check the storage settings") from err

    def validate(self, submission: TaskSubmission) -> None:
        """Everything that can be checked before a byte is uploaded or a resource created.

        On a named pool the run takes the pool's VM size (``submission.vm_size`` is set to it).
        """
        # The run's own image (--image), else AzBatch.image; with a registry, Session.submit builds (or
        # reuses) the image and passes it in the submission. (Checked here, not when the backend is made:
        # managing named pools needs no image.)
        if not (submission.image or self.settings.image or self.settings.registry):
            raise ConfigError(_NO_IMAGE)
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
            if submission.distributed and pool.max_nodes is not None and submission.nodes > pool.max_nodes:
                # The pool would never hold them all, and the multi-instance task would wait until its timeout.
                raise ConfigError(
                    f"pool {pool.name} grows to at most {pool.max_nodes} nodes (--max-nodes) and this run needs "
                    f"{submission.nodes}: use --nodes {pool.max_nodes}, or create the pool with --max-nodes "
                    f"{submission.nodes}"
                )
            self._named[submission.run_id] = pool
            return
        vm_cores(submission.vm_size)
        if submission.nodes < 1:
            raise ConfigError(f"--nodes must be at least 1, not {submission.nodes}")
        self.check_access()
        self.node_image(submission.vm_size)

    def node_image(self, vm_size: str) -> NodeImage:
        """The image a new pool of ``vm_size`` boots: ``AzBatch.node_image``, else the newest fitting one
        the account lists (see :mod:`batchmagic.backends.azure.nodeimages`). ConfigError when none fits."""
        self.check_access()
        today = datetime.now(UTC).date()
        return choose_node_image(self._images or [], vm_size, today=today, override=self.settings.node_image)

    def submit(self, submission: TaskSubmission) -> None:
        ranks, submission = self._follow_ranks(submission)
        if ranks is not None:  # submitted here: any requeue is one this client must see, the first included
            self._watches[submission.run_id].watching = True
        run = AzureRun(submission)
        self._runs[submission.run_id] = run
        image = submission.image or self.settings.image
        pool_info, registry = self._pool_of(run, image)
        warm = self.settings.warm_worker == "on"
        worker = requests.node_worker(submission, image, kernel_modules()) if warm else None
        job = requests.job_request(submission, pool_info, worker)
        self.calls.call(
            lambda: self.client.create_job(job),
            "create the job",
            accept=lambda err: code(err) == "JobExists" and self._job_is_ours(submission.run_id),
        )
        try:
            tasks = self._task_requests(submission, image, registry, ranks)
            self._add_tasks(submission.run_id, tasks)
            self.calls.call(
                lambda: self.client.update_job(submission.run_id, requests.end_with_tasks()),
                "set the job to end with its tasks",
                # A retry after a lost answer: the first call took, and the job has ended with its tasks.
                accept=lambda err: code(err) in ("JobCompleted", "JobBeingTerminated"),
            )
            if run.pool is not None:  # a distributed run's one task holds a node per instance
                self.pools.grow_for(run.pool, ranks.nodes if ranks is not None else len(tasks))
        except BaseException:  # Ctrl-C too: a half-made run leaves no job (nor its auto pool) behind
            self._delete_job(submission.run_id)
            raise

    def _pool_of(self, run: AzureRun, image: str) -> tuple[Any, Any]:
        """The job's pool info, and the registry its tasks pull with (None: the pool knows it)."""
        sub = run.submission
        if sub.pool:
            named = self._named.pop(sub.run_id, None) or self.get_pool(sub.pool)
            run.pool, run.pool_id = named, named.name
            run.prefetched = (named.image,) if named.image else ()
            return requests.named_pool(named.name), requests.task_registry(named, image, self.settings)
        run.prefetched = (image,)
        return requests.auto_pool(sub, self.node_image(sub.vm_size), image, self.settings), None

    def _task_requests(self, sub: TaskSubmission, image: str, registry: Any, ranks: TaskSubmission | None) -> list[Any]:
        """The run's tasks, their URLs signed until the run's SAS expiry (a distributed run's: one
        multi-instance task, its ranks' group in the store)."""
        expiry = sub.sas_expiry or datetime.now(UTC) + timedelta(seconds=sub.timeout, hours=1)
        outbox = self.store.outbox(sub.run_id)
        outbox.ensure_container()
        outputs_url = outbox.container_url(permissions="cw", expiry=expiry)  # write-only, this run's container
        tasks = [
            requests.task_request(
                sub,
                task_id,
                image=image,
                spec_url=self.store.url(sub.spec_keys[task_id], permissions="r", expiry=expiry),
                outputs_url=outputs_url,
                registry=registry,
            )
            for task_id in sub.task_ids
        ]
        if ranks is not None:
            from azure.batch import models as m

            as_multi_instance(m, tasks[0], ranks, self._upload_group(ranks, expiry))
        return tasks

    def _add_tasks(self, run_id: str, tasks: list[Any]) -> None:
        if len(tasks) == 1:
            self.calls.call(  # the job is this run's: a task of the same id in it is the one a lost answer made
                lambda: self.client.create_task(run_id, tasks[0]),
                "add the task",
                accept=lambda err: code(err) == "TaskExists",
            )
        else:
            self.calls.call(lambda: self.client.create_tasks(run_id, tasks, max_concurrency=4), "add the tasks")

    def attach(self, submission: TaskSubmission, *, take_over: bool = True) -> None:
        """Follow a job another client submitted: its tasks' states are read whole on the first poll."""
        _ranks, submission = self._follow_ranks(submission)
        run = AzureRun(submission)
        if submission.pool:
            run.pool = self.get_pool(submission.pool)
            run.pool_id = run.pool.name
        self._runs[submission.run_id] = run

    def poll(self, run_id: str) -> BackendStatus:
        run = self._runs[run_id]
        run.changed, reads = set(), run.full_reads
        answer = self._status(run_id)
        answer.completed = run.tally["completed"]
        answer.changed = frozenset(run.changed) if run.full_reads == reads else None
        if answer.holding is None:
            answer.holding = run.holding
        ranks = self._ranks.get(run_id)
        return answer if ranks is None else self._rank_status(ranks, answer)

    def _follow_ranks(self, submission: TaskSubmission) -> tuple[TaskSubmission | None, TaskSubmission]:
        """A distributed run is one Batch task: (the ranks' submission, what Batch runs); else (None, it)."""
        if not submission.distributed:
            return None, submission
        self._ranks[submission.run_id] = submission
        self._watches.setdefault(submission.run_id, RankWatch())
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

    def _rank_status(self, sub: TaskSubmission, answer: BackendStatus) -> BackendStatus:
        """The Batch task's status as the ranks': each from its node's state. A node lost, silent or failed
        while the task runs (or a requeue of the task) ends the task at once, its ranks blamed; once the task
        has ended, its instances are read once for a node whose part failed."""
        task = answer.tasks.get(sub.task_ids[0]) or TaskStatus(sub.task_ids[0])
        watch, requeued = self._watches[sub.run_id], self._runs[sub.run_id].requeued.get(task.task_id)
        if not watch.watching:  # an attached run may have been requeued before: that attempt is the one watched
            watch.requeue, watch.watching = requeued, True
        states = self._node_states(sub)
        if requeued != watch.requeue and not any(states):  # before any rank started: nothing lost, it goes on
            watch.requeue = requeued
        # Requeued while watched: the run ends, and what it shows is the attempt that was watched.
        current = states if requeued != watch.requeue else this_attempt(states, requeued)
        if not answer.error and task.state != "completed" and not watch.causes:
            watch.causes.update(self._causes_while_running(sub, task, current, watch, requeued))
            if watch.causes:
                self._terminate(sub.run_id)
                task = replace(task, state="completed", ended=time.time())
        if task.state == "completed" and not watch.instances_read:
            watch.instances_read = True
            for node, why in self._causes_at_the_end(sub, task, current, watch).items():
                watch.causes.setdefault(node, why)
        tasks = rank_statuses(sub, task, current, watch.causes)
        for k, rank in enumerate(tasks.values()):
            node = k // sub.procs_per_node
            if not rank.node and watch.nodes.get(node):
                rank.node = f"{watch.nodes[node]} (node {node})"
        # Finished when Batch's task is: the ranks end a moment before the primary's application command does,
        # and until then the task holds its nodes (and, on containers, each node's container).
        completed = len(tasks) if task.state == "completed" else 0
        return replace(answer, tasks=tasks, completed=completed, changed=None)

    def _causes_while_running(
        self,
        sub: TaskSubmission,
        task: TaskStatus,
        states: list[NodeState | None],
        watch: RankWatch,
        requeued: float | None,
    ) -> dict[int, str]:
        """The nodes that end the run now (node rank -> why): the task requeued, a node the primary or this
        client found silent, or a node whose instance failed."""
        if requeued != watch.requeue:
            return requeue_causes(watch.nodes, self._nodes_now(self._runs[sub.run_id].pool_id, watch))
        found = primary_lost(states) | dict.fromkeys(watch.silent(states, time.monotonic()), SILENT_WHY)
        if found or task.state != "running":
            return found
        return self._failed_instances(sub, task, watch)

    def _causes_at_the_end(
        self, sub: TaskSubmission, task: TaskStatus, states: list[NodeState | None], watch: RankWatch
    ) -> dict[int, str]:
        """Once the task has ended: the nodes whose instance failed; else, when it failed with no rank to
        blame, the nodes that are gone (rebooting, left the pool) as it ended; else the primary's own part
        (its supervisor's words: the application command's stderr)."""
        found = self._failed_instances(sub, task, watch)
        if found or task.exit_code in (0, None) or watch.causes or a_rank_failed(states):
            return found
        why = "Batch ended the task as its node went down: "
        nodes = self._nodes_now(self._runs[sub.run_id].pool_id, watch, task.started)
        found = gone_causes(watch.nodes, nodes, why, left=False)
        if found:
            return found
        said = self._task_file(sub.run_id, task.task_id, "stderr.txt")
        return {
            0: f"its node's part of the task failed ({task.failure or f'exit code {task.exit_code}'})"
            + tail_lines(said)
        }

    def _task_file(self, run_id: str, task_id: str, path: str) -> str:
        """A file of the task's directory on the primary, "" when it cannot be read."""
        try:
            return b"".join(self.client.download_task_file(run_id, task_id, path)).decode(errors="replace")
        except Exception:  # noqa: BLE001 - the reason is known without it
            log.debug("could not read %s of task %s", path, task_id, exc_info=True)
            return ""

    def _failed_instances(self, sub: TaskSubmission, task: TaskStatus, watch: RankWatch) -> dict[int, str]:
        """The nodes whose instance failed, each with the last lines of its ranks.txt (its supervisor's
        output, in the subtask's directory on its node)."""
        subtasks = self.calls.call(lambda: list(self.client.list_subtasks(sub.run_id, task.task_id)), "read the nodes")
        out = {}
        for node, (why, subtask) in failed_instances(subtasks, watch.nodes, sub.nodes).items():
            out[node] = why + tail_lines(self._ranks_txt(subtask))
            if subtask.node_info is not None:  # a node that never wrote its state is named by Batch's word
                watch.nodes.setdefault(node, subtask.node_info.node_id or "")
        return out

    def _ranks_txt(self, subtask: Any) -> str:
        """A subtask's ranks.txt, "" when it cannot be read (its node gone, the file in /tmp)."""
        info = subtask.node_info
        if info is None or not info.pool_id or not info.node_id:
            return ""
        path = f"{(info.task_root_directory or '').rstrip('/')}/ranks.txt"
        try:
            return b"".join(self.client.download_node_file(info.pool_id, info.node_id, path)).decode(errors="replace")
        except Exception:  # noqa: BLE001 - the reason is known without it
            log.debug("could not read %s on node %s", path, info.node_id, exc_info=True)
            return ""

    def _nodes_now(self, pool_id: str, watch: RankWatch, since: float | None = None) -> dict[str, str]:
        """Each watched node's state now (node id -> state, "" when it has left its pool); "restarted" for a
        node back up that booted after ``since`` (the task's start): it restarted under the task."""
        from azure.core.exceptions import ResourceNotFoundError

        out = {}
        for node_id in watch.nodes.values():
            try:
                node = self.client.get_node(pool_id, node_id, select=["id", "state", "lastBootTime"])
                booted = node.last_boot_time.timestamp() if node.last_boot_time is not None else 0.0
                out[node_id] = "restarted" if since is not None and booted > since else value(node.state)
            except ResourceNotFoundError:
                out[node_id] = ""
            except Exception:  # noqa: BLE001 - unknown: not named
                log.debug("could not read node %s", node_id, exc_info=True)
        return out

    def _node_states(self, sub: TaskSubmission) -> list[NodeState | None]:
        """Each node's state as its supervisor last wrote it, read at once (100 nodes: 100 GETs, a round trip
        each); None for a node whose supervisor has not started (or is mid-write)."""

        def one(node: int) -> NodeState | None:
            try:
                return NodeState.from_json(self.store.get_bytes(Layout.node_state(sub.run_id, node)))
            except (KeyError, ValueError):
                return None

        return read_at_once(one, range(sub.nodes))

    def _status(self, run_id: str) -> BackendStatus:
        """Read the job and the tasks that changed; the pool and its nodes only while no task is on one."""
        run = self._runs[run_id]
        job = self.calls.call(
            lambda: self.client.get_job(run_id, select=["id", "state", "executionInfo"]), "read the job"
        )
        info = job.execution_info
        if not run.pool_id and info is not None and info.pool_id:
            run.pool_id = info.pool_id
        preparing = self._task_statuses(run_id, run)
        verdict = status.job_verdict(job, run)
        if verdict is not None:
            return verdict
        image = run.submission.image or self.settings.image
        self._warm |= status.warmed(run, image)
        stage = status.task_stage(run, preparing)
        if stage == "running":
            run.started_task = True
            if run.pool is not None and not run.tally["running"]:
                # A named pool's tasks all back in the queue: the pool may have been deleted under them.
                gone = self._pool_gone(run)
                if gone is not None:
                    return gone
        if stage in ("running", "preparing"):
            self._holding(run)
        now = datetime.now().astimezone()
        decided = status.tasks_status(run, stage, preparing, image=image, warm=self._warm, now=now)
        return decided if decided is not None else self._pool_status(run)

    def _pool_gone(self, run: AzureRun) -> BackendStatus | None:
        """The run's named pool deleted (or being deleted) under it: a failed status; None while it is there."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            pool = self.client.get_pool(run.pool_id, select=["id", "state"])
        except ResourceNotFoundError:
            return status.pool_deleted_status(run)
        except Exception:  # a failed read says nothing: the next tick asks again
            log.debug("could not read pool %s", run.pool_id, exc_info=True)
            return None
        return status.pool_deleted_status(run) if status.value(pool.state) == "deleting" else None

    def _pool_status(self, run: AzureRun) -> BackendStatus:
        """Where a run no task of which is on a node yet is: its pool, and the pool's nodes."""
        from azure.core.exceptions import ResourceNotFoundError

        if not run.pool_id:
            return status.no_pool_status(run)
        try:
            pool = self.client.get_pool(run.pool_id, select=_POOL_STATUS_SELECT)
        except ResourceNotFoundError:
            return status.no_pool_status(run)
        verdict = status.pool_verdict(run, pool)
        if verdict is not None:
            return verdict
        nodes = list(self.client.list_nodes(run.pool_id, select=["id", "state", "errors", "isDedicated"]))
        run.holding = status.holding_of_nodes(run.submission.vm_size, nodes)
        run.holding_read = time.monotonic()
        return status.nodes_status(run, pool, nodes)

    def _task_statuses(self, run_id: str, run: AzureRun) -> list[str]:
        """Bring ``run.tasks`` up to date; return the nodes of the tasks preparing (resources, maybe the image).

        One task: read it. A sweep: the job's task counts, then only the tasks whose state changed
        since the latest ``stateTransitionTime`` read (the first tick reads the whole list). Should the
        counts disagree with what the client holds (:func:`~batchmagic.backends.azure.status.needs_full_read`),
        the whole list is read again: so the results table is complete at the end, and a tick with
        nothing changed costs two calls however many tasks.
        """
        sub = run.submission
        if len(sub.task_ids) == 1:
            task = self.calls.call(
                lambda: self.client.get_task(run_id, sub.task_ids[0], select=TASK_SELECT), "read the task"
            )
            status.note_tasks(run, [task])
            return status.preparing_nodes(run)
        counts = self.calls.call(lambda: self.client.get_job_task_counts(run_id), "count the tasks").task_counts
        if not run.synced or run.unfiltered:
            self._read_all_tasks(run_id, run)
            return status.preparing_nodes(run)
        changed = status.changed_filter(run.watermark)
        try:
            found = self._list_tasks(run_id, changed)
        except ConfigError:  # a 400: a service that does not take the filter; read the whole list, as before
            log.warning("Batch refused the task filter %r; run %s reads its whole task list", changed, run_id)
            run.unfiltered = True
            self._read_all_tasks(run_id, run)
            return status.preparing_nodes(run)
        status.note_tasks(run, found)
        run.disagreements = 0 if status.counts_agree(counts, run.tally) else run.disagreements + 1
        if status.needs_full_read(run, counts):
            log.debug("run %s: task counts %s disagree with the client's; reading every task", run_id, counts)
            self._read_all_tasks(run_id, run)
        return status.preparing_nodes(run)

    def _read_all_tasks(self, run_id: str, run: AzureRun) -> None:
        status.note_tasks(run, self._list_tasks(run_id, None))
        run.synced = True
        run.disagreements = 0
        run.full_reads += 1

    def _list_tasks(self, run_id: str, filter_: str | None) -> list[Any]:
        return self.calls.call(
            lambda: list(self.client.list_tasks(run_id, filter=filter_, select=TASK_SELECT)), "list the tasks"
        )

    def _holding(self, run: AzureRun) -> None:
        """The nodes of the run's pool, by state, into ``run.holding``: read again every HOLDING_INTERVAL
        seconds (one call)."""
        if not run.pool_id:
            return
        held = run.holding is not None and run.holding.billed != (0, 0)
        if held and time.monotonic() - run.holding_read < HOLDING_INTERVAL:
            return  # a zero read while the pool was still empty is never kept: a task runs on a node now
        try:
            found = list(self.client.list_pool_node_counts(filter=f"poolId eq '{run.pool_id}'"))
        except Exception:  # the cost is an estimate: a failed read keeps the last one, never fails the run
            log.debug("could not read the node counts of %s", run.pool_id, exc_info=True)
            return
        holding = status.holding_of_counts(run.submission.vm_size, run.pool_id, found)
        if holding.billed == (0, 0):
            # A task is on a node, so a node is held: the counts lag behind a pool that just grew (a named
            # pool after a cold start). Read its nodes, and do not keep that answer for the interval.
            try:
                nodes = list(self.client.list_nodes(run.pool_id, select=["id", "state", "isDedicated"]))
                run.holding = status.holding_of_nodes(run.submission.vm_size, nodes)
            except Exception:
                log.debug("could not read the nodes of %s", run.pool_id, exc_info=True)
            return
        run.holding_read = time.monotonic()
        run.holding = holding

    def cancel(self, run_id: str) -> None:
        self._terminate(run_id)

    def _delete_job(self, run_id: str) -> None:
        """Delete a job that failed half-way through its submission (its auto pool goes with it); a
        failure here is logged: the submission's own error is the one to report, and release retries."""
        try:
            self.client.begin_delete_job(run_id, polling_interval=1)
        except Exception:
            log.warning("could not delete job %s after its submission failed", run_id, exc_info=True)

    def waited_on(self) -> AbstractContextManager[None]:
        return self.calls.brief()  # an unreachable Batch is said in seconds, not after a monitor's patience

    def release(self, run_id: str) -> list[str]:
        run = self._runs.get(run_id)
        if run is None or run.released:
            return []
        removed = self._terminate(run_id)  # raises when it cannot: a later teardown tries again
        run.released = True
        return removed

    def _terminate(self, run_id: str) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        job = self.calls.call(
            lambda: self.client.get_job(run_id, select=["id", "state", "executionInfo", "poolInfo"]),
            "read the job",
            accept=lambda err: isinstance(err, ResourceNotFoundError),
        )
        if job is None or value(job.state) in ("completed", "deleting"):
            return []
        pool_id = job.execution_info.pool_id if job.execution_info else ""
        named = job.pool_info.pool_id if job.pool_info is not None else ""
        # azure-batch 15.1 raises ValueError when the options are empty: give a reason.
        options: Any = {"terminateReason": "batchmagic teardown"}
        self.calls.call(
            lambda: self.client.begin_terminate_job(run_id, options, polling_interval=1).result(timeout=60),
            f"terminate job {run_id}",
            accept=lambda err: code(err) in ("JobCompleted", "JobBeingTerminated", "JobNotFound"),
        )
        if named:
            return [f"Azure Batch job {run_id} (its pool {named} stays: a named pool)"]
        return [f"Azure Batch job {run_id}" + (f" and its auto pool {pool_id}" if pool_id else "")]

    def task_log_hint(self, run_id: str, task_id: str) -> str:
        """Batch's own stderr of the task (uploaded by outputFiles), its last lines."""
        try:
            text = (
                self.store.outbox(run_id)
                .get_bytes(Layout.process_file(run_id, task_id, "stderr.txt"))
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
            if _tagged(pool.metadata) and value(pool.state) != "deleting" and not pool.id.startswith("bm_"):
                try:
                    self.client.begin_delete_pool(pool.id, polling_interval=1)
                    removed.append(f"Azure Batch pool {pool.id}")
                except HttpResponseError as err:
                    log.warning("could not delete pool %s: %s", pool.id, message(err))
        if blobs:
            removed.extend(self._delete_run_data())
        return removed

    def _delete_run_data(self) -> list[str]:
        count = self.store.delete_prefix(Layout.RUNS)
        for name in self.store.outbox_names():
            box = BlobStore(self.store._service().get_container_client(name))  # noqa: SLF001
            count += len(box.list_keys(""))
            box.delete_container()
        return [f"{count} blobs of run data in container {self.settings.container} and its runs'"] if count else []

    # --- named pools (see batchmagic.backends.azure.named_pools) ---

    def create_pool(self, request: PoolRequest, *, client_id: str = "") -> Pool:
        return self.pools.create_pool(request, client_id=client_id)

    def get_pool(self, name: str) -> Pool:
        return self.pools.get_pool(name)

    def list_pools(self) -> list[Pool]:
        with self.calls.brief():  # %azbatch_pool ls, and what a teardown leaves: a user waits on it
            return self.pools.list_pools()

    def resize_pool(self, name: str, nodes: int) -> Pool:
        return self.pools.resize_pool(name, nodes)

    def delete_pool(self, name: str) -> str:
        return self.pools.delete_pool(name)

    def _job_is_ours(self, run_id: str) -> bool:
        """The job ``run_id`` exists and carries this run's id in its metadata (a retried create found it)."""
        job = self.calls.call(lambda: self.client.get_job(run_id, select=["id", "metadata"]), "read the job")
        return any(item.name == "run-id" and item.value == run_id for item in job.metadata or [])


def _tagged(metadata: Any) -> bool:
    return any(item.name == "created-by" and item.value == requests.CREATED_BY for item in metadata or [])


def _supported_image(image: Any) -> SupportedImage:
    """The SDK's BatchSupportedImage as :class:`~batchmagic.backends.azure.nodeimages.SupportedImage`."""
    ref = image.image_reference
    return SupportedImage(
        publisher=ref.publisher or "",
        offer=ref.offer or "",
        sku=ref.sku or "",
        version=ref.version or "latest",
        node_agent_sku=image.node_agent_sku_id or "",
        os_type=value(image.os_type) or "linux",
        verified=value(image.verification_type) != "unverified",
        capabilities=tuple(image.capabilities or ()),
        end_of_life=image.batch_support_end_of_life,
    )
