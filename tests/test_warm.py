"""Fast to start: the local backend forks each runner from a warm worker that has imported what this kernel
has (batchmagic.backends.warm), with the isolation of a fresh process: its own session and process group,
the task's directory and environment, the timeout and Cancel. The figures are bench/warm_start.py's."""

from __future__ import annotations

import importlib
import os
import pkgutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batchmagic.api import Session
from batchmagic.backends.local import LocalBackend
from batchmagic.backends.local import _worker_environment as worker_environment
from batchmagic.backends.warm import Forked, WarmWorker, kernel_modules
from batchmagic.errors import RunCancelled, RunFailed
from tests.support.emulator import wait_for


@pytest.fixture
def session(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Session()
    yield s
    s.teardown()
    backend: Any = s.backend("local")
    if backend.warm is not None:
        backend.warm.close()


def with_worker(session: Session) -> Any:
    """The session's local backend with a warm worker (opt-in: LocalBackend's warm=False by default)."""
    backend: Any = session.backend("local")
    if backend.warm is None:
        backend.warm = WarmWorker(backend.python, worker_environment())
    return backend


def warm_backend(session: Session) -> LocalBackend:
    backend: Any = with_worker(session)
    assert backend.warm is not None
    backend.warm.start()
    wait_for(lambda: backend.warm.ready, timeout=60)
    return backend  # type: ignore[no-any-return]


def process_of(backend: LocalBackend, run: Any) -> Any:
    return backend._runs[run.id].tasks["task-0"].process  # noqa: SLF001 - which kind of process ran the task


def test_a_forked_runner_has_what_a_fresh_one_has(session, tmp_path):
    import numpy  # noqa: F401 - the kernel has it: the worker imports it before it forks

    backend = warm_backend(session)
    cell = (
        "import os, sys\n"
        "preloaded = 'numpy' in sys.modules\n"
        "cwd = os.getcwd()\nsid = os.getsid(0) == os.getpid() == os.getpgid(0)\n"
        "task = os.environ.get('AZ_BATCH_TASK_ID')\nsecret = 'AZURE_STORAGE_CONNECTION_STRING' in os.environ\n"
        "print('hello from', task)"
    )
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = "UseDevelopmentStorage=true"  # never reaches a task
    try:
        run = session.submit(cell, {}, backend=backend)
        out = run.wait(timeout=60)
    finally:
        del os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    assert isinstance(process_of(backend, run), Forked)
    assert out["preloaded"] and out["sid"] and out["task"] == "task-0" and not out["secret"]
    assert out["cwd"] == str(backend.store.path(f"runs/{run.id}/task-0") / "wd")
    assert "hello from task-0" in run.logs()


def test_the_worker_imports_what_the_kernel_imported_since(session):
    backend = warm_backend(session)
    # A module of site-packages no test imports: one of pygments' hundreds of lexers (the suite imports
    # some of them, never all).
    import pygments.lexers

    lexers = (f"pygments.lexers.{m.name}" for m in pkgutil.iter_modules(pygments.lexers.__path__))
    fresh = next(m for m in lexers if m not in sys.modules and not m.endswith("_builtins"))
    run = session.submit(f"import sys\nbefore = {fresh!r} in sys.modules", {}, backend=backend)
    assert run.wait(timeout=60)["before"] is False
    importlib.import_module(fresh)  # the kernel imports it now
    assert fresh in kernel_modules()
    run = session.submit(f"import sys\nbefore = {fresh!r} in sys.modules", {}, backend=backend)
    assert run.wait(timeout=60)["before"] is True and isinstance(process_of(backend, run), Forked)


def test_timeout_and_cancel_end_a_forked_runner_and_what_it_started(session):
    backend = warm_backend(session)
    cell = (
        "import subprocess, time\nchild = subprocess.Popen(['sleep', '60'])\nprint(child.pid, flush=True)\n"
        "time.sleep(60)"
    )
    run = session.submit(cell, {}, backend=backend, timeout=3)
    with pytest.raises(RunFailed, match="stopped after its --timeout of 3s"):
        run.wait(timeout=60)
    assert isinstance(process_of(backend, run), Forked)
    child = int(run.logs().split()[0])
    wait_for(lambda: not _alive(child), timeout=10)

    run = session.submit(cell, {}, backend=backend)
    wait_for(lambda: run.poll() or run.logs().strip(), timeout=30)
    child = int(run.logs().split()[0])
    run.cancel()
    with pytest.raises(RunCancelled):
        run.result()
    process = process_of(backend, run)
    assert isinstance(process, Forked) and process.wait(10) in (-signal.SIGTERM, -signal.SIGKILL, 143)
    wait_for(lambda: not _alive(child), timeout=10)


def test_a_sweep_forks_a_runner_per_task(session):
    backend = warm_backend(session)
    run = session.submit(
        "import os\ny = k * 2\npid = os.getpid()", {}, backend=backend, sweep=[{"k": k} for k in range(6)]
    )
    results = run.wait(timeout=120)
    assert list(results.y) == [0, 2, 4, 6, 8, 10] and len(set(results.pid)) == 6
    tasks = backend._runs[run.id].tasks  # noqa: SLF001
    assert all(isinstance(t.process, Forked) for t in tasks.values())


def test_without_the_worker_runners_are_fresh_processes(home, tmp_path):
    backend = LocalBackend(home, warm=False)
    run = Session().submit("x = 1", {}, backend=backend, folder="")
    assert run.wait(timeout=60) == {"x": 1}
    assert not isinstance(process_of(backend, run), Forked)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent is gone for our purpose
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_first_run_starts_as_before_while_the_worker_warms(session):
    backend: Any = with_worker(session)
    run = session.submit("x = 1", {}, backend=backend)
    assert run.wait(timeout=60) == {"x": 1}
    assert not isinstance(process_of(backend, run), Forked)  # the worker was not ready yet
    wait_for(lambda: backend.warm.ready, timeout=60)
    time.sleep(0.1)


def test_the_worker_leaves_nothing_behind(home):
    backend = LocalBackend(home, warm=True)
    assert backend.warm is not None
    backend.warm.close()  # never started: nothing was made
    worker = LocalBackend(home, warm=True).warm
    assert worker is not None
    worker.start()
    wait_for(lambda: worker.ready, timeout=60)
    where = Path(worker._socket).parent  # noqa: SLF001
    assert where.is_dir()
    worker.close()
    assert not where.exists() and not worker.ready
