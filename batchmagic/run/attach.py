"""A run rebuilt from the ledger and its store, to follow it from another client (a kernel that is gone).

The ledger's entry says what was submitted (:class:`~batchmagic.protocol.LedgerSubmission`: the fields of
the :class:`~batchmagic.backends.base.TaskSubmission` a backend needs, no secret, no URL); the store holds
the rest: the tasks (their specs), a sweep's parameters (in the specs), the cell (in the bundle).
:func:`rebuild` reads them; :meth:`batchmagic.run.run.Run.attach` makes the run from what it found.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cloudpickle

from batchmagic.backends.base import TaskSubmission
from batchmagic.distributed import rank_of
from batchmagic.errors import ConfigError
from batchmagic.protocol import Layout, LedgerSubmission, TaskSpec
from batchmagic.run.ledger import LedgerRun
from batchmagic.storage import Store

__all__ = ["ATTACH_FIELDS", "Rebuilt", "ledger_submission", "rebuild"]

log = logging.getLogger("batchmagic.run")

#: The TaskSubmission fields the ledger keeps, for Run.attach.
ATTACH_FIELDS = tuple(f.name for f in fields(LedgerSubmission))


def ledger_submission(submission: TaskSubmission) -> LedgerSubmission:
    """What the ledger keeps of a submission, for another client to follow the run."""
    return LedgerSubmission(**{key: getattr(submission, key) for key in ATTACH_FIELDS})


@dataclass
class Rebuilt:
    """What a followed run is, as its ledger entry and its store say."""

    task_ids: list[str]
    params: list[dict[str, Any]] | None
    vm_size: str
    timeout: float
    created: float
    env: dict[str, str]
    source: str
    submission: TaskSubmission
    ended_in_store: bool = False  # every task left its outcome in the store


def rebuild(entry: LedgerRun, store: Store) -> Rebuilt:
    """Read the run ``entry`` names back from ``store``.

    Raises
    ------
    ConfigError
        The run's data is not in this store (another home or container).
    """
    submitted = entry.submitted
    prefix = Layout.run_prefix(entry.run_id)
    keys = [key for key, _size in store.list_keys(prefix)]
    found = (Layout.spec_task(entry.run_id, key) for key in keys)
    specs = sorted((tid for tid in found if tid), key=lambda tid: (rank_of(tid) or 0, tid))  # rank-2 before rank-10
    if not specs:
        raise ConfigError(
            f"run {entry.name} has no data in {store.describe()}: it was submitted with other settings "
            "(AzBatch.home, BATCHMAGIC_CONTAINER)"
        )
    params: list[dict[str, Any]] | None = None
    if submitted.sweep:
        params = []
        for task_id in specs:
            spec = TaskSpec.from_json(store.get_bytes(Layout.spec(entry.run_id, task_id)))
            params.append({k: cloudpickle.loads(bytes.fromhex(v)) for k, v in spec.params.items()})
    submission = TaskSubmission(
        run_id=entry.run_id,
        name=entry.name,
        task_ids=list(specs),
        spec_keys={tid: Layout.spec(entry.run_id, tid) for tid in specs},
        vm_size=submitted.vm_size,
        **{k: v for k, v in asdict(submitted.submission).items() if k != "vm_size"},
    )
    return Rebuilt(
        task_ids=specs,
        params=params,
        vm_size=submitted.vm_size,
        timeout=submitted.submission.timeout or 24 * 3600,
        created=submitted.created or submitted.time or time.time(),
        env=dict(submitted.env),
        source=cell_of(store, entry.run_id),
        submission=submission,
        ended_in_store=all(Layout.result(entry.run_id, tid) in keys for tid in specs),
    )


def cell_of(store: Store, run_id: str) -> str:
    """The cell's source, from the run's bundle ("" when it cannot be read: the record then lacks it)."""
    from batchmagic.package.bundle import BundleReader

    try:
        with tempfile.TemporaryDirectory(prefix="batchmagic-attach-") as tmp:
            path = Path(tmp) / "bundle"
            store.get_file(Layout.bundle(run_id), path)
            reader = BundleReader(path)
            try:
                return reader.cell()
            finally:
                reader.close()
    except Exception:
        log.debug("could not read the cell of run %s", run_id, exc_info=True)
        return ""
