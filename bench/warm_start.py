"""Fast to start: the local backend with its warm worker (runners forked from a process that has imported
what the kernel has), without it (a fresh interpreter per runner, as before), and the same work run plainly
in this process, side by side in one run:

- a small scikit-learn cell (a decision tree on 150 rows): median of 5 runs each;
- a sweep task's start-up: from the backend starting the task to the cell's first statement, median over
  the tasks of a 21-task sweep;
- that 21-task sweep (one tree per depth, median of 3) against the plain loop over the same 21 depths, and where a
  task's time goes (the median task, from the backend starting it to the backend seeing it end);
- the warm worker's resident memory once it has imported what this process has (numpy, scikit-learn).
"""

from __future__ import annotations

import os
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


def _plain() -> tuple[float, float, float]:
    """Seconds for the cell run in this process, and for the plain loop over the depths, wall and CPU (medians
    of REPEAT)."""
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        exec(CELL, dict(_data()))
        times.append(time.perf_counter() - start)
    loops, cpu = [], []
    for _ in range(REPEAT):  # the median of several: one loop is a tenth of a second, easily disturbed
        start, start_cpu = time.perf_counter(), time.process_time()
        for depth in DEPTHS:
            exec(CELL, {**_data(), "depth": depth})
        loops.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), statistics.median(loops), statistics.median(cpu)


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


def _cpu(backend: LocalBackend) -> float:
    """CPU seconds this process and the warm worker (with the runners it forked and reaped) have used: a
    figure that other work on the machine does not inflate, as it does wall time."""
    used = time.process_time()
    pid = backend.warm.pid if backend.warm is not None else None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return used
    return used + sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _measure(backend: LocalBackend, depths: list[int], repeat: int = REPEAT) -> tuple[float, ...]:
    """Seconds for the cell (median of ``repeat``), a sweep task's start-up (median), the sweep over ``depths``,
    a sweep task from start to end (median), the CPU seconds the sweep took (median)."""
    session = Session()
    session.submit("x = 1", {}, backend=backend, folder="").wait()  # the first run of a kernel: not measured
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.submit(CELL, _data(), backend=backend, folder="").wait()
        times.append(time.perf_counter() - start)
    data = _data()
    del data["depth"]
    sweeps, startups, spans, cpu = [], [], [], []
    for _ in range(sweeps_of(repeat)):  # the median sweep: one is under a second, easily disturbed
        start, start_cpu = time.perf_counter(), _cpu(backend)
        run = session.submit(SWEEP_CELL, data, backend=backend, folder="", sweep=[{"depth": d} for d in depths])
        results = run.wait()
        sweeps.append(time.perf_counter() - start)
        cpu.append(_cpu(backend) - start_cpu)
        tasks = backend._runs[run.id].tasks  # noqa: SLF001 - when the backend started each task
        startups += [t0 - (tasks[str(task_id)].started or t0) for task_id, t0 in results.t0.items()]
        spans += [(t.ended or 0.0) - (t.started or 0.0) for t in tasks.values()]
    session.teardown()
    medians = (times, startups, sweeps, spans, cpu)
    return tuple(statistics.median(m) for m in medians)


def sweeps_of(repeat: int) -> int:
    """How many sweeps to measure: 3 for the warm backend (under a second each), 1 for the cold one (tens)."""
    return 3 if repeat >= REPEAT else 1


def main() -> dict[str, float]:
    plain_cell, plain_loop, plain_loop_cpu = _plain()
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
        "warm_sweep_cpu_s": warm[4],
        "plain_loop_cpu_s": plain_loop_cpu,
        "warm_sweep_cpu_ratio": warm[4] / plain_loop_cpu,
        "warm_worker_rss_mb": rss,
    }
    print(f"small scikit-learn cell   warm {warm[0]:.2f} s, cold {cold[0]:.2f} s, plain {plain_cell:.3f} s")
    print(f"sweep task start-up       warm {warm[1]:.3f} s, cold {cold[1]:.3f} s")
    print(
        f"21-task sweep             warm {warm[2]:.2f} s, plain loop {plain_loop:.2f} s ({warm[2] / plain_loop:.1f}x),"
        f" a task {warm[3]:.3f} s"
    )
    cpu_ratio = warm[4] / plain_loop_cpu
    print(f"21-task sweep, CPU        warm {warm[4]:.2f} s, plain loop {plain_loop_cpu:.2f} s ({cpu_ratio:.1f}x)")
    print(f"warm worker               {rss:.0f} MB resident")
    return figures


if __name__ == "__main__":
    main()
