"""Named pools on Batch: create, read, list, resize, delete (:class:`AzurePools`), and a pool as
Batch describes it read into a :class:`~batchmagic.backends.azure.poolspec.Pool` (:func:`describe_pool`).

The requests are built in :mod:`batchmagic.backends.azure.requests`, the calls made through
:class:`~batchmagic.backends.azure.calls.BatchCalls`; the Azure backend offers these as its
:class:`~batchmagic.backends.base.NamedPools` interface.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from batchmagic.backends.azure import requests
from batchmagic.backends.azure.calls import BatchCalls
from batchmagic.backends.azure.nodeimages import NodeImage
from batchmagic.backends.azure.poolspec import (
    DEFAULT_IDLE,
    EVALUATION_INTERVAL,
    META_CLIENT,
    META_CREATED_BY,
    META_CREATOR,
    META_IDLE,
    META_KIND,
    META_MAX_NODES,
    Pool,
    PoolRequest,
    formula_parameters,
    nodes_for,
)
from batchmagic.backends.azure.status import value
from batchmagic.backends.azure.vmsizes import vm_cores
from batchmagic.config import Settings
from batchmagic.errors import ConfigError, RunFailed

__all__ = ["POOL_SELECT", "AzurePools", "describe_pool", "is_named", "node_states"]

log = logging.getLogger("batchmagic.backends.azure")

POOL_SELECT = [
    "id", "state", "allocationState", "vmSize", "currentDedicatedNodes", "currentLowPriorityNodes",
    "targetDedicatedNodes", "targetLowPriorityNodes", "taskSlotsPerNode", "metadata", "autoScaleFormula",
    "autoScaleEvaluationInterval", "creationTime", "resizeErrors", "virtualMachineConfiguration",
    "enableInterNodeCommunication",
]  # fmt: skip


class AzurePools:
    """The account's named pools, through ``calls``; ``check_access`` and ``node_image`` are the backend's."""

    def __init__(
        self,
        calls: BatchCalls,
        settings: Settings,
        *,
        check_access: Callable[[], None],
        node_image: Callable[[str], NodeImage],
    ) -> None:
        self.calls = calls
        self.settings = settings
        self._check_access = check_access
        self._node_image = node_image

    @property
    def client(self) -> Any:
        return self.calls.client

    def create_pool(self, request: PoolRequest, *, client_id: str = "") -> Pool:
        """Create the named pool ``request`` describes, at zero nodes, with its autoscale formula.

        It prefetches the configured training image (``AzBatch.image``), if any, and knows the
        registry's credentials, if any. ConfigError, before anything is created, for a size, image or name
        that cannot work; after, for a pool that already exists.
        """
        vm_cores(request.vm_size)
        node = self._node_image(request.vm_size)
        body = requests.pool_request(request, node, self.settings, client_id=client_id, now=datetime.now(UTC))
        try:
            self.calls.pool_call(lambda: self.client.create_pool(body), request.name, "create")
        except ConfigError:
            # The SDK retries a create that failed with a 5xx: the pool may be ours, made by the first try.
            existing = self.find_pool(request.name)
            if (
                existing is None
                or not client_id
                or existing.client_id != client_id
                or existing.vm_size.lower() != request.vm_size.lower()
            ):
                raise
            return existing
        return self.get_pool(request.name)

    def find_pool(self, name: str) -> Pool | None:
        """The pool ``name``, or None when there is none."""
        try:
            return self.get_pool(name)
        except ConfigError:
            return None

    def get_pool(self, name: str) -> Pool:
        """The named pool ``name``: its size, nodes by state, limits. ConfigError when there is none."""
        self._check_access()
        pool = self.calls.pool_call(lambda: self.client.get_pool(name, select=POOL_SELECT), name, "read")
        listed = self.calls.pool_call(lambda: list(self.client.list_nodes(name, select=["id", "state"])), name, "read")
        nodes: dict[str, int] = {}
        for node in listed:
            state = value(node.state)
            nodes[state] = nodes.get(state, 0) + 1
        return describe_pool(pool, nodes)

    def list_pools(self) -> list[Pool]:
        """batchmagic's named pools in the account, with their nodes by state: two calls."""
        self._check_access()
        pools = self.calls.call(lambda: list(self.client.list_pools(select=POOL_SELECT)), "list the pools")
        found = self.calls.call(lambda: list(self.client.list_pool_node_counts()), "count nodes")
        counts = {c.pool_id: c for c in found}
        return [describe_pool(p, node_states(counts.get(p.id))) for p in pools if is_named(p.metadata)]

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
        self.set_floor(pool, nodes)
        return self.get_pool(name)

    def delete_pool(self, name: str) -> str:
        """Delete a batchmagic named pool (its nodes go at once); one line saying what was removed."""
        pool = self.get_pool(name)
        if not pool.batchmagic:
            raise ConfigError(f"pool {name} was not created by batchmagic: delete it with az batch pool delete")
        if pool.state == "deleting":
            return f"Azure Batch pool {name} (already being deleted)"
        self.calls.pool_call(lambda: self.client.begin_delete_pool(name, polling_interval=1), name, "delete")
        count = pool.current_nodes
        return f"Azure Batch pool {name} (with {count} node{'' if count == 1 else 's'} of {pool.vm_size})"

    def grow_for(self, pool: Pool, tasks: int) -> None:
        """Have the pool grow now for ``tasks`` new tasks rather than at its next evaluation (up to 5 minutes
        away, and blind to tasks its metrics have not sampled yet): a floor that holds for its idle period."""
        need = nodes_for(tasks, pool.slots_per_node, pool.max_nodes or 1)
        if not pool.batchmagic or pool.target_nodes >= need:
            return
        try:
            self.set_floor(pool, need)
        except (ConfigError, RunFailed):
            # Batch takes enableautoscale at most every 30 s per pool: the formula grows it a little later.
            log.info("could not hurry pool %s; its formula grows it at its next evaluation", pool.name, exc_info=True)

    def set_floor(self, pool: Pool, nodes: int) -> None:
        """Hold at least ``nodes`` nodes for the pool's idle period, evaluated at once."""
        request = PoolRequest(
            pool.name,
            pool.vm_size,
            max_nodes=pool.max_nodes or max(1, nodes),
            low_priority=pool.low_priority_nodes,
            idle=pool.idle or DEFAULT_IDLE,
            slots_per_node=pool.slots_per_node,
        )
        options = requests.autoscale_update(pool, request, floor=nodes, now=datetime.now(UTC))
        self.calls.pool_call(lambda: self.client.enable_pool_auto_scale(pool.name, options), pool.name, "resize")


def is_named(metadata: Any) -> bool:
    """A batchmagic named pool (not a run's auto pool, not someone else's pool)."""
    items = {item.name: item.value for item in metadata or []}
    return items.get(META_CREATED_BY) == requests.CREATED_BY and items.get(META_KIND) == "named"


_NODE_COUNTS = (
    ("creating", "creating"), ("starting", "starting"), ("waitingforstarttask", "waiting_for_start_task"),
    ("idle", "idle"), ("running", "running"), ("leavingpool", "leaving_pool"), ("unusable", "unusable"),
    ("starttaskfailed", "start_task_failed"), ("preempted", "preempted"), ("offline", "offline"),
    ("rebooting", "rebooting"), ("reimaging", "reimaging"), ("unknown", "unknown"),
)  # fmt: skip


def node_states(counts: Any) -> dict[str, int]:
    """A pool's BatchPoolNodeCounts as node state -> count, dedicated and low-priority together."""
    states: dict[str, int] = {}
    if counts is None:
        return states
    for kind in (counts.dedicated, counts.low_priority):
        if kind is None:
            continue
        for state, attr in _NODE_COUNTS:
            n = getattr(kind, attr, 0) or 0
            if n:
                states[state] = states.get(state, 0) + n
    return states


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _containers(pool: Any) -> tuple[str, str]:
    """The image a pool prefetches and the registry it has credentials for ("" when none)."""
    vmc = pool.virtual_machine_configuration
    containers = vmc.container_configuration if vmc is not None else None
    if containers is None:
        return "", ""
    image = (containers.container_image_names or [""])[0]
    registry = next((r.registry_server or "" for r in (containers.container_registries or [])), "")
    return image, registry


def describe_pool(pool: Any, nodes: dict[str, int]) -> Pool:
    """The SDK's BatchPool (selected with POOL_SELECT) as a :class:`~batchmagic.backends.azure.poolspec.Pool`."""
    meta = {item.name: item.value for item in pool.metadata or []}
    params = formula_parameters(pool.auto_scale_formula)
    vmc = pool.virtual_machine_configuration
    ref = vmc.image_reference if vmc is not None else None
    errors = pool.resize_errors or []
    interval = pool.auto_scale_evaluation_interval
    image, registry = _containers(pool)
    return Pool(
        name=pool.id,
        vm_size=pool.vm_size or "",
        state=value(pool.state) or "active",
        allocation_state=value(pool.allocation_state) or "steady",
        dedicated=pool.current_dedicated_nodes or 0,
        low_priority=pool.current_low_priority_nodes or 0,
        target_dedicated=pool.target_dedicated_nodes or 0,
        target_low_priority=pool.target_low_priority_nodes or 0,
        nodes=nodes,
        max_nodes=_number(meta.get(META_MAX_NODES)) or _number(params.get("max-nodes")),
        idle=float(_number(meta.get(META_IDLE)) or _number(params.get("idle")) or 0) or None,
        slots_per_node=pool.task_slots_per_node or 1,
        inter_node=bool(pool.enable_inter_node_communication),
        low_priority_nodes=params.get("low-priority") == "1",
        image=image,
        registry=registry,
        node_image=f"{ref.publisher}:{ref.offer}:{ref.sku}:{ref.version}" if ref is not None and ref.offer else "",
        creator=meta.get(META_CREATOR, ""),
        client_id=meta.get(META_CLIENT, ""),
        created=pool.creation_time,
        evaluation_interval=interval.total_seconds() if interval else EVALUATION_INTERVAL,
        batchmagic=is_named(pool.metadata),
        resize_error=f"{errors[0].code}: {(errors[0].message or '').splitlines()[0]}" if errors else "",
    )
