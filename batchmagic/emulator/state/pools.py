"""Pools and their nodes: create, allocate (with the account's core quotas), resize, delete, node counts."""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import uuid
from typing import Any

from batchmagic.emulator import schema, vmsizes
from batchmagic.emulator.errors import ApiError, exists, invalid_property, missing_property, not_found
from batchmagic.emulator.images import check_image, check_subnet
from batchmagic.emulator.limits import check_display_name, check_id, taken
from batchmagic.emulator.state.endpoints import node_addresses
from batchmagic.emulator.state.files import FilesMixin
from batchmagic.emulator.state.model import Node, Pool, iso, touch, transition


def node_address(seq: int, block: tuple[int, int] = (0, 0)) -> str:
    """The ``seq``-th node's address (1-based) in an emulator's ``block``: 127.A.B.2 onwards, then the next B
    (all of 127.0.0.0/8 is loopback on Linux)."""
    n = seq - 1
    return f"127.{block[0]}.{(block[1] + n // 250) % 256}.{n % 250 + 2}"


__all__ = ["PoolsMixin"]

#: How long a pool stays ``stopping`` after a stop resize at most (recorded: about five seconds).
_STOPPING_SECONDS = 5.0

log = logging.getLogger("batchmagic.emulator")


def _free_index(pool: Pool) -> int:
    """The lowest node index no node of ``pool`` holds (it numbers the node's inbound endpoints)."""
    taken = set()
    for node in pool.nodes.values():
        endpoints = (node.data.get("endpointConfiguration") or {}).get("inboundEndpoints") or []
        if endpoints:
            taken.add(int(str(endpoints[0]["name"]).rpartition(".")[2] or 0))
    return next(i for i in range(len(taken) + 1) if i not in taken)


class PoolsMixin(FilesMixin):
    """Pools and nodes. ``_advance_pool`` is the scheduler's step for one pool."""

    @staticmethod
    def _cores(vm_size: str) -> int:
        size = vmsizes.lookup(vm_size)
        return size.cores if size is not None else 0

    def _validate_pool_spec(self, spec: dict[str, Any], prefix: str = "") -> None:
        vm_size = spec.get("vmSize")
        if not vm_size:
            raise missing_property(prefix + "vmSize")
        if vmsizes.lookup(str(vm_size)) is None:
            raise invalid_property(prefix + "vmSize", vm_size, f"The specified vmSize '{vm_size}' is not supported.")
        if not spec.get("virtualMachineConfiguration"):
            raise missing_property(prefix + "virtualMachineConfiguration")
        check_image(spec["virtualMachineConfiguration"], self.now(), prefix, self.subscription)
        check_subnet(spec.get("networkConfiguration"), self.subscription)
        slots = spec.get("taskSlotsPerNode", 1)
        if not isinstance(slots, int) or slots < 1 or slots > 256:
            raise invalid_property(prefix + "taskSlotsPerNode", slots)
        for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            n = spec.get(key, 0)
            if not isinstance(n, int) or n < 0:
                raise invalid_property(prefix + key, n)

    def create_pool(self, body: dict[str, Any], *, auto_job_id: str | None = None) -> Pool:
        """Create a pool from a ``POST /pools`` body; allocation starts at once."""
        pool_id = check_id(body)
        check_display_name(body)
        self._validate_pool_spec(body)
        now = self.now()
        with self.lock:
            if taken(self.pools, pool_id):
                raise exists("PoolExists")
            data: dict[str, Any] = {
                "id": pool_id,
                "url": f"{self.url}/pools/{pool_id}",
                "creationTime": iso(now),
                "state": "active",
                "stateTransitionTime": iso(now),
                "allocationState": "resizing",
                "allocationStateTransitionTime": iso(now),
                "vmSize": str(body["vmSize"]).lower(),
                "resizeTimeout": body.get("resizeTimeout", "PT15M"),
                "currentDedicatedNodes": 0,
                "targetDedicatedNodes": int(body.get("targetDedicatedNodes", 0)),
                "currentLowPriorityNodes": 0,
                "targetLowPriorityNodes": int(body.get("targetLowPriorityNodes", 0)),
                "enableAutoScale": bool(body.get("enableAutoScale", False)),
                "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication", False)),
                "taskSlotsPerNode": int(body.get("taskSlotsPerNode", 1)),
                "taskSchedulingPolicy": body.get("taskSchedulingPolicy") or {"nodeFillType": "Spread"},
                "targetNodeCommunicationMode": body.get("targetNodeCommunicationMode", "default"),
                "currentNodeCommunicationMode": "classic",
            }
            vmc = copy.deepcopy(body["virtualMachineConfiguration"])
            vmc.setdefault("imageReference", {}).setdefault("version", "latest")
            data["virtualMachineConfiguration"] = vmc
            # Every other property the create body may carry is kept and answered, as the service does
            # (upgradePolicy, userAccounts, mounts...); autoscale ones are set by autoscaling.py.
            for key in schema.models()["BatchPoolCreateOptions"]["properties"]:
                if key in body and key not in data and not key.startswith("autoScale") and body[key] is not None:
                    data[key] = copy.deepcopy(body[key])
            touch(data, now)
            pool = Pool(data=data, auto_job_id=auto_job_id)
            self.pools[pool_id] = pool
            self._begin_allocation(pool, now)
            log.info("pool %s created (%s x %s)", pool_id, data["targetDedicatedNodes"], data["vmSize"])
            return pool

    def _cores_in_use(self, dedicated: bool, exclude: Pool) -> int:
        total = 0
        for pool in self.pools.values():
            if pool is exclude or pool.data["state"] == "deleting":
                continue
            cores = self._cores(pool.data["vmSize"])
            count = pool.alloc_dedicated if dedicated else pool.alloc_low
            if pool.alloc_start is None:
                count = pool.data["currentDedicatedNodes" if dedicated else "currentLowPriorityNodes"]
            total += cores * count
        return total

    def _begin_allocation(self, pool: Pool, now: float) -> None:
        data = pool.data
        cores = self._cores(data["vmSize"])
        errors: list[dict[str, Any]] = []
        want_d, want_l = data["targetDedicatedNodes"], data["targetLowPriorityNodes"]
        for dedicated, want, quota in (
            (True, want_d, self.core_quota),
            (False, want_l, self.low_priority_core_quota),
        ):
            have = data["currentDedicatedNodes" if dedicated else "currentLowPriorityNodes"]
            if quota is None or want <= have:
                continue
            if self._cores_in_use(dedicated, pool) + want * cores > quota:
                kind = "dedicated" if dedicated else "low-priority"
                errors.append(
                    {
                        "code": "AccountCoreQuotaReached" if dedicated else "AccountLowPriorityCoreQuotaReached",
                        "message": (
                            f"The specified account has reached its {kind} VM core quota. Please use a smaller "
                            "VM size or fewer nodes, or request a quota increase."
                        ),
                        "values": [
                            {"name": "Reason", "value": f"The {kind} core quota of the account is {quota}."},
                            {"name": "CoreQuota", "value": str(quota)},
                            {"name": "RequestedCores", "value": str(want * cores)},
                        ],
                    }
                )
                if dedicated:
                    want_d = have
                else:
                    want_l = have
        family_error = self._family_quota_error(pool, want_d)
        if family_error is not None:
            errors.append(family_error)
            want_d = data["currentDedicatedNodes"]
        if errors:
            data["resizeErrors"] = errors
        else:
            data.pop("resizeErrors", None)
        pool.alloc_dedicated, pool.alloc_low = want_d, want_l
        pool.alloc_start = now
        if data["allocationState"] != "resizing":
            data["allocationState"] = "resizing"
            data["allocationStateTransitionTime"] = iso(now)

    def _family_cores_in_use(self, family: str, exclude: Pool) -> int:
        total = 0
        for other in self.pools.values():
            size = vmsizes.lookup(other.data["vmSize"])
            if other is exclude or other.data["state"] == "deleting" or size is None or size.family.lower() != family:
                continue
            count = other.alloc_dedicated if other.alloc_start is not None else other.data["currentDedicatedNodes"]
            total += size.cores * count
        return total

    def _family_quota_error(self, pool: Pool, want: int) -> dict[str, Any] | None:
        """Dedicated nodes over the account's quota for their VM family (``dedicatedCoreQuotaPerVMFamily``; GPU
        families often start at 0): the service's ``AccountVMFamilyCoreQuotaReached`` resize error."""
        size = vmsizes.lookup(pool.data["vmSize"])
        if size is None or want <= pool.data["currentDedicatedNodes"]:
            return None
        quota = self.family_quotas.get(size.family.lower())
        if quota is None or self._family_cores_in_use(size.family.lower(), pool) + want * size.cores <= quota:
            return None
        return {
            "code": "AccountVMFamilyCoreQuotaReached",
            "message": (
                "The specified account has reached its VM family core quota. Please use a VM size of another "
                "family or fewer nodes, or request a quota increase."
            ),
            "values": [
                {"name": "Reason", "value": f"The dedicated core quota of the account for {size.family} is {quota}."},
                {"name": "VmFamily", "value": size.family},
                {"name": "CoreQuota", "value": str(quota)},
                {"name": "RequestedCores", "value": str(want * size.cores)},
            ],
        }

    def _new_node(self, pool: Pool, dedicated: bool, now: float) -> Node:
        self._node_seq += 1
        digest = hashlib.sha256(f"{pool.id}/{self._node_seq}/{uuid.uuid4()}".encode()).hexdigest()
        node_id = f"tvmps_{digest}_{'d' if dedicated else 'p'}"
        image = dict(pool.data["virtualMachineConfiguration"].get("imageReference") or {})
        image.setdefault("exactVersion", image.get("version", "latest"))
        data = {
            "id": node_id,
            "url": f"{self.url}/pools/{pool.id}/nodes/{node_id}",
            "state": "creating",
            "schedulingState": "enabled",
            "stateTransitionTime": iso(now),
            "allocationTime": iso(now),
            # A loopback address of its own (127.0.0.2, 127.0.0.3...): the processes of a multi-instance
            # task's ranks bind and reach their node's address, as across a pool's virtual network.
            "ipAddress": node_address(self._node_seq, self.address_block),
            "affinityId": f"TVM:{node_id}",
            "vmSize": pool.data["vmSize"],
            "totalTasksRun": 0,
            "totalTasksSucceeded": 0,
            "runningTasksCount": 0,
            "runningTaskSlotsCount": 0,
            "isDedicated": dedicated,
            "virtualMachineInfo": {"imageReference": image},
        }
        data.update(node_addresses(pool.data, self._node_seq, _free_index(pool)))
        node = Node(data=data, pool_id=pool.id, dedicated=dedicated)
        for sub in ("shared", "startup", "tasks"):
            (self.node_root(node_id) / sub).mkdir(parents=True, exist_ok=True)
        # "read/write access to all tasks that run on a node": whichever user each runs as (see task_user).
        # Sticky, as /tmp: a task user may not rename or remove another user's entries (a node worker's
        # socket folder), so one task cannot pose as what another task left there.
        (self.node_root(node_id) / "shared").chmod(0o1777)
        return node

    def _advance_pool(self, pool: Pool, now: float) -> None:
        data = pool.data
        if pool.stop_at is not None:
            if now >= pool.stop_at:
                self._finish_stop(pool, now)
            return
        if pool.alloc_start is None or data["state"] != "active":
            return
        elapsed = now - pool.alloc_start
        delay = self.allocation_delay
        staying = [n for n in pool.nodes.values() if n.data["state"] != "leavingpool"]
        # Shrinking starts at once, idle nodes first; what happens to their tasks is the deallocation option.
        for dedicated, want in ((True, pool.alloc_dedicated), (False, pool.alloc_low)):
            nodes = [n for n in staying if n.dedicated == dedicated]
            extra = len(nodes) - want
            for node in sorted(nodes, key=lambda n: n.used_slots)[: max(0, extra)]:
                self._deallocate_node(pool, node, pool.deallocation, now)
        self._reap_leaving(pool)
        if elapsed >= delay / 3:
            for dedicated, want in ((True, pool.alloc_dedicated), (False, pool.alloc_low)):
                have = sum(
                    1 for n in pool.nodes.values() if n.dedicated == dedicated and n.data["state"] != "leavingpool"
                )
                for _ in range(max(0, want - have)):
                    node = self._new_node(pool, dedicated, now)
                    pool.nodes[node.id] = node
        if elapsed >= 2 * delay / 3:
            for node in pool.nodes.values():
                if node.data["state"] == "creating":
                    transition(node.data, "starting", now, with_previous=False)
                    node.preparing = True
                    threading.Thread(
                        target=self._prepare_node, args=(pool, node), name=f"prepare-{node.id[:16]}", daemon=True
                    ).start()
        if elapsed >= delay and not any(n.data["state"] == "leavingpool" for n in pool.nodes.values()):
            data["currentDedicatedNodes"] = sum(1 for n in pool.nodes.values() if n.dedicated)
            data["currentLowPriorityNodes"] = sum(1 for n in pool.nodes.values() if not n.dedicated)
            data["allocationState"] = "steady"
            data["allocationStateTransitionTime"] = iso(now)
            pool.alloc_start = None
            touch(data, now)

    def _prepare_node(self, pool: Pool, node: Node) -> None:
        """Bring a ``starting`` node up (the executor's preparation, then the start task): state/nodes.py."""
        raise NotImplementedError

    def _deallocate_node(self, pool: Pool, node: Node, option: str, now: float) -> None:
        """Start removing ``node`` from ``pool`` (it leaves once its tasks have stopped).

        ``requeue`` kills its running tasks and puts them back in their job's queue, ``terminate``
        ends them (failed, ``TaskEnded``), ``taskcompletion`` and ``retaineddata`` let them finish;
        either way the node takes no new task.
        """
        transition(node.data, "leavingpool", now, with_previous=False)
        if option in ("requeue", "terminate"):
            for job_id, task_id in list(node.running):
                job = self.jobs.get(job_id)
                task = job.tasks.get(task_id) if job else None
                if task is not None:
                    self._kill(task, option)

    def _reap_leaving(self, pool: Pool) -> None:
        for node in [n for n in pool.nodes.values() if n.data["state"] == "leavingpool" and not n.running]:
            pool.nodes.pop(node.id, None)
            self._node_gone(node)
            log.info("node %s left pool %s", node.id, pool.id)

    def _remove_node(self, pool: Pool, node: Node) -> None:
        for job_id, task_id in list(node.running):
            job = self.jobs.get(job_id)
            task = job.tasks.get(task_id) if job else None
            if task is not None:
                self._kill(task, "requeue")
        if pool.nodes.pop(node.id, None) is not None:
            self._node_gone(node)

    def _node_gone(self, node: Node) -> None:
        """A node left its pool: its VM is gone, and with it what its tasks left running (in the background:
        the executor may call Docker, and the lock is held here)."""
        root = str(self.node_root(node.id))
        threading.Thread(target=self.executor.release_node, args=(root,), name=f"gone-{node.id}", daemon=True).start()

    def get_pool(self, pool_id: str) -> dict[str, Any]:
        """The wire representation of a pool."""
        with self.lock:
            return self.view(self._pool(pool_id).data)

    def list_pools(self) -> list[dict[str, Any]]:
        """All pools, oldest first."""
        with self.lock:
            return [self.view(p.data) for p in self.pools.values()]

    def delete_pool(self, pool_id: str) -> None:
        """Mark a pool for deletion; its nodes go and running tasks are requeued."""
        with self.lock:
            pool = self._pool(pool_id)
            self._delete_pool(pool, self.now())

    def _delete_pool(self, pool: Pool, now: float) -> None:
        if pool.data["state"] == "deleting":
            return
        transition(pool.data, "deleting", now, with_previous=False)
        pool.data["allocationState"] = "resizing"
        pool.data["allocationStateTransitionTime"] = iso(now)
        touch(pool.data, now)
        pool.alloc_start = None
        for node in list(pool.nodes.values()):
            transition(node.data, "leavingpool", now, with_previous=False)
            for job_id, task_id in list(node.running):
                task = self.jobs[job_id].tasks.get(task_id) if job_id in self.jobs else None
                if task is not None:
                    self._kill(task, "requeue")
        pool.delete_at = now + min(self.allocation_delay, 2.0) / 2

    def resize_pool(self, pool_id: str, body: dict[str, Any]) -> None:
        """Apply a ``POST /pools/{id}/resize`` body."""
        with self.lock:
            pool = self._pool(pool_id)
            if pool.data["state"] == "deleting":
                raise ApiError(409, "PoolBeingDeleted")
            if pool.data["allocationState"] != "steady":
                raise ApiError(409, "PoolNotSteady", "The specified pool is not in steady state.")
            if pool.formula is not None:
                raise ApiError(
                    409,
                    "OperationNotValidOnPool",
                    "The pool has autoscale enabled: disable it before resizing.",
                )
            option = body.get("nodeDeallocationOption") or "requeue"
            if option not in ("requeue", "terminate", "taskcompletion", "retaineddata"):
                raise invalid_property("nodeDeallocationOption", option)
            pool.deallocation = str(option)
            now = self.now()
            for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
                if key in body:
                    value = body[key]
                    if not isinstance(value, int) or value < 0:
                        raise invalid_property(key, value)
                    pool.data[key] = value
            touch(pool.data, now)
            self._begin_allocation(pool, now)

    def stop_resize(self, pool_id: str) -> None:
        """``POST .../stopresize``: the pool passes through ``stopping``, then is steady with the nodes it has.

        Recorded (scale_pools.json): right after the request the pool is ``stopping``; about five
        seconds later it is ``steady``, its targets unchanged, with a ``ResizeStopped`` resize error
        for each kind of node that fell short of its target.
        """
        with self.lock:
            pool = self._pool(pool_id)
            now = self.now()
            if pool.alloc_start is not None and pool.stop_at is None:
                pool.stop_at = now + min(self.allocation_delay / 3, _STOPPING_SECONDS)
                pool.data["allocationState"] = "stopping"
                pool.data["allocationStateTransitionTime"] = iso(now)
                touch(pool.data, now)

    def _finish_stop(self, pool: Pool, now: float) -> None:
        """The end of a stop resize: nodes not yet allocated are dropped, the pool is steady."""
        data = pool.data
        for node in [n for n in pool.nodes.values() if n.data["state"] == "creating"]:
            pool.nodes.pop(node.id, None)
        errors = []
        for dedicated, kind in ((True, "dedicated"), (False, "low priority")):
            have = sum(1 for n in pool.nodes.values() if n.dedicated == dedicated)
            data["currentDedicatedNodes" if dedicated else "currentLowPriorityNodes"] = have
            if have < int(data["targetDedicatedNodes" if dedicated else "targetLowPriorityNodes"]):
                errors.append(
                    {
                        "code": "ResizeStopped",
                        "message": (
                            f"Desired number of {kind} nodes could not be allocated due to a stop resize operation"
                        ),
                    }
                )
        if errors:
            data["resizeErrors"] = errors
        pool.alloc_start = pool.stop_at = None
        data["allocationState"] = "steady"
        data["allocationStateTransitionTime"] = iso(now)
        touch(data, now)

    def update_pool(self, pool_id: str, body: dict[str, Any], *, replace: bool = False) -> None:
        """Apply a ``PATCH /pools/{id}`` body, or with ``replace`` a ``POST .../updateproperties`` body.

        PATCH changes the properties it names. Replace sets every updatable property: one the body
        omits goes back to its default, so an omitted ``startTask`` is removed (REST reference, Pools -
        Replace Pool Properties: "if the Pool has a StartTask associated with it and if StartTask is not
        specified with this request, then the Batch service will remove the existing StartTask").
        """
        updatable = ("metadata", "startTask", "applicationPackageReferences", "targetNodeCommunicationMode")
        with self.lock:
            pool = self._pool(pool_id)
            if replace:
                body = {"targetNodeCommunicationMode": "default", **body}
            for key in updatable:
                value = body.get(key)
                if value is not None and value != []:
                    pool.data[key] = copy.deepcopy(value)
                elif replace or key in body:
                    pool.data.pop(key, None)
            touch(pool.data, self.now())

    def list_nodes(self, pool_id: str) -> list[dict[str, Any]]:
        """The nodes of a pool."""
        with self.lock:
            return [self.view(n.data) for n in self._pool(pool_id).nodes.values()]

    def get_node(self, pool_id: str, node_id: str) -> dict[str, Any]:
        """One node of a pool."""
        with self.lock:
            node = self._pool(pool_id).nodes.get(node_id)
            if node is None:
                raise not_found("NodeNotFound")
            return self.view(node.data)

    def node_counts(self) -> list[dict[str, Any]]:
        """``GET /nodecounts``: node counts per pool and state."""
        states = [
            "creating", "idle", "offline", "preempted", "rebooting", "reimaging", "running", "starting",
            "startTaskFailed", "leavingPool", "unknown", "unusable", "waitingForStartTask", "deallocated",
            "deallocating", "upgradingOS",
        ]  # fmt: skip
        keys = {state.lower(): state for state in states}
        out = []
        with self.lock:
            for pool in self.pools.values():
                entry: dict[str, Any] = {"poolId": pool.id}
                for dedicated, key in ((True, "dedicated"), (False, "lowPriority")):
                    counts = dict.fromkeys(states, 0)
                    for node in pool.nodes.values():
                        if node.dedicated == dedicated:
                            # The counts' property names are camelCase; node states are lower case on the wire.
                            name = keys.get(node.data["state"], node.data["state"])
                            counts[name] = counts.get(name, 0) + 1
                    counts["total"] = sum(counts.values())
                    entry[key] = counts
                out.append(entry)
        return out
