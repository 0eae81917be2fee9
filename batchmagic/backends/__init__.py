"""Backends run a bundle's tasks somewhere and report on them.

:class:`~batchmagic.backends.base.Backend` is the protocol; ``local`` runs tasks as
subprocesses on this machine, ``azure`` as container tasks on an ephemeral Azure Batch pool.
"""

from __future__ import annotations

from batchmagic.backends.base import Backend, BackendStatus, Phase, TaskStatus, TaskSubmission

__all__ = ["Backend", "BackendStatus", "Phase", "TaskStatus", "TaskSubmission", "BACKENDS"]

BACKENDS = ("local", "azure")
