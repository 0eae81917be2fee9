"""What a named pool is: the request that creates it, the description ``list_pools`` gives, and the
autoscale formula that keeps it warm while it is used and takes it to zero when it is not.

A named pool lives in the Batch service, not in a kernel: its formula, set when it is created, is
evaluated by Batch every :data:`EVALUATION_INTERVAL` whether or not any client is alive. The formula:

- grows the pool with the tasks pending or running on it (``$PendingTasks``), one node per
  ``slots_per_node`` tasks, up to ``max_nodes``;
- keeps the nodes it has while any task was pending or running in the last ``idle`` seconds;
- holds a *floor* (``resize NAME N``, or a run that needs nodes now) until ``idle`` after it was set;
- otherwise goes to zero, and a node leaves only once its tasks are done
  (``$NodeDeallocationOption = taskcompletion``).

Its first line is a comment carrying its parameters, so a client can read them back
(:func:`formula_parameters`). Standard library only.

Examples
--------
In [1]: print(autoscale_formula(PoolRequest("gpu", "Standard_NC4as_T4_v3", max_nodes=2, idle=1200), floor=0,
   ...:       mark=datetime(2026, 12, 1, 14, 0, tzinfo=UTC)))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from batchmagic.backends.azure.vmsizes import check_current
from batchmagic.config import parse_duration
from batchmagic.distributed import MAX_NODES
from batchmagic.errors import ConfigError

__all__ = [
    "PoolRequest",
    "Pool",
    "EVALUATION_INTERVAL",
    "CLOCK_SKEW",
    "DEFAULT_IDLE",
    "MAX_SLOTS_PER_NODE",
    "autoscale_formula",
    "formula_parameters",
    "check_pool_name",
    "nodes_for",
    "scale_to_zero_at",
]

#: How often Batch evaluates the formula: the service's minimum, so an idle pool goes soonest.
EVALUATION_INTERVAL = 5 * 60
#: A formula's mark is set this far back: a client clock a little ahead of the service's must not put it
#: in the service's future (a sample window cannot start there).
CLOCK_SKEW = timedelta(minutes=1)
DEFAULT_IDLE = 20 * 60
MAX_SLOTS_PER_NODE = 256  # Batch's limit on taskSlotsPerNode
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_HEADER = re.compile(r"^// batchmagic autoscale v1: (?P<params>.*)$", re.MULTILINE)

# Metadata keys batchmagic puts on a named pool (Batch keeps up to 1 KB of name/value pairs).
META_CREATED_BY = "created-by"
META_KIND = "batchmagic-pool"  # "named": tells a named pool from a run's auto pool
META_CREATOR = "creator"
META_CLIENT = "ledger-id"
META_IDLE = "idle-seconds"
META_MAX_NODES = "max-nodes"
META_IMAGE = "training-image"


def check_pool_name(name: str, flag: str = "pool") -> str:
    """``name`` if Batch accepts it as a pool id and it is not an auto pool's; ConfigError if not."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{flag} {name!r} is not a pool name: use up to 64 letters, digits, '-' and '_', e.g. gpu-pool"
        )
    if name.lower().startswith("bm_"):
        raise ConfigError(f"{flag} {name!r}: names starting with bm_ are the runs' own auto pools; pick another")
    return name


@dataclass(frozen=True)
class PoolRequest:
    """What ``%azbatch_pool create`` asks for, checked on construction.

    Parameters
    ----------
    name : str
        The pool's id in the Batch account.
    vm_size : str
        Its nodes' VM size.
    max_nodes : int
        The most nodes the formula grows it to.
    low_priority : bool
        Low-priority (spot) nodes instead of dedicated ones.
    idle : float or str
        Seconds (or ``"20m"``) without a pending or running task before it goes to zero.
    slots_per_node : int
        Tasks each node runs at once.
    inter_node : bool
        Inter-node communication, for ``--distributed`` runs (multi-instance tasks): one task per node.

    Raises
    ------
    ConfigError
        A value that cannot work, naming the flag.
    """

    name: str
    vm_size: str
    max_nodes: int = 1
    low_priority: bool = False
    idle: float = DEFAULT_IDLE
    slots_per_node: int = 1
    inter_node: bool = False

    def __post_init__(self) -> None:
        check_pool_name(self.name)
        if self.inter_node and self.low_priority:
            raise ConfigError("--inter-node pools take distributed runs, on dedicated nodes only: drop --low-priority")
        if self.inter_node and self.slots_per_node != 1:
            raise ConfigError("--inter-node pools run one task per node (Batch's rule): drop --slots-per-node")
        if not self.vm_size:
            raise ConfigError("--vm is required: the pool's VM size, e.g. --vm Standard_E32_v3")
        check_current(self.vm_size)  # a retired size: one line naming a current one
        if not isinstance(self.max_nodes, int) or self.max_nodes < 1:
            raise ConfigError(f"--max-nodes must be at least 1, not {self.max_nodes!r}")
        if self.inter_node and self.max_nodes > MAX_NODES:
            # Batch's pool size limit for inter-node communication ("Batch service quotas and limits"); the
            # service takes such a pool and never brings it to its size (resize errors), so say it here.
            raise ConfigError(
                f"--inter-node pools hold at most {MAX_NODES} nodes (Azure Batch's limit for inter-node "
                f"communication): use --max-nodes {MAX_NODES} or fewer"
            )
        if not isinstance(self.slots_per_node, int) or not 1 <= self.slots_per_node <= MAX_SLOTS_PER_NODE:
            raise ConfigError(
                f"--slots-per-node must be between 1 and {MAX_SLOTS_PER_NODE}, not {self.slots_per_node!r}"
            )
        object.__setattr__(self, "idle", parse_duration(self.idle, "--idle"))


@dataclass(frozen=True)
class Pool:
    """A named pool as ``list_pools`` describes it: enough to show it, price it and run on it.

    Node counts are the service's: ``dedicated``/``low_priority`` nodes the pool has now, the targets it
    is heading for, and ``nodes`` per node state (idle, running, starting...) over both kinds.
    """

    name: str
    vm_size: str
    state: str = "active"  # active, deleting
    allocation_state: str = "steady"  # steady, resizing, stopping
    dedicated: int = 0
    low_priority: int = 0
    target_dedicated: int = 0
    target_low_priority: int = 0
    nodes: dict[str, int] = field(default_factory=dict)  # node state -> count
    max_nodes: int | None = None
    idle: float | None = None  # seconds
    slots_per_node: int = 1
    low_priority_nodes: bool = False  # the pool grows with low-priority nodes
    image: str = ""  # the training image it prefetches
    registry: str = ""  # the registry whose credentials it holds
    node_image: str = ""
    creator: str = ""
    client_id: str = ""
    created: datetime | None = None
    evaluation_interval: float = EVALUATION_INTERVAL
    batchmagic: bool = True  # created by batchmagic (and so carries its metadata and formula)
    resize_error: str = ""
    inter_node: bool = False  # enableInterNodeCommunication: it takes distributed runs

    @property
    def current_nodes(self) -> int:
        return self.dedicated + self.low_priority

    @property
    def target_nodes(self) -> int:
        return self.target_dedicated + self.target_low_priority

    @property
    def ready_nodes(self) -> int:
        return self.nodes.get("idle", 0) + self.nodes.get("running", 0)

    def describe(self) -> str:
        """One line: name, size, nodes now / target (max), idle period, state, creator."""
        kind = (" low-priority" if self.low_priority_nodes else "") + (" inter-node" if self.inter_node else "")
        limit = f" (max {self.max_nodes})" if self.max_nodes is not None else ""
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.nodes.items()) if n)
        idle = f", to zero after {_short(self.idle)} idle" if self.idle else ""
        who = f", by {self.creator}" if self.creator else ""
        status = "" if self.state == "active" else f" [{self.state}]"
        error = f"; {self.resize_error}" if self.resize_error else ""
        return (
            f"{self.name}{status}: {self.vm_size}{kind}, {self.current_nodes} of {self.target_nodes} nodes{limit}"
            f"{f' ({states})' if states else ''}{idle}{who}{error}"
        )


def nodes_for(tasks: int, slots_per_node: int, max_nodes: int) -> int:
    """Nodes that run ``tasks`` at once, at most ``max_nodes``."""
    return min(max_nodes, math.ceil(max(0, tasks) / max(1, slots_per_node)))


def autoscale_formula(request: PoolRequest, *, floor: int = 0, mark: datetime) -> str:
    """The pool's autoscale formula, with a floor of ``floor`` nodes held from ``mark`` for ``idle``.

    The task window looks back ``idle`` from the evaluation, but not before ``mark``: so a resize to 0
    drops the nodes at the next evaluation (once their tasks are done). Only the operations Batch
    documents for each type are used: ternaries choose between doubles, times are compared as
    timestamps, and ``GetSample`` takes a timestamp or a timeinterval as its start.
    """
    target = "$TargetLowPriorityNodes" if request.low_priority else "$TargetDedicatedNodes"
    other = "$TargetDedicatedNodes" if request.low_priority else "$TargetLowPriorityNodes"
    idle = int(request.idle)
    at = mark.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    params = (
        f"max-nodes={request.max_nodes} idle={idle} slots={request.slots_per_node} floor={floor} "
        f"mark={at} low-priority={int(request.low_priority)}"
    )
    return "\n".join(
        [
            f"// batchmagic autoscale v1: {params}",
            "$busy = max(0, $PendingTasks.GetSample(TimeInterval_Minute, 0));",
            f"$want = min({request.max_nodes}, ceil($busy / {request.slots_per_node}));",
            f"$idle = TimeInterval_Second * {idle};",
            f'$mark = time("{at}");',
            "$fresh = time() < $mark + $idle;",
            "$recent = $fresh ? max(0, $PendingTasks.GetSample($mark, 0)) : max(0, $PendingTasks.GetSample($idle, 0));",
            f"$floor = $fresh ? {floor} : 0;",
            f"$hold = $recent > 0 ? {target} : 0;",
            f"{target} = min({request.max_nodes}, max($want, $floor, $hold));",
            f"{other} = 0;",
            "$NodeDeallocationOption = taskcompletion;",
        ]
    )


def formula_parameters(formula: str | None) -> dict[str, str]:
    """The parameters in the header of a formula :func:`autoscale_formula` wrote; empty for another."""
    match = _HEADER.search(formula or "")
    if not match:
        return {}
    return dict(item.split("=", 1) for item in match.group("params").split() if "=" in item)


def scale_to_zero_at(last_busy: datetime, idle: float, interval: float = EVALUATION_INTERVAL) -> datetime:
    """About when a pool whose last task ended at ``last_busy`` is at zero nodes, if no task comes: the
    idle period, then up to one evaluation interval (plus a sample, 30 s, that the service takes late)."""
    return last_busy + timedelta(seconds=idle + interval + 30)


def _short(seconds: float | None) -> str:
    if not seconds:
        return "0s"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
