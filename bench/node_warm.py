"""A sweep's tasks on a Batch node with the node's warm worker for the job (runners forked from a process that
has imported what the kernel has) and without it (a fresh interpreter per task, as before), side by side in
one run, through the Batch emulator (process executor) and Azurite:

- a task's start-up: from Batch starting the task (its ``executionInfo.startTime``) to the cell's first
  statement after its scikit-learn import, median over the tasks of a 21-task sweep (one node, one slot:
  the tasks run one after another; the first ones may start before the worker listens and run fresh);
- the sweep's wall time, submission to results.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import sklearn.tree  # noqa: F401 - the kernel has imported scikit-learn, as a notebook that uses it has

from batchmagic.api import Session
from batchmagic.backends.azure import requests
from tests.support.azurite import start_azurite
from tests.support.emulator import start_emulator
from tests.support.settings import azure_environ

CELL = (
    "from sklearn.tree import DecisionTreeClassifier\nimport time\nt0 = time.time()\n"
    "clf = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(X, y)\nscore = clf.score(X, y)"
)
DEPTHS = list(range(1, 22))


def _data() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    X = rng.random((150, 4))
    return {"X": X, "y": (X[:, 0] + X[:, 1] > 1).astype(int)}


def _sweep(session: Session, emulator: Any, *, worker: bool) -> dict[str, float]:
    """One 21-task sweep: the median task start-up and the sweep's wall seconds."""
    saved = requests.node_worker
    if not worker:
        requests.node_worker = lambda *_args: None  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        run = session.submit(
            CELL, _data(), backend="azure", sweep=[{"depth": d} for d in DEPTHS], slots_per_node=1, folder=""
        )
        results = run.wait(timeout=600)
        wall = time.perf_counter() - start
    finally:
        requests.node_worker = saved
    started = {t.id: t.execution_info.start_time.timestamp() for t in emulator.client().list_tasks(run.id)}
    startups = [float(t0) - started[str(task_id)] for task_id, t0 in results.t0.items()]
    return {"startup": statistics.median(startups), "wall": wall}


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with (
            ExitStack() as stack,
            start_azurite(tmp / "azurite") as azurite,
            start_emulator(tmp / "batch", allocation_delay=0.1) as emu,
        ):
            stack.enter_context(azure_environ(emu, azurite, container="bench-nodewarm", home=tmp / "home"))
            session = Session()
            session.backend("azure").check_access()
            fresh = _sweep(session, emu, worker=False)
            warm = _sweep(session, emu, worker=True)
            session.teardown()
    figures = {
        "node_task_startup_s_warm": warm["startup"],
        "node_task_startup_s_fresh": fresh["startup"],
        "node_task_startup_ratio": warm["startup"] / fresh["startup"],
        "node_sweep_s_warm": warm["wall"],
        "node_sweep_s_fresh": fresh["wall"],
        "node_sweep_ratio": warm["wall"] / fresh["wall"],
    }
    print(
        f"task start-up on a node: {warm['startup']:.3f} s with the node's warm worker, {fresh['startup']:.3f} s "
        f"fresh ({figures['node_task_startup_ratio']:.2f}x); 21-task sweep {warm['wall']:.1f} s vs "
        f"{fresh['wall']:.1f} s ({figures['node_sweep_ratio']:.2f}x)"
    )
    return figures


if __name__ == "__main__":
    main()
