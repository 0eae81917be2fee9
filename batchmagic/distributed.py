"""Distributed runs: what every rank of a ``%%azbatch --nodes N --distributed`` cell sees.

Every rank runs the same cell with the same captured namespace. What tells the ranks apart is the
environment, the same on every backend (the names ``torch.distributed``'s ``env://`` and torchrun use):

==================  ==========================================================================
``MASTER_ADDR``     the address of node rank 0 (Azure Batch: the host part of ``AZ_BATCH_MASTER_NODE``)
``MASTER_PORT``     a free port there (``AzBatch.master_port``, default 6105; locally a free one)
``WORLD_SIZE``      ranks in all: nodes x processes per node
``RANK``            this rank, ``NODE_RANK * LOCAL_WORLD_SIZE + LOCAL_RANK``
``LOCAL_RANK``      this rank's index on its node (the GPU it should use)
``LOCAL_WORLD_SIZE`` processes per node (``--procs-per-node``)
``NODE_RANK``       this node's index: the same order on every node
==================  ==========================================================================

:func:`rank`, :func:`world`, :func:`local_rank` and :func:`is_main` read them for code that does not
want ``os.environ``; outside a distributed run they say "rank 0 of 1". None of them waits for the other
ranks (no barrier): ``if batchmagic.distributed.is_main(): save(model)`` costs nothing.

Standard library only: the runner imports this module inside the training image.

Examples
--------
In [1]: %%azbatch --nodes 2 --distributed
   ...: import torch.distributed as dist
   ...: dist.init_process_group("gloo")   # env:// : MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
   ...: from batchmagic import distributed
   ...: print(distributed.rank(), "of", distributed.world())
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = [
    "DEFAULT_MASTER_PORT",
    "DEFAULT_SHM_SIZE",
    "ENV_NAMES",
    "MAX_NODES",
    "MAX_PROCS_PER_NODE",
    "is_main",
    "local_rank",
    "node_rank",
    "rank",
    "rank_environment",
    "rank_id",
    "rank_of",
    "thread_budget",
    "world",
]

#: The port rank 0 listens on unless ``AzBatch.master_port`` says otherwise (Batch keeps 6000 for itself).
DEFAULT_MASTER_PORT = 6105
#: ``/dev/shm`` of a rank's (and a GPU run's) container, the default of ``AzBatch.shm_size``: Docker's 64 MB
#: is too small for NCCL's shared-memory transport and for DataLoader workers (they fail with "Bus error");
#: the memory is only used when written.
DEFAULT_SHM_SIZE = "8g"
#: Azure Batch runs a multi-instance task on at most this many nodes: a pool with inter-node communication holds
#: at most 100 in the default (Batch service) pool allocation mode, 80 in a user-subscription account, which
#: the Batch API does not tell ("Batch service quotas and limits", its pool size limits).
MAX_NODES = 100
#: Ranks one node starts at most (``--procs-per-node``): more than any VM has GPUs, and cores to spare.
MAX_PROCS_PER_NODE = 64
#: The variables every rank sees, in the order they are documented.
ENV_NAMES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK")

_RANK_ID = re.compile(r"^rank-(\d+)$")


def rank_id(rank: int) -> str:
    """The task id a rank's spec, log and result are kept under: ``rank-<k>``."""
    return f"rank-{rank}"


def rank_of(task_id: str) -> int | None:
    """The rank of a ``rank-<k>`` task id; None for any other id."""
    match = _RANK_ID.match(task_id)
    return int(match.group(1)) if match else None


def rank_environment(
    *, node_rank: int, local_rank: int, nodes: int, procs_per_node: int, master_addr: str, master_port: int
) -> dict[str, str]:
    """The variables of one rank (see the module's table)."""
    return {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(nodes * procs_per_node),
        "RANK": str(node_rank * procs_per_node + local_rank),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(procs_per_node),
        "NODE_RANK": str(node_rank),
    }


def thread_budget(cores: int, ranks_here: int, env: Mapping[str, str]) -> dict[str, str]:
    """``OMP_NUM_THREADS`` for a rank: the machine's cores shared by the ranks on it (torchrun sets 1 when
    it starts several), unless the environment sets it already (``--env OMP_NUM_THREADS=...`` wins too:
    the runner applies ``--env`` after). Without it each rank's math library takes every core, and ranks
    sharing a machine slow each other down (gloo's all-reduce by a quarter on 2 cores)."""
    if "OMP_NUM_THREADS" in env or ranks_here <= 1:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, cores // ranks_here))}


def _int(name: str, default: int, env: Mapping[str, str] | None) -> int:
    try:
        return int((os.environ if env is None else env).get(name, default))
    except ValueError:
        return default


def rank(env: Mapping[str, str] | None = None) -> int:
    """This process's rank (``RANK``); 0 outside a distributed run."""
    return _int("RANK", 0, env)


def world(env: Mapping[str, str] | None = None) -> int:
    """How many ranks the run has (``WORLD_SIZE``); 1 outside a distributed run."""
    return _int("WORLD_SIZE", 1, env)


def local_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's index on its node (``LOCAL_RANK``): the GPU it should use; 0 outside a distributed run."""
    return _int("LOCAL_RANK", 0, env)


def node_rank(env: Mapping[str, str] | None = None) -> int:
    """This node's index (``NODE_RANK``); 0 outside a distributed run."""
    return _int("NODE_RANK", 0, env)


def is_main(env: Mapping[str, str] | None = None) -> bool:
    """True on rank 0, whose names come back to the notebook. Waits for no one (no barrier)."""
    return rank(env) == 0
