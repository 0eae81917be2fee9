"""Named pools: the Python API under ``%azbatch_pool`` and ``batchmagic pool``.

A named pool is a Batch pool that outlives runs: cells run on it with ``%%azbatch --pool NAME`` (one
job per run, so several kernels share it), it grows with their tasks up to ``max_nodes`` and goes back
to zero nodes by itself once no task has been pending or running for ``idle`` (its autoscale formula,
:mod:`batchmagic.backends.azure.poolspec`, is evaluated by Batch, with or without a client alive).

Examples
--------
In [1]: from batchmagic import pools

In [2]: pools.create_pool("gpu", vm_size="Standard_NC4as_T4_v3", max_nodes=2, idle="20m")
Out[2]: Pool(name='gpu', vm_size='standard_nc4as_t4_v3', ...)

In [3]: [p.describe() for p in pools.list_pools()]
Out[3]: ['gpu: standard_nc4as_t4_v3, 0 of 0 nodes (max 2), to zero after 20m idle, by ada']

In [4]: pools.resize_pool("gpu", 1)      # one node now, held for the idle period

In [5]: pools.delete_pool("gpu")
"""

from __future__ import annotations

from typing import Any

from batchmagic.api import Session, default_session
from batchmagic.backends.azure.poolspec import DEFAULT_IDLE, Pool, PoolRequest, check_pool_name
from batchmagic.backends.base import NamedPools
from batchmagic.config import Settings, parse_duration
from batchmagic.errors import ConfigError

__all__ = [
    "Pool",
    "PoolRequest",
    "command",
    "create_pool",
    "list_pools",
    "get_pool",
    "resize_pool",
    "delete_pool",
    "delete_pools",
]


def _backend(session: Session | None, settings: Settings | None) -> tuple[NamedPools, Session]:
    session = session or default_session()
    backend = session.backend("azure", settings=settings)
    if not isinstance(backend, NamedPools):
        raise ConfigError("named pools need the Azure Batch backend")
    return backend, session


def create_pool(
    name: str,
    *,
    vm_size: str,
    max_nodes: int = 1,
    low_priority: bool = False,
    idle: float | str = DEFAULT_IDLE,
    slots_per_node: int = 1,
    inter_node: bool = False,
    session: Session | None = None,
    settings: Settings | None = None,
) -> Pool:
    """Create a named pool at zero nodes that grows with its tasks and goes back to zero when idle.

    Parameters
    ----------
    name : str
        The pool's id in the Batch account (``%%azbatch --pool NAME``).
    vm_size : str
        Its nodes' VM size, e.g. ``Standard_E32_v3``.
    max_nodes : int
        The most nodes it grows to.
    low_priority : bool
        Low-priority (spot) nodes instead of dedicated ones.
    idle : float or str
        How long (seconds, or ``"20m"``) it keeps its nodes once no task is pending or running.
    slots_per_node : int
        Tasks each node runs at once.
    inter_node : bool
        Inter-node communication and one task per node: the pool takes ``--distributed`` runs. Its
        formula counts tasks, not the nodes a distributed run holds: scale it with :func:`resize_pool`
        to the run's nodes before the run, and to 0 after it.
    session, settings : optional
        Default: the process's session and its settings.

    Raises
    ------
    ConfigError
        A value that cannot work, before anything is created; or the pool exists already.
    """
    request = PoolRequest(
        name,
        vm_size,
        max_nodes=max_nodes,
        low_priority=low_priority,
        idle=parse_duration(idle, "--idle"),
        slots_per_node=slots_per_node,
        inter_node=inter_node,
    )
    backend, session = _backend(session, settings)
    return backend.create_pool(request, client_id=session.client_id)


def list_pools(*, session: Session | None = None, settings: Settings | None = None) -> list[Pool]:
    """batchmagic's named pools in the Batch account, with their nodes by state."""
    backend, _ = _backend(session, settings)
    return backend.list_pools()


def get_pool(name: str, *, session: Session | None = None, settings: Settings | None = None) -> Pool:
    """The named pool ``name``; ConfigError when there is none."""
    backend, _ = _backend(session, settings)
    return backend.get_pool(check_pool_name(name))


def resize_pool(name: str, nodes: int, *, session: Session | None = None, settings: Settings | None = None) -> Pool:
    """Bring pool ``name`` to ``nodes`` nodes now and hold them for its idle period; 0 lets them go as soon as
    their tasks are done. Its autoscale formula stays in charge afterwards.

    Raises
    ------
    ConfigError
        ``nodes`` negative or over the pool's ``max_nodes``, or no such pool.
    """
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 0:
        raise ConfigError(f"resize to {nodes!r} nodes: give a whole number, 0 or more (0 lets the nodes go)")
    backend, _ = _backend(session, settings)
    return backend.resize_pool(check_pool_name(name), nodes)


def delete_pool(name: str, *, session: Session | None = None, settings: Settings | None = None) -> str:
    """Delete pool ``name`` (its nodes go at once); a line saying what was removed."""
    backend, _ = _backend(session, settings)
    return backend.delete_pool(check_pool_name(name))


def delete_pools(*, session: Session | None = None, settings: Settings | None = None) -> list[str]:
    """Delete every batchmagic named pool in the account; a line per pool removed."""
    backend, _ = _backend(session, settings)
    return [backend.delete_pool(pool.name) for pool in backend.list_pools() if pool.state == "active"]


def pool_cost(pool: Pool, settings: Settings) -> str:
    """What the pool's nodes cost now, e.g. ``$0.19/h``; ``cost unknown (...)`` when a price is missing."""
    from batchmagic.backends.azure.prices import Prices, format_money

    prices = Prices.for_settings(settings.home, settings.prices)
    region = settings.batch_region
    rate = prices.cost_per_hour(pool.vm_size, region, dedicated=pool.dedicated, low_priority=pool.low_priority)
    if rate is None:
        where = f"in {region}" if region else "(the Batch account's region is unknown: set AzBatch.region)"
        return f"cost unknown (no price for {pool.vm_size} {where})"
    return f"{format_money(rate, prices.currency)}/h"


def command(args: Any, *, session: Session, settings: Settings) -> list[str]:
    """Run a parsed ``%azbatch_pool`` / ``batchmagic pool`` command; the lines to print.

    Raises
    ------
    ConfigError
        Bad input (checked before anything is created) or what Batch refused.
    """
    verb, name = args.command, args.name
    if verb == "ls":
        if name:
            raise ConfigError(f"pool ls takes no name (got {name!r})")
        found = list_pools(session=session, settings=settings)
        if not found:
            return ["no named pools: %azbatch_pool create NAME --vm SIZE makes one"]
        return [f"{pool.describe()}; {pool_cost(pool, settings)}" for pool in found]
    if not name:
        raise ConfigError(f"pool {verb} needs the pool's name, e.g. pool {verb} gpu-pool")
    if verb != "resize" and args.nodes is not None:
        raise ConfigError(f"pool {verb} takes one name, not {args.nodes!r} too")
    if verb == "create":
        pool = create_pool(
            name,
            vm_size=args.vm or settings.vm_size,
            max_nodes=args.max_nodes,
            low_priority=args.low_priority,
            idle=args.idle,
            slots_per_node=args.slots_per_node,
            inter_node=bool(getattr(args, "inter_node", False)),
            session=session,
            settings=settings,
        )
        return [f"created pool {pool.describe()}", f"run cells on it with %%azbatch --pool {pool.name}"]
    if verb == "resize":
        if args.nodes is None or not str(args.nodes).isdigit():
            raise ConfigError(f"pool resize {name} needs a number of nodes, 0 or more, e.g. pool resize {name} 2")
        pool = resize_pool(name, int(args.nodes), session=session, settings=settings)
        return [f"resizing pool {pool.describe()}"]
    return [f"removed {delete_pool(name, session=session, settings=settings)}"]
