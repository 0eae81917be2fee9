"""A sweep's tasks on a Batch node fork from the node's warm worker for the job (batchmagic.runner.nodewarm),
started by the job's preparation task and removed by its release task: through the real parts (the Batch
emulator's process executor, Azurite, the unmodified SDK), and the request builders on their own."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchmagic.api import Session
from batchmagic.backends.azure import requests
from batchmagic.backends.base import TaskSubmission
from batchmagic.run.sweep import parse_grid
from batchmagic.runner.node import socket_name
from tests.support.azurite import RunningAzurite
from tests.support.emulator import RunningEmulator, start_emulator, wait_for
from tests.support.escapees import kill_sleepers, sleepers
from tests.support.procs import processes
from tests.support.settings import use_azure

#: What a task reports of the process that started its runner: a warm worker, which one (pid and start
#: time), and the cell's own result.
CELL = """
import os
from pathlib import Path
parent = os.getppid()
cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
forked = b"batchmagic.runner.nodewarm" in cmdline
worker = f"{parent}/{started}" if forked else ""
y = k * 3 + 1
"""


def submission(**changes: Any) -> TaskSubmission:
    values: dict[str, Any] = dict(
        run_id="run-1", name="n", task_ids=["task-00000", "task-00001"], spec_keys={}, vm_size="Standard_D2s_v3",
        timeout=600,
    )  # fmt: skip
    values.update(changes)
    return TaskSubmission(**values)


def test_a_sweep_gets_a_preparation_and_release_task_and_a_single_task_none():
    prep, release = requests.node_worker(submission(), "reg.io/train:abc", ["sklearn", "sklearn.tree", "_x", "a._b"])
    assert prep.wait_for_success is False  # the tasks never wait for it, and its failure never bars a node
    assert prep.user_identity.auto_user.elevation_level == "admin" and prep.container_settings is None
    assert "reg.io/train:abc python3 -P -m batchmagic.runner.nodewarm sklearn sklearn.tree" in prep.command_line
    assert "_x" not in prep.command_line and "a._b" not in prep.command_line
    assert prep.command_line.endswith("exit 0'")
    assert socket_name("run-1") in release.command_line and "bm-warm-run-1-$AZ_BATCH_NODE_ID" in release.command_line
    assert requests.node_worker(submission(task_ids=["task-00000"]), "i", []) is None
    assert requests.node_worker(submission(distributed=True), "i", []) is None
    assert requests.node_worker(submission(gpus=1), "i", []) is None
    job = requests.job_request(submission(), requests.named_pool("p"), (prep, release))
    assert job.job_preparation_task is prep and job.job_release_task is release


def test_the_preload_list_is_capped_packages_first():
    many = [f"pkg{i}.mod{j}" for i in range(300) for j in range(5)] + [f"pkg{i}" for i in range(300)]
    chosen = requests.preload_modules(many)
    assert sum(len(n) + 1 for n in chosen) <= requests.PRELOAD_CHARS
    assert chosen[:300] == sorted(f"pkg{i}" for i in range(300))


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RunningEmulator]:
    with start_emulator(tmp_path / "batch", allocation_delay=0.1) as emu:
        yield emu


@pytest.fixture
def azure_env(monkeypatch: pytest.MonkeyPatch, home: Path, emulator: RunningEmulator, azurite: RunningAzurite) -> Any:
    use_azure(monkeypatch, emulator, azurite, prefix="nodewarm")
    return emulator


@pytest.fixture
def session(azure_env: RunningEmulator) -> Iterator[Session]:
    session = Session()  # its own: a session caches its backend, and each test has an emulator of its own
    yield session
    session.teardown()


def sweep(session: Session, cell: str, grid: str, namespace: dict[str, Any] | None = None, **options: Any) -> Any:
    return session.submit(
        cell, namespace or {}, backend="azure", sweep=tuple(parse_grid([grid])), slots_per_node=1, **options
    )


def workers_of(job_id: str) -> list[int]:
    """Processes of this machine that are the warm worker of ``job_id`` (the process executor's nodes are
    this machine)."""
    job = f"AZ_BATCH_JOB_ID={job_id}".encode()
    return [p.pid for p in processes() if b"batchmagic.runner.nodewarm" in p.cmdline() and job in p.environ()]


def test_a_sweeps_tasks_fork_from_one_worker_on_the_node_and_it_goes_with_the_job(azure_env, session):
    run = sweep(session, CELL, "k=range(8)")
    results = run.wait(timeout=180)
    assert list(results.y) == [k * 3 + 1 for k in range(8)]  # as the plain loop
    assert (results.state == "succeeded").all()
    workers = set(results.worker)
    forked = [w for w in results.worker if w]
    # The first task may start before the worker has bound its socket (the tasks do not wait for the
    # preparation task); every later one is forked, all by the one worker of the job on the node.
    assert len(forked) >= 6 and len(workers - {""}) == 1, list(results.worker)
    client = azure_env.client()
    status = list(client.list_job_preparation_and_release_task_status(run.id))
    assert len(status) == 1 and status[0].job_preparation_task_execution_info.exit_code == 0
    wait_for(lambda: not workers_of(run.id), timeout=30)  # the release task removed its socket: it left
    info = client.list_job_preparation_and_release_task_status(run.id)
    assert [s.job_release_task_execution_info.exit_code for s in info] == [0]


def test_a_sweep_without_a_worker_runs_fresh(session: Session, monkeypatch: pytest.MonkeyPatch):
    # A node whose worker cannot start (an image without it): the preparation task still succeeds, and
    # every task runs its runner itself.
    monkeypatch.setattr(requests, "warm_start_command", lambda job, image, modules: "/bin/sh -c 'exit 0'")
    run = sweep(session, CELL, "k=range(3)")
    results = run.wait(timeout=120)
    assert list(results.y) == [1, 4, 7] and list(results.worker) == ["", "", ""]


KILLED_CELL = """
import os, time
from pathlib import Path
forked = b"nodewarm" in Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
if forked and not Path(marker, "runner.pid").exists():  # the first forked task sleeps, to be killed
    Path(marker, "task").write_text(os.environ["AZ_BATCH_TASK_ID"])
    Path(marker, "runner.pid").write_text(str(os.getpid()))
    time.sleep(300)
time.sleep(0.3)  # the first tasks may start before the worker listens: a later one finds it
y = k
"""


def test_a_killed_task_ends_its_forked_runner(azure_env: RunningEmulator, session: Session, tmp_path: Path):
    run = sweep(session, KILLED_CELL, "k=range(4)", {"marker": str(tmp_path)})
    pid_file = tmp_path / "runner.pid"
    wait_for(pid_file.exists, timeout=120)
    pid = int(pid_file.read_text())
    assert workers_of(run.id) and os.getppid() != pid
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent in workers_of(run.id)  # the sleeping runner is the worker's child
    client = azure_env.client()
    # Batch kills the task's own process (the worker's child is not in its process group): the runner goes too.
    client.terminate_task(run.id, (tmp_path / "task").read_text())
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=30)
    run.cancel()
    wait_for(lambda: not workers_of(run.id), timeout=30)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_no_secret_reaches_the_preparation_task(azure_env: RunningEmulator, session: Session):
    run = sweep(session, CELL, "k=0,1")
    run.wait(timeout=120)
    job = azure_env.client().get_job(run.id)
    text = job.job_preparation_task.command_line + job.job_release_task.command_line
    assert "sig=" not in text and "AccountKey" not in text and azure_env.key not in text
    assert not job.job_preparation_task.environment_settings


def test_warm_worker_off_gives_a_sweep_no_worker(azure_env: RunningEmulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BATCHMAGIC_WARM_WORKER", "off")
    session = Session()
    try:
        run = sweep(session, CELL, "k=0,1")
        assert list(run.wait(timeout=120).worker) == ["", ""]
        assert azure_env.client().get_job(run.id).job_preparation_task is None
    finally:
        session.teardown()


def test_the_worker_forks_only_for_its_own_interpreter_and_leaves_with_its_socket(tmp_path, monkeypatch):
    """The worker and a task's side of it as processes of their own, outside Batch: a task whose interpreter
    is the worker's is forked (the runner's exit code relayed); one from elsewhere (a container task meeting a
    worker on the node itself) is refused and runs fresh; removing the socket ends the worker."""
    import subprocess
    import sys

    from batchmagic.runner import node

    env = {**os.environ, "AZ_BATCH_NODE_SHARED_DIR": str(tmp_path / "shared"), "AZ_BATCH_JOB_ID": "job-x"}
    worker = subprocess.Popen([sys.executable, "-P", "-m", "batchmagic.runner.nodewarm", "json"], env=env)
    sock = tmp_path / "shared" / "batchmagic-warm" / node.socket_name("job-x")
    try:
        wait_for(sock.exists, timeout=30)
        monkeypatch.chdir(tmp_path)
        with _signals_kept():
            assert node.fork_on_node(["--spec", "missing.json"], env) == 2  # forked; the runner found no spec
            monkeypatch.setattr(node, "identity", lambda: ["/elsewhere", sys.version, "True"])
            assert node.fork_on_node(["--spec", "missing.json"], env) is None  # refused: the caller runs it fresh
        assert worker.poll() is None
        sock.unlink()  # as the job's release task does
        assert worker.wait(10) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@contextlib.contextmanager
def _signals_kept() -> Iterator[None]:
    """A task's side of the worker run in the test's own process sets SIGTERM, SIGINT and SIGHUP handlers (it
    passes them on to the forked runner): put the test process's back afterwards, or a later test's Ctrl-C
    goes to a closed connection."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _children(pid: int, *, zombies: bool = False) -> list[int]:
    """The living children of ``pid``; with ``zombies``, the ended ones it has not reaped."""
    return [p.pid for p in processes() if p.ppid == pid and (p.state == "Z") == zombies]


def test_a_signal_to_the_task_reaches_its_runner_and_the_tasks_death_ends_it(tmp_path):
    """A task's process forwards SIGTERM to its forked runner (which ends as SIGTERM ends it, 143 as the task's
    exit code); a task's process killed outright (its container removed) ends the runner through the end of
    its connection. The runner here waits on a FIFO for its spec: a runner that has not ended by itself."""
    import signal
    import subprocess
    import sys

    from batchmagic.runner import node

    env = {**os.environ, "AZ_BATCH_NODE_SHARED_DIR": str(tmp_path / "shared"), "AZ_BATCH_JOB_ID": "job-y"}
    worker = subprocess.Popen([sys.executable, "-P", "-m", "batchmagic.runner.nodewarm"], env=env)
    os.mkfifo(tmp_path / "spec.json")
    task = [sys.executable, "-P", "-m", "batchmagic.runner", "--spec", "spec.json"]
    try:
        wait_for((tmp_path / "shared" / "batchmagic-warm" / node.socket_name("job-y")).exists, timeout=30)
        for how, expected in ((signal.SIGTERM, 143), (signal.SIGKILL, -9)):
            client = subprocess.Popen(task, env=env, cwd=tmp_path)
            [runner] = wait_for(lambda: _children(worker.pid), timeout=30)
            client.send_signal(how)
            assert client.wait(30) == expected
            wait_for(lambda r=runner: not _children(worker.pid) and not Path(f"/proc/{r}/status").exists(), 30)
    finally:
        worker.kill()
        worker.wait()


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (SigCgt in /proc: a task's process sets its
    pass-on handlers once the worker has answered its runner's pid)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signum - 1)))


def test_a_signal_or_death_of_the_task_right_after_the_fork_ends_its_runner(tmp_path):
    """A forked runner leads no process group until its ``setsid``: a SIGTERM the task passed on, or the
    task's death, that came before then found no group to signal, and the runner ran on. The worker answers
    the runner's pid once the group exists. Its runners here wait 1.5 s before ``setsid`` (the window, made
    wide); each waits on a FIFO for its spec, so none ends by itself."""
    import subprocess
    import sys

    from batchmagic.runner import node
    from tests.support.slow_setsid import slow_setsid

    env = {**os.environ, "AZ_BATCH_NODE_SHARED_DIR": str(tmp_path / "shared"), "AZ_BATCH_JOB_ID": "job-w"}
    hooked = {**env, "PYTHONPATH": os.pathsep.join([slow_setsid(tmp_path / "hook"), env.get("PYTHONPATH", "")])}
    worker = subprocess.Popen([sys.executable, "-P", "-m", "batchmagic.runner.nodewarm"], env=hooked)
    os.mkfifo(tmp_path / "spec.json")
    task = [sys.executable, "-P", "-m", "batchmagic.runner", "--spec", "spec.json"]
    clients: list[subprocess.Popen[bytes]] = []
    try:
        wait_for((tmp_path / "shared" / "batchmagic-warm" / node.socket_name("job-w")).exists, timeout=30)
        for how, expected in ((signal.SIGTERM, 143), (signal.SIGKILL, -9)):
            client = subprocess.Popen(task, env=env, cwd=tmp_path)
            clients.append(client)
            [runner] = wait_for(lambda: _children(worker.pid), timeout=30)  # forked: not yet in its session
            if how == signal.SIGTERM:  # passed on as soon as the task can: once it has the runner's pid
                wait_for(lambda c=client: _catches(c.pid, signal.SIGTERM), timeout=30)
            client.send_signal(how)
            assert client.wait(30) == expected
            wait_for(lambda r=runner: not _children(worker.pid) and not Path(f"/proc/{r}/status").exists(), 30)
    finally:  # what a lost signal left running
        for pid in [*_children(worker.pid), *(c.pid for c in clients if c.poll() is None)]:
            os.kill(pid, signal.SIGKILL)
        worker.kill()
        worker.wait()


#: A cell that starts ``sleep $MARK`` in a session of its own (as a daemonised server does), then sleeps $HOLD.
ESCAPING = (
    "import os, subprocess, time\n"
    "subprocess.Popen(['sleep', os.environ.get('MARK', '1')], start_new_session=True)\n"
    "time.sleep(float(os.environ.get('HOLD', '0')))\n"
)


def test_what_a_cell_starts_in_a_session_of_its_own_ends_with_its_forked_runner(home, tmp_path, monkeypatch):
    """A process the cell starts in a new session leaves the runner's process group: it ends all the same
    when the forked runner ends by itself, when a SIGTERM reaches it, and when the task's process is killed
    outright (the worker kills the runner's group, and then what the runner left, which comes to it). The
    spec is a real run's, made (and run once) by the local backend."""
    import signal
    import subprocess
    import sys

    from batchmagic.backends.local import LocalBackend
    from batchmagic.runner import node

    monkeypatch.chdir(tmp_path)
    backend = LocalBackend(home, warm=False)
    made = Session().submit(ESCAPING, {}, backend=backend)
    made.wait(timeout=120)
    spec = backend._runs[made.id].tasks["task-0"].spec_path  # noqa: SLF001 - the spec a task runs
    env = {**os.environ, "AZ_BATCH_NODE_SHARED_DIR": str(tmp_path / "shared"), "AZ_BATCH_JOB_ID": "job-z"}
    worker = subprocess.Popen([sys.executable, "-P", "-m", "batchmagic.runner.nodewarm"], env=env)
    marks = (3031, 3032, 3033)
    try:
        wait_for((tmp_path / "shared" / "batchmagic-warm" / node.socket_name("job-z")).exists, timeout=30)
        ways = zip(marks, (0, 60, 60), (None, signal.SIGTERM, signal.SIGKILL), (0, 143, -9), strict=True)
        for mark, hold, how, expected in ways:
            task = [sys.executable, "-P", "-m", "batchmagic.runner", "--spec", str(spec)]
            client = subprocess.Popen(task, env={**env, "MARK": str(mark), "HOLD": str(hold)}, cwd=tmp_path)
            if how is not None:
                wait_for(lambda m=mark: sleepers(m), timeout=60)
                assert _children(worker.pid)  # forked by the worker
                client.send_signal(how)
            assert client.wait(60) == expected
            wait_for(lambda m=mark: not sleepers(m), timeout=5)
            # What the worker killed is reaped too, though no runner is left to end after it.
            wait_for(lambda: not _children(worker.pid, zombies=True), timeout=5)
        assert worker.poll() is None
    finally:
        worker.kill()
        worker.wait()
        kill_sleepers(*marks)


LEARNING_CELL = """
import sys
had = "mergedeep" in sys.modules  # before the cell imports it: the worker had it
import mergedeep
y = k
"""


def test_the_worker_imports_what_a_cell_imported_for_the_next_tasks(azure_env, session):
    """A module the kernel never imported (so the worker was not told of it) but the cell imports: the worker
    learns it from the first forked task, and the later tasks start with it imported."""
    import sys

    assert "mergedeep" not in sys.modules  # the kernel (this process) has not imported it
    run = sweep(session, LEARNING_CELL, "k=range(6)")
    results = run.wait(timeout=180)
    assert list(results.y) == list(range(6))
    had = list(results.had)
    assert any(had) and not all(had), had  # the first tasks imported it themselves; later ones found it imported


def test_a_task_that_gave_up_waiting_is_not_run_again_by_the_worker(tmp_path, monkeypatch):
    """A task that connects while the worker still imports waits at most ANSWER_TIMEOUT, then runs fresh. Its
    request (and its streams) stay queued on the worker's socket: the worker, once it has imported, must not
    fork a second runner for it. The worker's preload here waits on a file; the task that gave up writes its
    streams to a file of its own, where a second runner of its spec would write."""
    import subprocess
    import sys

    from batchmagic.runner import node

    mods, gate = tmp_path / "mods", tmp_path / "gate"
    mods.mkdir()
    (mods / "slowmod.py").write_text(
        f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.05)\n"
    )
    env = {
        **os.environ,
        "AZ_BATCH_NODE_SHARED_DIR": str(tmp_path / "shared"),
        "AZ_BATCH_JOB_ID": "job-z",
        "PYTHONPATH": os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")]),
    }
    worker = subprocess.Popen([sys.executable, "-P", "-m", "batchmagic.runner.nodewarm", "slowmod"], env=env)
    gave_up = (
        "import sys; from batchmagic.runner import node; node.ANSWER_TIMEOUT = 0.5; "
        "sys.exit(0 if node.fork_on_node(['--spec', 'missing.json']) is None else 1)"
    )
    try:
        wait_for((tmp_path / "shared" / "batchmagic-warm" / node.socket_name("job-z")).exists, timeout=30)
        with open(tmp_path / "gave-up.err", "wb") as err:
            done = subprocess.run(
                [sys.executable, "-c", gave_up], env=env, cwd=tmp_path, stdout=err, stderr=err, check=False
            )
        assert done.returncode == 0  # no answer in time: it runs fresh
        gate.touch()  # the worker's imports end; the queued request of the task that gave up comes first
        monkeypatch.chdir(tmp_path)
        with _signals_kept():  # fork_on_node passes SIGTERM/SIGINT on to the runner: pytest's Ctrl-C stays
            assert node.fork_on_node(["--spec", "missing.json"], env) == 2  # a task that waited is forked
        wait_for(lambda: not _children(worker.pid), timeout=30)
        assert (tmp_path / "gave-up.err").read_bytes() == b""  # no second runner wrote there
    finally:
        worker.kill()
        worker.wait()
