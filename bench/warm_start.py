"""Fast to start: the local backend with its warm worker (runners forked from a process that has imported
what the kernel has), without it (a fresh interpreter per runner, as before), and the same work run plainly
in this process, side by side in one run:

- a small scikit-learn cell (a decision tree on 150 rows): median of 5 runs each;
- a sweep task's start-up: from the backend starting the task to the cell's first statement, median over
  the tasks of a 21-task sweep;
- that 21-task sweep (one tree per depth) against the plain loop over the same 21 depths, and where a
  task's time goes (the median task, from the backend starting it to the backend seeing it end);
- the warm worker's resident memory once it has imported what this process has (numpy, scikit-learn).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sklearn.tree  # noqa: F401 - the kernel has imported scikit-learn, as a notebook that uses it has

from batchmagic.api import Session
from batchmagic.backends.local import LocalBackend

CELL = (
    "from sklearn.tree import DecisionTreeClassifier\n"
    "clf = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(X, y)\nscore = clf.score(X, y)"
)
SWEEP_CELL = "from sklearn.tree import DecisionTreeClassifier\nimport time\nt0 = time.time()\n" + CELL
REPEAT = 5
DEPTHS = list(range(1, 22))


def _data() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    X = rng.random((150, 4))
    return {"X": X, "y": (X[:, 0] + X[:, 1] > 1).astype(int), "depth": 3}


def _plain() -> tuple[float, float]:
    """Seconds for the cell run in this process, and for the plain loop over the depths (medians of REPEAT)."""
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        exec(CELL, dict(_data()))
        times.append(time.perf_counter() - start)
    loops = []
    for _ in range(REPEAT):  # the median of several: one loop is a tenth of a second, easily disturbed
        start = time.perf_counter()
        for depth in DEPTHS:
            exec(CELL, {**_data(), "depth": depth})
        loops.append(time.perf_counter() - start)
    return statistics.median(times), statistics.median(loops)


def _backend(home: Path, *, warm: bool) -> LocalBackend:
    backend = LocalBackend(home, warm=warm)
    if backend.warm is not None:
        backend.warm.start()
        deadline = time.monotonic() + 120
        while not backend.warm.ready:
            if time.monotonic() > deadline:
                raise RuntimeError("the warm worker did not start")
            time.sleep(0.05)
    return backend


def _rss_mb(pid: int | None) -> float:
    """Resident memory of process ``pid`` in MB (0 when unknown)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def _measure(backend: LocalBackend, depths: list[int], repeat: int = REPEAT) -> tuple[float, float, float, float]:
    """Seconds for the cell (median of ``repeat``), a sweep task's start-up (median), the sweep over ``depths``,
    a sweep task from start to end (median)."""
    session = Session()
    session.submit("x = 1", {}, backend=backend, folder="").wait()  # the first run of a kernel: not measured
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.submit(CELL, _data(), backend=backend, folder="").wait()
        times.append(time.perf_counter() - start)
    data = _data()
    del data["depth"]
    start = time.perf_counter()
    run = session.submit(SWEEP_CELL, data, backend=backend, folder="", sweep=[{"depth": d} for d in depths])
    results = run.wait()
    sweep_s = time.perf_counter() - start
    tasks = backend._runs[run.id].tasks  # noqa: SLF001 - when the backend started each task
    startups = [t0 - (tasks[str(task_id)].started or t0) for task_id, t0 in results.t0.items()]
    spans = [(t.ended or 0.0) - (t.started or 0.0) for t in tasks.values()]
    session.teardown()
    return statistics.median(times), statistics.median(startups), sweep_s, statistics.median(spans)


def main() -> dict[str, float]:
    plain_cell, plain_loop = _plain()
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        backend = _backend(Path(tmp) / "warm", warm=True)
        rss = _rss_mb(backend.warm.pid if backend.warm else None)
        warm = _measure(backend, DEPTHS)
        cold = _measure(_backend(Path(tmp) / "cold", warm=False), DEPTHS[:4], repeat=3)
    figures = {
        "warm_cell_s": warm[0],
        "cold_cell_s": cold[0],
        "plain_cell_s": plain_cell,
        "warm_cell_over_plain_s": warm[0] - plain_cell,
        "warm_task_startup_s": warm[1],
        "cold_task_startup_s": cold[1],
        "warm_sweep_s": warm[2],
        "plain_loop_s": plain_loop,
        "warm_sweep_ratio": warm[2] / plain_loop,
        "warm_task_s": warm[3],
        "warm_worker_rss_mb": rss,
    }
    print(f"small scikit-learn cell   warm {warm[0]:.2f} s, cold {cold[0]:.2f} s, plain {plain_cell:.3f} s")
    print(f"sweep task start-up       warm {warm[1]:.3f} s, cold {cold[1]:.3f} s")
    print(
        f"21-task sweep             warm {warm[2]:.2f} s, plain loop {plain_loop:.2f} s ({warm[2] / plain_loop:.1f}x),"
        f" a task {warm[3]:.3f} s"
    )
    print(f"warm worker               {rss:.0f} MB resident")
    return figures


if __name__ == "__main__":
    main()
