"""Fast to start in a container: a ``--backend local --container`` cell and sweep forked in the kernel's warm
container (batchmagic.backends.warm_container) vs each run and task in a ``docker run`` of its own (as before,
``AzBatch.warm_worker = 'off'``), side by side in one run:

- a small numpy cell (median of 5 warm, 3 without);
- a sweep task's start-up, from the backend starting the task to the cell's first statement after its
  imports (median over the tasks of a 6-task sweep).

Real parts, as the tests start them (tests/support/docker.py): a private dockerd (or $DOCKER_HOST) and the
debootstrap base image (cached under /tmp); the training image is built from this process's environment by
the first run (not measured), and reused by both backends.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np  # noqa: F401 - the kernel has imported numpy, as a notebook that uses it has

from batchmagic.api import Session
from batchmagic.backends.local import LocalBackend

CELL = "import numpy as np\ntotal = float(np.arange(n).sum())"
SWEEP_CELL = "import numpy as np\nimport time\nt0 = time.time()\ntotal = float(np.arange(n).sum())"
REPEAT = 5
TASKS = 6


def _measure(session: Session, backend: LocalBackend, repeat: int) -> tuple[float, float]:
    """Seconds for the cell (median of ``repeat``) and a sweep task's start-up (median)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        assert session.submit(CELL, {"n": 10}, backend=backend, container=True, folder="").wait()["total"] == 45
        times.append(time.perf_counter() - start)
    run = session.submit(
        SWEEP_CELL, {}, backend=backend, container=True, folder="", sweep=[{"n": n} for n in range(TASKS)]
    )
    results = run.wait()
    tasks = backend._runs[run.id].tasks  # noqa: SLF001 - when the backend started each task
    startups = [t0 - (tasks[str(task_id)].started or t0) for task_id, t0 in results.t0.items()]
    return statistics.median(times), statistics.median(startups)


def _warmed(home: Path) -> LocalBackend:
    """The warm backend once its first run (the image, a container of its own) is done and its warm
    container is ready."""
    backend = LocalBackend(home, warm=True)
    run = Session().submit("x = 1", {}, backend=backend, container=True, folder="")
    run.wait()
    worker = backend.warm_container(backend._runs[run.id].submission)  # noqa: SLF001
    deadline = time.monotonic() + 300
    while worker is None or not worker.ready:
        if time.monotonic() > deadline:
            raise RuntimeError("the warm container did not start")
        time.sleep(0.05)
    return backend


def main() -> dict[str, float]:
    from tests.support.docker import DockerEngine, make_base_image, start_dockerd

    names = ("DOCKER_HOST", "BATCHMAGIC_BASE_IMAGE", "BATCHMAGIC_REGISTRY", "BATCHMAGIC_IMAGE", "BATCHMAGIC_HOME")
    saved = {k: os.environ.get(k) for k in names}
    with ExitStack() as stack:
        host = os.environ.get("DOCKER_HOST", "")
        engine = DockerEngine(host) if host else stack.enter_context(start_dockerd())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cwarm-")))
        os.environ.update(DOCKER_HOST=engine.host, BATCHMAGIC_BASE_IMAGE=make_base_image(engine))
        os.environ.update(BATCHMAGIC_HOME=str(tmp / "home"))
        os.environ.pop("BATCHMAGIC_REGISTRY", None)  # a local image, built from the engine's layers
        os.environ.pop("BATCHMAGIC_IMAGE", None)
        try:
            warm_backend = _warmed(tmp / "home")
            session = Session()
            warm = _measure(session, warm_backend, REPEAT)
            cold = _measure(session, LocalBackend(tmp / "home", warm=False), 3)
            session.teardown()
            warm_backend.close()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return _report(warm, cold)


def _report(warm: tuple[float, float], cold: tuple[float, float]) -> dict[str, Any]:
    figures = {
        "container_warm_cell_s": warm[0],
        "container_cold_cell_s": cold[0],
        "container_cell_ratio": cold[0] / warm[0],
        "container_warm_task_startup_s": warm[1],
        "container_cold_task_startup_s": cold[1],
    }
    print(f"--container numpy cell     warm container {warm[0]:.2f} s, own container {cold[0]:.2f} s")
    print(f"--container task start-up  warm container {warm[1]:.3f} s, own container {cold[1]:.2f} s")
    return figures


if __name__ == "__main__":
    main()
