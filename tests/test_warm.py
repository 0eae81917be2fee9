"""Fast to start: the local backend forks each runner from a warm worker that has imported what this kernel
has (batchmagic.backends.warm), with the isolation of a fresh process: its own session and process group,
the task's directory and environment, the timeout and Cancel. The figures are bench/warm_start.py's."""

from __future__ import annotations

import importlib
import os
import pkgutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from batchmagic.api import Session
from batchmagic.backends.local import LocalBackend
from batchmagic.backends.warm import Forked, close_workers, kernel_modules, live_workers
from batchmagic.errors import ConfigError, RunCancelled, RunFailed
from batchmagic.runner.reap import alive
from tests.support.emulator import wait_for
from tests.support.escapees import escaping_cell, kill_sleepers, sleepers
from tests.support.procs import processes
from tests.support.slow_setsid import slow_setsid


@pytest.fixture
def session(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Session()
    yield s
    s.teardown()  # ends the warm worker
    assert live_workers() == []


def warm_backend(session: Session) -> LocalBackend:
    """The session's local backend, its warm worker started and ready (a run would start it, and run fresh)."""
    backend: Any = session.backend("local")
    assert backend.warm is not None
    backend.warm.start()
    wait_for(lambda: backend.warm.ready, timeout=60)
    return backend  # type: ignore[no-any-return]


def process_of(backend: LocalBackend, run: Any) -> Any:
    return backend._runs[run.id].tasks["task-0"].process  # noqa: SLF001 - which kind of process ran the task


def workers_of(pid: int) -> list[int]:
    """The warm workers whose parent is ``pid``, read from /proc as ``ps`` would."""
    return [p.pid for p in processes() if p.ppid == pid and p.living and b"batchmagic.runner.warm" in p.argv()]


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
    wait_for(lambda: not alive(child), timeout=10)

    run = session.submit(cell, {}, backend=backend)
    wait_for(lambda: run.poll() or run.logs().strip(), timeout=30)
    child = int(run.logs().split()[0])
    run.cancel()
    with pytest.raises(RunCancelled):
        run.result()
    process = process_of(backend, run)
    assert isinstance(process, Forked) and process.wait(10) in (-signal.SIGTERM, -signal.SIGKILL, 143)
    wait_for(lambda: not alive(child), timeout=10)


def test_a_cancel_or_timeout_right_after_the_fork_ends_the_runner(session, tmp_path, monkeypatch):
    """A forked runner leads no process group until its ``setsid``: a cancel, or a timeout, sent to its
    group before then found none and was lost, and the runner ran on. The worker answers its pid once the
    group exists, so a cancel issued at once (here inside that window, made wide) still ends it."""
    from batchmagic.backends import local

    hook = slow_setsid(tmp_path / "hook")
    environment = local._worker_environment  # noqa: SLF001 - the worker's own environment, with the hook
    hooked = {**environment(), "PYTHONPATH": f"{hook}{os.pathsep}{environment()['PYTHONPATH']}"}
    monkeypatch.setattr(local, "_worker_environment", lambda: hooked)
    backend = warm_backend(session)
    cell = "import time\nprint('started', flush=True)\ntime.sleep(60)"
    runners = []
    try:
        run = session.submit(cell, {}, backend=backend)
        runners.append(process_of(backend, run))
        run.cancel()
        with pytest.raises(RunCancelled):
            run.result()
        assert isinstance(runners[0], Forked) and runners[0].wait(10) in (-signal.SIGTERM, -signal.SIGKILL, 143)

        run = session.submit(cell, {}, backend=backend, timeout=1)
        runners.append(process_of(backend, run))
        with pytest.raises(RunFailed, match="stopped after its --timeout of 1s"):
            run.wait(timeout=20)
        assert isinstance(runners[1], Forked) and runners[1].wait(10) in (-signal.SIGTERM, -signal.SIGKILL, 143)
        assert not any(alive(r.pid) for r in runners)
    finally:
        for runner in runners:  # what a lost cancel left running
            if alive(runner.pid):
                os.kill(runner.pid, signal.SIGKILL)


def test_what_a_forked_cell_starts_in_a_session_of_its_own_ends_with_the_run(session):
    """A process the cell starts in a new session (a daemonised server) leaves the runner's process group;
    a forked runner's orphan would be re-parented past the worker and outlive the run. It ends at the run's
    end, at Cancel, and when the runner is killed outright (the worker, its subreaper, ends it)."""
    backend = warm_backend(session)
    marks = (3021, 3022, 3023)
    try:
        run = session.submit(escaping_cell(marks[0], 0), {}, backend=backend)
        run.wait(timeout=60)  # the cell does not wait for it
        assert isinstance(process_of(backend, run), Forked)
        wait_for(lambda: not sleepers(marks[0]), timeout=5)

        run = session.submit(escaping_cell(marks[1], 60), {}, backend=backend)
        wait_for(lambda: sleepers(marks[1]), timeout=60)
        run.cancel()
        with pytest.raises(RunCancelled):
            run.result()
        wait_for(lambda: not sleepers(marks[1]), timeout=5)

        run = session.submit(escaping_cell(marks[2], 60), {}, backend=backend)
        wait_for(lambda: sleepers(marks[2]), timeout=60)
        os.killpg(process_of(backend, run).pid, signal.SIGKILL)  # no SIGTERM first: the runner cannot end it
        wait_for(lambda: not sleepers(marks[2]), timeout=5)
        assert backend.warm is not None and backend.warm.ready
    finally:
        kill_sleepers(*marks)


def test_a_sweep_forks_a_runner_per_task(session):
    backend = warm_backend(session)
    run = session.submit(
        "import os\ny = k * 2\npid = os.getpid()", {}, backend=backend, sweep=[{"k": k} for k in range(6)]
    )
    results = run.wait(timeout=120)
    assert list(results.y) == [0, 2, 4, 6, 8, 10] and len(set(results.pid)) == 6
    tasks = backend._runs[run.id].tasks  # noqa: SLF001
    assert all(isinstance(t.process, Forked) for t in tasks.values())


def test_a_sweeps_big_shared_input_is_read_in_place_and_checked(session):
    """A value over the object threshold (17 MB) shared by a sweep's forked tasks: each reads the store's
    copy (the worker hashed it once). Altered in the store later, it is stored again by the next run's
    client, and the worker's check of the old file vouches for nothing: the next run reads the new copy."""
    backend = warm_backend(session)
    blob = bytes(range(256)) * (17 << 12)
    run = session.submit("n = len(blob) + k", {"blob": blob}, backend=backend, sweep=[{"k": k} for k in range(3)])
    assert list(run.wait(timeout=120).n) == [len(blob), len(blob) + 1, len(blob) + 2]
    (stored,) = [p for p in (backend.store.root / "objects").rglob("*") if p.is_file()]
    with stored.open("r+b") as f:
        f.seek(1000)
        f.write(b"altered")
    again = session.submit("n = len(blob)", {"blob": blob}, backend=backend, sweep=[{"k": 0}], name="again")
    results = again.wait(timeout=120)
    assert list(results.state) == ["succeeded"]  # the client found it altered and stored it again


def test_the_setting_switches_it_off(home, monkeypatch):
    monkeypatch.setenv("BATCHMAGIC_WARM_WORKER", "off")
    backend: Any = Session().backend("local")
    assert backend.warm is None
    monkeypatch.setenv("BATCHMAGIC_WARM_WORKER", "of")
    with pytest.raises(ConfigError, match="BATCHMAGIC_WARM_WORKER='of' is not one of: on, off"):
        Session().backend("local")


def test_without_the_worker_runners_are_fresh_processes(home, tmp_path):
    backend = LocalBackend(home, warm=False)
    run = Session().submit("x = 1", {}, backend=backend, folder="")
    assert run.wait(timeout=60) == {"x": 1}
    assert not isinstance(process_of(backend, run), Forked)


def test_first_run_starts_as_before_while_the_worker_warms(session):
    close_workers()  # as in a kernel that has not run a local cell yet
    backend: Any = session.backend("local")
    assert backend.warm.pid is None
    run = session.submit("x = 1", {}, backend=backend)
    assert run.wait(timeout=60) == {"x": 1}
    assert not isinstance(process_of(backend, run), Forked)  # the worker was not ready yet
    wait_for(lambda: backend.warm.ready, timeout=60)
    run = session.submit("x = 2", {}, backend=backend)
    assert run.wait(timeout=60) == {"x": 2} and isinstance(process_of(backend, run), Forked)


def test_the_worker_leaves_nothing_behind(home):
    backend = LocalBackend(home)
    assert backend.warm is not None
    close_workers()
    assert backend.warm.pid is None  # made, never started: nothing was made
    worker = backend.warm
    worker.start()
    wait_for(lambda: worker.ready, timeout=60)
    where = Path(worker._socket).parent  # noqa: SLF001
    assert where.is_dir()
    worker.close()
    assert not where.exists() and not worker.ready and live_workers() == []


def test_two_sessions_share_one_worker(session, home):
    other = Session()
    backend = warm_backend(session)
    assert other.backend("local") is not backend and other.backend("local").warm is backend.warm  # type: ignore[attr-defined]
    pids = []
    for each in (session, other):
        run = each.submit("import os\nparent = os.getppid()", {}, backend="local")
        pids.append(run.wait(timeout=60)["parent"])
    assert pids == [backend.warm.pid] * 2  # type: ignore[union-attr]
    assert workers_of(os.getpid()) == [backend.warm.pid]  # type: ignore[union-attr]


def test_teardown_ends_the_worker_and_the_next_run_starts_it_again(session):
    backend: Any = warm_backend(session)
    pid = backend.warm.pid
    assert session.submit("x = 1", {}, backend=backend).wait(timeout=60) == {"x": 1}
    session.teardown()
    assert not alive(pid) and workers_of(os.getpid()) == [] and backend.warm.pid is None
    run = session.submit("x = 2", {}, backend=backend)  # a fresh runner; the worker starts beside it
    assert run.wait(timeout=60) == {"x": 2} and not isinstance(process_of(backend, run), Forked)
    wait_for(lambda: backend.warm.ready, timeout=60)
    assert backend.warm.pid != pid and workers_of(os.getpid()) == [backend.warm.pid]


#: A client process: a Session whose first local run starts the worker; it says what it sees, then waits.
CLIENT = """
import os, sys, time
from pathlib import Path
from batchmagic.api import Session
from tests.test_warm import workers_of

session = Session()
backend = session.backend("local")
print("before", len(workers_of(os.getpid())), flush=True)
assert session.submit("x = 1", {}, backend=backend).wait(timeout=60) == {"x": 1}
deadline = time.monotonic() + 60
while not backend.warm.ready and time.monotonic() < deadline:
    time.sleep(0.05)
print("worker", backend.warm.pid, backend.warm._socket, flush=True)
if sys.argv[1] == "hang":
    time.sleep(600)
"""


def _client(tmp_path: Path, how: str) -> Any:
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, how], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )


def test_a_fresh_process_has_no_worker_until_its_first_local_run_and_none_after_it_exits(home, tmp_path):
    client = _client(tmp_path, "exit")
    assert client.stdout is not None
    assert client.stdout.readline().split() == ["before", "0"]
    _, pid, where = client.stdout.readline().split()
    client.stdout.close()
    assert client.wait(60) == 0
    wait_for(lambda: not alive(int(pid)), timeout=10)  # atexit closed it
    assert not Path(where).parent.exists()


def test_a_parent_killed_with_sigkill_leaves_no_worker(home, tmp_path):
    client = _client(tmp_path, "hang")
    assert client.stdout is not None
    assert client.stdout.readline().split() == ["before", "0"]
    _, pid, where = client.stdout.readline().split()
    client.stdout.close()
    assert alive(int(pid))
    client.kill()
    client.wait(10)
    wait_for(lambda: not alive(int(pid)), timeout=5)  # the parent-death signal
    wait_for(lambda: not Path(where).parent.exists(), timeout=5)  # it removed its socket and folder


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_worker_asks_linux_for_a_signal_when_its_parent_dies(tmp_path):
    import subprocess

    code = (
        "import ctypes, os\nfrom batchmagic.runner.warm import die_with\ndie_with(os.getppid())\n"
        "said = ctypes.c_int()\nctypes.CDLL(None).prctl(2, ctypes.byref(said), 0, 0, 0)\nprint(said.value)"
    )  # 2: PR_GET_PDEATHSIG
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == str(int(signal.SIGUSR1))


def test_the_worker_outlives_the_thread_that_started_it(session):
    """Linux sends the parent-death signal when the thread that started the worker ends (a sweep's reaper
    thread may start it): the worker checks that its parent process is still there, and stays."""
    import threading
    import time

    close_workers()
    backend: Any = session.backend("local")
    starter = threading.Thread(target=backend.warm.start)
    starter.start()
    starter.join()
    wait_for(lambda: backend.warm.ready, timeout=60)
    pid = backend.warm.pid
    time.sleep(1.0)  # the signal came when the thread ended; the worker's loop looks at its parent every second
    assert alive(pid) and backend.warm.ready
    run = session.submit("x = 1", {}, backend=backend)
    assert run.wait(timeout=60) == {"x": 1} and isinstance(process_of(backend, run), Forked)


def test_a_worker_whose_parent_is_gone_before_it_starts_ends_at_once(tmp_path):
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # pid 1 is never this test's pid: the worker's parent is "gone" already when it checks
    done = subprocess.run(
        [sys.executable, "-m", "batchmagic.runner.warm", "1", str(tmp_path / "w.sock")],
        env=env, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and b"ready" not in done.stdout and not (tmp_path / "w.sock").exists()


def test_runners_outlive_a_killed_worker_with_their_timeout_and_cancel(session):
    backend: Any = warm_backend(session)
    cell = "import time\nprint('started', flush=True)\ntime.sleep(6)\nx = 1"
    finishing = session.submit(cell, {}, backend=backend)
    stuck = (
        "import subprocess, time\nchild = subprocess.Popen(['sleep', '60'])\nprint(child.pid, flush=True)\n"
        "time.sleep(60)"
    )
    timing_out = session.submit(stuck, {}, backend=backend, timeout=4)
    cancelled = session.submit(stuck, {}, backend=backend)
    for run in (finishing, timing_out, cancelled):
        assert isinstance(process_of(backend, run), Forked)
        wait_for(lambda run=run: run.logs().strip(), timeout=30)
    os.kill(backend.warm.pid, signal.SIGKILL)  # the worker dies while its three runners run
    cancelled.cancel()
    with pytest.raises(RunCancelled):
        cancelled.result()
    assert finishing.wait(timeout=60)["x"] == 1
    with pytest.raises(RunFailed, match="stopped after its --timeout of 4s"):
        timing_out.wait(timeout=60)
    for run in (timing_out, cancelled):  # what they started went with them: their process groups are their own
        wait_for(lambda run=run: not alive(int(run.logs().split()[0])), timeout=10)
    assert process_of(backend, finishing).wait(1) == 0
    run = session.submit("x = 2", {}, backend=backend)  # the worker starts again
    assert run.wait(timeout=60) == {"x": 2}
    wait_for(lambda: backend.warm.ready, timeout=60)


def test_a_banner_printed_by_an_import_before_ready_does_not_switch_the_worker_off(tmp_path: Path) -> None:
    """The worker imports the kernel's modules before it says ``ready``: one that prints on import (a
    banner) comes first on its stdout, and must not be taken for a worker that failed to start."""
    import subprocess
    import threading

    from batchmagic.backends.warm import WarmWorker

    worker = WarmWorker(sys.executable, dict(os.environ))
    script = "print('Hello from a library banner', flush=True)\nprint('ready', flush=True)"
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    worker._process = process  # noqa: SLF001 - the start-up line reader, on its own
    ready = threading.Event()
    worker._await_ready(process, ready)  # noqa: SLF001
    process.wait()
    assert ready.is_set() and not worker.failed
