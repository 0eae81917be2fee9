"""Fast to start: the local backend with its warm worker (runners forked from a process that has imported
what the kernel has), without it (a fresh interpreter per runner, as before), and the same work run plainly
in this process, side by side in one run:

- a small scikit-learn cell (a decision tree on 150 rows): median of 5 runs each;
- a sweep task's start-up: from the backend starting the task to the cell's first statement, median over
  the tasks of a 21-task sweep;
- two 21-task sweeps (one model per depth 1..21, median of 3) against the plain loop over the same 21 depths,
  wall and CPU, and where a task's time goes (the median task, from the backend starting it to the backend
  seeing it end):

  - ``tree``: that decision tree on 150 rows, about 2 ms a fit: the plain loop takes about 0.04 s, so the
    sweep's figure is almost all per-task overhead (a process per task, its result, its bookkeeping);
  - ``forest``: the issue's reference workload ("a 21-task sweep of a small model: 0.6 s for the plain
    loop"): a random forest of 10 trees on 1,000 rows of 10 features, about 27 ms a fit, whose plain loop
    takes 0.55-0.6 s on this 2-core machine when it is quiet (1-1.6 s while other work loads it);
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
import sklearn.ensemble  # noqa: F401 - the kernel has imported scikit-learn, as a notebook that uses it has
import sklearn.tree  # noqa: F401

from batchmagic.api import Session
from batchmagic.backends.local import LocalBackend

CELL = (
    "from sklearn.tree import DecisionTreeClassifier\n"
    "clf = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(X, y)\nscore = clf.score(X, y)"
)
FOREST_CELL = (
    "from sklearn.ensemble import RandomForestClassifier\n"
    "clf = RandomForestClassifier(n_estimators=10, max_depth=depth, random_state=0).fit(X, y)\n"
    "score = clf.score(X, y)"
)
#: A sweep task's first statement after the cell's import: when its start-up ended (as before, the import
#: is start-up: the warm worker has done it, a fresh interpreter does it here).
FIRST_LINE = "import time\nt0 = time.time()\n"
REPEAT = 5
SWEEPS = 3  # the median sweep: one is under a second or two, easily disturbed
DEPTHS = list(range(1, 22))


def _data(rows: int = 150, features: int = 4) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    X = rng.random((rows, features))
    return {"X": X, "y": (X[:, 0] + X[:, 1] > 1).astype(int), "depth": 3}


#: The two sweeps: the cell, and the data it reads (without ``depth``, the sweep's parameter).
WORKLOADS = {"tree": (CELL, _data), "forest": (FOREST_CELL, lambda: _data(1000, 10))}


def _plain_cell() -> float:
    """Seconds for the small cell run in this process (median of REPEAT)."""
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        exec(CELL, dict(_data()))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _plain_loop(workload: str, repeat: int) -> tuple[float, float]:
    """The plain loop over the depths in this process, wall and CPU seconds (medians of ``repeat``)."""
    cell, data = WORKLOADS[workload]
    shared = data()
    loops, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        for depth in DEPTHS:
            exec(cell, {**shared, "depth": depth})
        loops.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(loops), statistics.median(cpu)


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


def _cell(backend: LocalBackend, session: Session, repeat: int) -> float:
    """Seconds for the small cell through ``backend`` (median of ``repeat``, after a first run that is not
    measured: the first run of a kernel)."""
    session.submit("x = 1", {}, backend=backend, folder="").wait()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.submit(CELL, _data(), backend=backend, folder="").wait()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sweep(backend: LocalBackend, session: Session, workload: str, depths: list[int], sweeps: int) -> dict[str, float]:
    """A sweep of ``workload`` over ``depths`` through ``backend``: its seconds, wall and CPU, a task's
    start-up and its span from start to end (medians)."""
    cell, make = WORKLOADS[workload]
    data = make()
    del data["depth"]
    walls, startups, spans, cpu = [], [], [], []
    for _ in range(sweeps):
        start, start_cpu = time.perf_counter(), _cpu(backend)
        imports, body = cell.split("\n", 1)
        source = f"{imports}\n{FIRST_LINE}{body}"
        run = session.submit(source, data, backend=backend, folder="", sweep=[{"depth": d} for d in depths])
        results = run.wait()
        walls.append(time.perf_counter() - start)
        cpu.append(_cpu(backend) - start_cpu)
        tasks = backend._runs[run.id].tasks  # noqa: SLF001 - when the backend started each task
        startups += [t0 - (tasks[str(task_id)].started or t0) for task_id, t0 in results.t0.items()]
        spans += [(t.ended or 0.0) - (t.started or 0.0) for t in tasks.values()]
    median = statistics.median
    return {"wall": median(walls), "cpu": median(cpu), "startup": median(startups), "span": median(spans)}


def _warm(backend: LocalBackend) -> dict[str, dict[str, float]]:
    session = Session()
    cell = _cell(backend, session, REPEAT)
    measured = {name: _sweep(backend, session, name, DEPTHS, SWEEPS) for name in WORKLOADS}
    measured["tree"]["cell"] = cell
    session.teardown()
    return measured


def _cold(backend: LocalBackend) -> dict[str, float]:
    """The cell and a short sweep's task start-up without the warm worker (a fresh interpreter each: seconds)."""
    session = Session()
    measured = _sweep(backend, session, "tree", DEPTHS[:4], 1) | {"cell": _cell(backend, session, 3)}
    session.teardown()
    return measured


def main() -> dict[str, float]:
    plain_cell = _plain_cell()
    plain = {"tree": _plain_loop("tree", REPEAT), "forest": _plain_loop("forest", SWEEPS)}
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        backend = _backend(Path(tmp) / "warm", warm=True)
        rss = _rss_mb(backend.warm.pid if backend.warm else None)
        warm = _warm(backend)
        cold = _cold(_backend(Path(tmp) / "cold", warm=False))
    tree = warm["tree"]
    figures = {
        "warm_cell_s": tree["cell"],
        "cold_cell_s": cold["cell"],
        "plain_cell_s": plain_cell,
        "warm_cell_over_plain_s": tree["cell"] - plain_cell,
        "warm_task_startup_s": tree["startup"],
        "cold_task_startup_s": cold["startup"],
        "warm_worker_rss_mb": rss,
    }
    for name, suffix in (("tree", ""), ("forest", "_forest")):
        sweep, (loop, loop_cpu) = warm[name], plain[name]
        figures |= {
            f"warm_sweep{suffix}_s": sweep["wall"],
            f"plain_loop{suffix}_s": loop,
            f"warm_sweep{suffix}_ratio": sweep["wall"] / loop,
            f"warm_task{suffix}_s": sweep["span"],
            f"warm_sweep{suffix}_cpu_s": sweep["cpu"],
            f"plain_loop{suffix}_cpu_s": loop_cpu,
            f"warm_sweep{suffix}_cpu_ratio": sweep["cpu"] / loop_cpu,
            # CPU a task costs beyond its cell's work in the plain loop: the process per task, its bookkeeping
            f"warm_task{suffix}_overhead_cpu_ms": (sweep["cpu"] - loop_cpu) / len(DEPTHS) * 1000,
        }
    _show(figures)
    return figures


def _show(f: dict[str, float]) -> None:
    print(f"small scikit-learn cell   warm {f['warm_cell_s']:.2f} s, cold {f['cold_cell_s']:.2f} s, ", end="")
    print(f"plain {f['plain_cell_s']:.3f} s")
    print(f"sweep task start-up       warm {f['warm_task_startup_s']:.3f} s, cold {f['cold_task_startup_s']:.3f} s")
    for label, s in (("tree (150 rows)", ""), ("forest (1,000 rows)", "_forest")):
        wall, loop, task = f[f"warm_sweep{s}_s"], f[f"plain_loop{s}_s"], f[f"warm_task{s}_s"]
        cpu, loop_cpu = f[f"warm_sweep{s}_cpu_s"], f[f"plain_loop{s}_cpu_s"]
        print(
            f"21-task sweep, {label:20s} warm {wall:.2f} s vs plain loop {loop:.2f} s ({wall / loop:.1f}x);"
            f" CPU {cpu:.2f} s vs {loop_cpu:.2f} s ({cpu / loop_cpu:.1f}x); a task {task:.3f} s"
        )
    print(f"warm worker               {f['warm_worker_rss_mb']:.0f} MB resident")


if __name__ == "__main__":
    main()
