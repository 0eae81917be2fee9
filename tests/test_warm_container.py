"""Fast to start in a container: ``--backend local --container`` runs and sweep tasks are forked in one warm
container per kernel and image (batchmagic.backends.warm_container), through the real parts: a private
dockerd, the debootstrap base image, the training image built from this kernel's environment.

The image is built once (the first test that needs it); every test starts from no warm container."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchmagic.api import Session
from batchmagic.backends import warm_container
from batchmagic.backends.base import TaskSubmission
from batchmagic.backends.local import LocalBackend, _container_argv, _Task, container_options
from batchmagic.backends.warm import Forked
from batchmagic.backends.warm_container import LABEL, ContainerPlan, ContainerWorker, close_containers
from batchmagic.errors import RunCancelled, RunFailed
from batchmagic.runner.reap import alive
from batchmagic.runner.warm import HOLD_SECONDS
from tests.support import docker as docker_parts
from tests.support.docker import DockerEngine
from tests.support.emulator import wait_for
from tests.support.escapees import escaping_cell, kill_sleepers, sleepers
from tests.support.procs import processes

pytestmark = pytest.mark.slow

docker_engine = docker_parts.docker_engine
base_image = docker_parts.base_image

#: Where the cell runs: its pid namespace (one per container), PID 1's command line, the image's prefix.
WHERE = (
    "import os, sys\n"
    "ns = os.readlink('/proc/self/ns/pid')\ninit = open('/proc/1/cmdline', 'rb').read().split(b'\\0')\n"
    "prefix = sys.prefix\nparent = os.getppid()\ny = k * 2\n"
)


@pytest.fixture
def cenv(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_engine: DockerEngine, base_image: str):
    """A notebook's environment for local --container runs: the engine, the base image, no registry."""
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    monkeypatch.setenv("BATCHMAGIC_BASE_IMAGE", base_image)
    for name in ("BATCHMAGIC_REGISTRY", "BATCHMAGIC_IMAGE", "BATCHMAGIC_WARM_WORKER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    close_containers()
    wait_for(lambda: not warm_containers(docker_engine), timeout=30)
    return docker_engine


@pytest.fixture
def session(cenv: DockerEngine) -> Iterator[Session]:
    s = Session()
    yield s
    s.teardown()


def warm_containers(engine: DockerEngine, *, every: bool = True) -> list[str]:
    """The warm containers the engine has (``docker ps -a``: running or not), by name."""
    listed = engine.run("ps", "-a" if every else "-q", "--filter", f"label={LABEL}", "--format", "{{.Names}}")
    return listed.stdout.decode().split()


def container_of(backend: LocalBackend, run: Any) -> ContainerWorker:
    worker = backend.warm_container(run_submission(backend, run))
    assert worker is not None
    return worker


def run_submission(backend: LocalBackend, run: Any) -> TaskSubmission:
    return backend._runs[run.id].submission  # noqa: SLF001 - the submission the backend was given


def tasks_of(backend: LocalBackend, run: Any) -> list[Any]:
    return list(backend._runs[run.id].tasks.values())  # noqa: SLF001 - what ran each task


def warmed(session: Session) -> tuple[LocalBackend, ContainerWorker, dict[str, Any]]:
    """A first --container run (in a container of its own: the warm one starts beside it), and its warm
    container once ready."""
    backend: Any = session.backend("local")
    run = session.submit(WHERE, {"k": 1}, backend=backend, container=True, folder="")
    first = run.wait(timeout=600)
    assert not isinstance(tasks_of(backend, run)[0].process, Forked)
    worker = container_of(backend, run)
    wait_for(lambda: worker.ready, timeout=180)
    return backend, worker, first


def test_a_second_run_and_a_sweeps_tasks_are_forked_in_the_warm_container(session, cenv):
    backend, worker, first = warmed(session)
    (name,) = warm_containers(cenv)
    assert name == worker.name and name.startswith(f"batchmagic-warm-{os.getpid()}-")
    warm_ns = os.readlink(f"/proc/{worker.pid}/ns/pid")
    assert first["ns"] != warm_ns  # the first ran in its own container

    run = session.submit(WHERE, {"k": 1}, backend=backend, container=True, folder="")
    second = run.wait(timeout=120)
    (task,) = tasks_of(backend, run)
    assert isinstance(task.process, Forked)
    assert second["ns"] == warm_ns and b"batchmagic.runner.warm" in b" ".join(second["init"])
    assert second["parent"] == 1  # forked by the worker, the container's PID 1
    assert {k: second[k] for k in ("prefix", "y")} == {k: first[k] for k in ("prefix", "y")}
    assert second["prefix"] == "/opt/batchmagic"

    sweep = session.submit(
        WHERE, {}, backend=backend, container=True, folder="", sweep=[{"k": k} for k in range(4)]
    ).wait(timeout=120)
    assert list(sweep.y) == [0, 2, 4, 6] and set(sweep.ns) == {warm_ns} and set(sweep.parent) == {1}
    assert warm_containers(cenv) == [name]  # no container of its own for any of them


def test_results_match_the_plain_run_and_a_run_in_its_own_container(session, cenv):
    backend, _, _ = warmed(session)
    pure = "import json\nrows = sorted(json.loads(data))\ntotal = sum(rows) * scale\nprint('total', total)\n"
    cell = pure + (
        "import os\nwhere = os.getcwd() == os.environ['AZ_BATCH_TASK_WORKING_DIR']\n"
        "task = os.environ['AZ_BATCH_TASK_ID']\nsecret = 'AZURE_STORAGE_KEY' in os.environ\n"
        "path = os.environ['PATH'].split(':')[0]\nhome = os.environ.get('HOME')\n"
    )
    namespace = {"data": "[3, 1, 2]", "scale": 10}
    plain: dict[str, Any] = dict(namespace)
    exec(pure, plain)
    os.environ["AZURE_STORAGE_KEY"] = "not-for-a-task"
    try:
        run = session.submit(cell, namespace, backend=backend, container=True, folder="")
        warm = run.wait(timeout=120)
    finally:
        del os.environ["AZURE_STORAGE_KEY"]
    assert isinstance(tasks_of(backend, run)[0].process, Forked)
    own = session.submit(cell, namespace, backend=LocalBackend(backend.home, warm=False), container=True, folder="")
    alone = own.wait(timeout=300)
    assert warm["rows"] == alone["rows"] == plain["rows"] and warm["total"] == alone["total"] == plain["total"] == 60
    for name in ("where", "task", "secret", "path", "home"):  # the environment a run's own container has
        assert warm[name] == alone[name], name
    assert warm["where"] and warm["task"] == "task-0" and not warm["secret"] and warm["path"] == "/opt/batchmagic/bin"
    assert "total 60" in run.logs() and "total 60" in own.logs()


STUCK = (
    "import subprocess, time\nchild = subprocess.Popen(['sleep', '60'])\nprint(child.pid, flush=True)\ntime.sleep(60)"
)


def test_timeout_and_cancel_end_the_task_not_the_container(session, cenv):
    backend, worker, _ = warmed(session)
    (name,) = warm_containers(cenv)
    run = session.submit(STUCK, {}, backend=backend, container=True, folder="", timeout=3)
    with pytest.raises(RunFailed, match="stopped after its --timeout of 3s"):
        run.wait(timeout=60)
    (task,) = tasks_of(backend, run)
    assert isinstance(task.process, Forked) and not alive(task.process.pid)

    run = session.submit(STUCK, {}, backend=backend, container=True, folder="")
    wait_for(lambda: run.poll() or run.logs().strip(), timeout=60)
    (task,) = tasks_of(backend, run)
    assert isinstance(task.process, Forked)
    grandchild = [p for p in _group(task.process.pid) if p != task.process.pid]
    assert grandchild  # the cell's `sleep 60`, in the runner's process group, as this machine sees it
    run.cancel()
    with pytest.raises(RunCancelled):
        run.result()
    assert task.process.wait(10) in (-signal.SIGTERM, -signal.SIGKILL, 143)
    wait_for(lambda: not any(alive(p) for p in grandchild), timeout=10)

    assert warm_containers(cenv) == [name] and worker.ready  # the container goes on, and takes the next run
    again = session.submit(WHERE, {"k": 3}, backend=backend, container=True, folder="")
    assert again.wait(timeout=60)["y"] == 6 and isinstance(tasks_of(backend, again)[0].process, Forked)


def test_what_a_forked_cell_starts_in_a_session_of_its_own_ends_with_the_run(session, cenv):
    """A process the cell starts in a new session (a daemonised server) leaves the runner's process group;
    forked in the warm container, it would be re-parented to the worker (the container's PID 1) and outlive
    the run. It ends at the run's end, at Cancel, and when the runner is killed outright."""
    backend, worker, _ = warmed(session)
    marks = (3011, 3012, 3013)
    try:
        run = session.submit(escaping_cell(marks[0], 0), {}, backend=backend, container=True, folder="")
        run.wait(timeout=120)  # the cell does not wait for it
        assert isinstance(tasks_of(backend, run)[0].process, Forked)
        wait_for(lambda: not sleepers(marks[0]), timeout=5)

        run = session.submit(escaping_cell(marks[1], 60), {}, backend=backend, container=True, folder="")
        wait_for(lambda: sleepers(marks[1]), timeout=60)
        run.cancel()
        with pytest.raises(RunCancelled):
            run.result()
        wait_for(lambda: not sleepers(marks[1]), timeout=5)

        run = session.submit(escaping_cell(marks[2], 60), {}, backend=backend, container=True, folder="")
        wait_for(lambda: sleepers(marks[2]), timeout=60)
        (task,) = tasks_of(backend, run)
        assert isinstance(task.process, Forked)
        os.killpg(task.process.pid, signal.SIGKILL)  # no SIGTERM first: the runner cannot end it itself
        wait_for(lambda: not sleepers(marks[2]), timeout=5)  # the worker, its parent now, ended it
        assert worker.ready  # the container goes on
    finally:
        kill_sleepers(*marks)


def _group(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (this machine's pids)."""
    return [p.pid for p in processes() if p.pgid == pgid and p.living]


def test_teardown_leaves_no_container_and_the_next_run_starts_one(shell, cenv):
    shell.run_cell("%%azbatch --backend local --container\nx = 1")
    wait_for(lambda: warm_containers(cenv) and live(), timeout=180)
    shell.run_line_magic("azbatch_teardown", "")
    assert warm_containers(cenv) == []
    shell.run_cell("%%azbatch --backend local --container\nx = 2")  # its own container; a warm one starts again
    assert shell.user_ns["x"] == 2
    wait_for(lambda: warm_containers(cenv), timeout=180)


def live() -> bool:
    from batchmagic.backends.warm_container import live_containers

    return bool(live_containers())


def test_switched_off_every_run_has_its_own_container(session, cenv, monkeypatch):
    monkeypatch.setenv("BATCHMAGIC_WARM_WORKER", "off")
    backend: Any = Session().backend("local")
    for k in (1, 2):
        run = Session().submit(WHERE, {"k": k}, backend=backend, container=True, folder="")
        assert run.wait(timeout=300)["y"] == 2 * k and not isinstance(tasks_of(backend, run)[0].process, Forked)
    assert warm_containers(cenv) == []


#: A kernel of its own: its first --container run starts the warm container; it says its name, then waits.
CLIENT = """
import sys, time
from batchmagic.api import Session
from batchmagic.backends.warm_container import live_containers

session = Session()
run = session.submit("x = 1", {}, backend="local", container=True, folder="")
assert run.wait(timeout=600) == {"x": 1}
deadline = time.monotonic() + 180
while not live_containers() and time.monotonic() < deadline:
    time.sleep(0.05)
print("container", live_containers()[0].name, flush=True)
if sys.argv[1] == "running":  # a run forked in the warm container, still running when the kernel dies
    cell = f"import time\\ntime.sleep({sys.argv[2]})\\nx = 2"
    run = session.submit(cell, {}, backend="local", container=True, folder="")
    task = session.backend("local")._runs[run.id].tasks["task-0"]
    assert type(task.process).__name__ == "Forked"
    print("task", task.dir, run.id, flush=True)
if sys.argv[1] == "forked":  # a fork of the kernel (multiprocessing's) outlives it
    import os
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    print("fork", child, flush=True)
if sys.argv[1] in ("hang", "running", "forked"):
    time.sleep(600)
if sys.argv[1] == "exit":  # once the test has seen the container: its worker ends at once with the lifeline
    sys.stdin.readline()
"""


def _client(tmp_path: Path, how: str, seconds: float = 0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, how, str(seconds)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE if how == "exit" else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("how", ["hang", "exit"])
def test_a_killed_or_exited_kernel_leaves_no_container(cenv, tmp_path, how):
    client = _client(tmp_path, how)
    assert client.stdout is not None
    _, name = client.stdout.readline().split()
    client.stdout.close()
    assert warm_containers(cenv) == [name]
    if how == "hang":
        client.kill()  # SIGKILL: no atexit, no teardown; the lifeline ends with the process
    else:
        assert client.stdin is not None
        client.stdin.close()  # the client reads to its end, then exits as a kernel does: atexit, no teardown
    assert client.wait(60) in (0, -signal.SIGKILL)
    wait_for(lambda: not warm_containers(cenv), timeout=30)


def test_a_killed_kernels_socket_folder_is_cleared_at_the_next_start(session, cenv, tmp_path):
    """The worker cannot remove its socket folder (a mount point in its container) and a killed kernel never
    does: the next warm container's start on this machine removes the folders of kernels that are gone,
    and only those (a live kernel's stays; one whose pid was reused by another process goes)."""
    import tempfile

    from batchmagic.backends.warm_container import folder_prefix
    from batchmagic.runner.reap import start_ticks

    client = _client(tmp_path, "hang")
    assert client.stdout is not None
    _, name = client.stdout.readline().split()
    client.stdout.close()
    tmp = Path(tempfile.gettempdir())
    (left,) = tmp.glob(f"batchmagic-cwarm-{client.pid}-*")
    client.kill()
    client.wait(10)
    wait_for(lambda: name not in warm_containers(cenv), timeout=30)
    assert left.is_dir()  # the worker ended and could not remove it
    live = Path(tempfile.mkdtemp(prefix=folder_prefix(os.getpid(), start_ticks(os.getpid()))))
    reused = Path(tempfile.mkdtemp(prefix=folder_prefix(os.getpid(), start_ticks(os.getpid()) + 1)))
    try:
        warmed(session)  # a warm container starts: the first --container run starts it
        assert not left.exists() and not reused.exists() and live.is_dir()
    finally:
        for folder in (live, reused):
            if folder.exists():
                folder.rmdir()


def test_a_fork_of_a_killed_kernel_does_not_keep_its_container(cenv, tmp_path):
    client = _client(tmp_path, "forked")
    assert client.stdout is not None
    _, name = client.stdout.readline().split()
    _, child = client.stdout.readline().split()
    client.stdout.close()
    try:
        client.kill()
        client.wait(10)
        assert alive(int(child))
        wait_for(lambda: name not in warm_containers(cenv), timeout=30)
    finally:
        os.kill(int(child), signal.SIGKILL)


def test_a_run_in_flight_when_the_kernel_dies_finishes_then_the_container_goes(cenv, tmp_path):
    from batchmagic.protocol import TaskOutcome

    client = _client(tmp_path, "running", 4)
    assert client.stdout is not None
    _, name = client.stdout.readline().split()
    _, task_dir, _ = client.stdout.readline().split()
    client.stdout.close()
    client.kill()
    client.wait(10)
    time.sleep(1.0)
    assert warm_containers(cenv) == [name]  # its runner runs on: the worker waits for it
    result = Path(task_dir) / "result"
    wait_for(result.exists, timeout=60)
    assert TaskOutcome.from_bytes(result.read_bytes()).ok
    wait_for(lambda: not warm_containers(cenv), timeout=30)  # then it goes


def test_a_later_kernel_adopts_a_runner_of_a_killed_kernels_warm_container_and_cancels_it(cenv, tmp_path):
    """The pid file of a runner forked in the warm container holds its pid on this machine: a later kernel
    attaches to the run, watches the runner and ends it; the container goes after it."""
    client = _client(tmp_path, "running", 120)
    assert client.stdout is not None
    _, name = client.stdout.readline().split()
    _, task_dir, run_id = client.stdout.readline().split()
    client.stdout.close()
    client.kill()
    client.wait(10)
    pid = int((Path(task_dir) / "pid").read_text().split()[0])
    assert alive(pid) and os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    later = Session()
    run = later.attach(run_id)
    run.cancel()
    with pytest.raises(RunCancelled):
        run.result()
    wait_for(lambda: not alive(pid), timeout=20)
    wait_for(lambda: name not in warm_containers(cenv), timeout=30)
    later.teardown()


def test_a_container_whose_kernel_never_held_it_ends_by_itself(session, cenv, tmp_path):
    """A kernel that dies while its warm container starts never connects its lifeline: the worker ends
    after batchmagic.runner.warm.HOLD_SECONDS, and --rm removes the container."""
    _, worker, _ = warmed(session)
    folder = tmp_path / "unheld"
    folder.mkdir()
    argv = worker.plan.run_argv("batchmagic-warm-unheld", str(folder), [])
    assert cenv.run(*argv[1:]).returncode == 0
    wait_for(lambda: (folder / "worker.sock").exists(), timeout=60)  # it listens...
    wait_for(lambda: "batchmagic-warm-unheld" not in warm_containers(cenv), timeout=HOLD_SECONDS + 15)  # ...alone


def test_an_image_without_the_container_worker_runs_as_before_and_says_nothing(session, cenv, caplog):
    """An image whose batchmagic has no warm worker (an older one, given with --image): its container ends
    at once, each run starts its own container as before, and nothing above INFO is said."""
    import logging

    backend, worker, _ = warmed(session)
    older = "batchmagic-no-warm-worker:1"
    dockerfile = (
        f"FROM {worker.plan.image}\nUSER root\n"
        "RUN rm /opt/batchmagic/lib/python3*/site-packages/batchmagic/runner/warm.py\nUSER batchmagic\n"
    )
    built = cenv.run("build", "--network", "host", "-t", older, "-", input=dockerfile.encode())
    assert built.returncode == 0, built.stderr.decode()
    caplog.set_level(logging.INFO, logger="batchmagic")
    results = []
    for k in (1, 2, 3):
        run = session.submit(WHERE, {"k": k}, backend=backend, container=True, folder="", image=older)
        results.append(run.wait(timeout=300)["y"])
        assert not isinstance(tasks_of(backend, run)[0].process, Forked)
        if k == 1:
            wait_for(lambda run=run: container_of(backend, run).failed, timeout=120)
    assert results == [2, 4, 6] and warm_containers(cenv) == []
    assert not [r for r in caplog.records if r.levelno > logging.INFO]
    assert any("no warm container for batchmagic-no-warm-worker:1" in r.getMessage() for r in caplog.records)


def test_a_new_image_retires_the_old_container(session, cenv):
    backend, worker, _ = warmed(session)
    (old,) = warm_containers(cenv)
    other = "batchmagic-retagged:1"  # another image (the same content under another name: no build)
    assert cenv.run("tag", worker.plan.image, other).returncode == 0
    run = session.submit(WHERE, {"k": 1}, backend=backend, container=True, folder="", image=other)
    assert run.wait(timeout=300)["y"] == 2
    assert old not in warm_containers(cenv) and not worker.ready
    newer = container_of(backend, run)
    assert newer.plan.image == other
    wait_for(lambda: newer.ready, timeout=180)
    assert warm_containers(cenv) == [newer.name]


def test_runs_in_two_images_at_once_keep_each_their_container(session, cenv):
    """A run in another image retires the old container only once it is idle: while a run forked in image A
    runs, a run in image B starts B's warm container and A's goes on; with a run in each, the next runs of
    both images are forked in their own image's container; once A's is idle, a run in B retires it."""
    backend, worker, _ = warmed(session)
    other = "batchmagic-retagged:2"
    assert cenv.run("tag", worker.plan.image, other).returncode == 0

    def submit(cell: str, image: str) -> Any:
        return session.submit(cell, {"k": 1}, backend=backend, container=True, folder="", image=image)

    hold = "import time\ntime.sleep(120)"
    long_a = submit(hold, worker.plan.image)
    assert isinstance(tasks_of(backend, long_a)[0].process, Forked)
    first_b = submit(WHERE, other)
    assert first_b.wait(timeout=300)["y"] == 2
    newer = container_of(backend, first_b)
    wait_for(lambda: newer.ready, timeout=180)
    assert worker.ready and not long_a.poll()  # A's container is kept while its run runs
    long_b = submit(hold, other)
    runs = [submit(WHERE, worker.plan.image), submit(WHERE, other)]
    assert [r.wait(timeout=120)["y"] for r in runs] == [2, 2]
    forked = [isinstance(tasks_of(backend, r)[0].process, Forked) for r in (long_b, *runs)]
    assert forked == [True, True, True]  # each in its own image's warm container, none retired
    assert sorted(warm_containers(cenv)) == sorted([worker.name, newer.name])
    for run in (long_a, long_b):
        run.cancel()
        with pytest.raises(RunCancelled):
            run.result()
    last = submit(WHERE, other)
    assert last.wait(timeout=120)["y"] == 2 and isinstance(tasks_of(backend, last)[0].process, Forked)
    wait_for(lambda: warm_containers(cenv) == [newer.name], timeout=30)  # A's, idle now, is retired


def _submission(**changes: Any) -> TaskSubmission:
    return TaskSubmission("r1", "r", ["task-0"], {}, "Standard_D2s_v3", 60.0, image="img:1", **changes)


def test_the_container_options_are_a_run_containers(tmp_path):
    """The warm container gets what a run's own container gets: GPUs and a large /dev/shm on a GPU machine."""
    sub = _submission(gpus=1)
    task = _Task("task-0", tmp_path / "spec.json", tmp_path)
    own = _container_argv(sub, task, tmp_path, tmp_path)
    options = container_options(sub, tmp_path)
    assert "--gpus" in options and "--shm-size" in options and own[5 : 5 + len(options)] == options
    argv = ContainerPlan("img:1", tuple(options)).run_argv("n", "/tmp/x", ["numpy"])
    assert argv[argv.index("--gpus") + 1] == "all" and argv[argv.index("img:1") :][-2:] == [
        "/tmp/x/worker.sock",
        "numpy",
    ]
    cpu = container_options(_submission(), tmp_path)
    assert "--gpus" not in cpu and "--shm-size" not in cpu


def _ready_worker(image: str, calls: list[tuple[str, ...]], monkeypatch: pytest.MonkeyPatch) -> ContainerWorker:
    """A worker that looks ready (a lifeline held) with no engine: its docker commands are recorded."""

    def docker(self: ContainerWorker, *args: str) -> subprocess.CompletedProcess[bytes]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, b"", b"")

    monkeypatch.setattr(ContainerWorker, "_docker", docker)
    worker = ContainerWorker(ContainerPlan(image, ()), {})
    worker.name, worker._lifeline = f"warm-{image}", socket.socketpair()[0]  # noqa: SLF001 - ready, no engine
    return worker


def test_a_runner_being_forked_keeps_its_container_from_a_run_in_another_image(monkeypatch):
    """Between the worker's answer and the runner's joining the forked ones (the /proc scan, the go), a run
    in another image must not retire the container: its removal would kill the runner just forked."""
    calls: list[tuple[str, ...]] = []
    old = _ready_worker("a:1", calls, monkeypatch)
    monkeypatch.setattr(warm_container, "_containers", {old.plan: old})
    asked, answer = threading.Event(), threading.Event()

    def ask(path: str, request: dict[str, Any]) -> None:
        asked.set()
        answer.wait(10)  # the fork is under way: a run in image b:1 comes now

    monkeypatch.setattr(warm_container, "ask", ask)
    forking = threading.Thread(target=old.fork, args=(Path("s"), Path("."), {}, Path("o"), Path("e"), Path("r")))
    forking.start()
    assert asked.wait(10)
    other = warm_container.shared_container(ContainerPlan("b:1", ()), {})
    assert old.busy and not old.retired and old.ready and calls == []
    assert set(warm_container._containers.values()) == {old, other}  # noqa: SLF001 - both kept
    answer.set()
    forking.join(10)
    assert not old.busy  # the fork is over (the worker refused it): idle, the next run in b:1 retires it
    assert warm_container.shared_container(other.plan, {}) is other and old.retired
    assert calls == [("rm", "-f", "warm-a:1")]


def test_a_retired_container_never_starts_again(monkeypatch):
    """A caller still holding a retired worker gets no runner and no new container (one teardown would
    never reach): it runs the task in a container of its own."""
    calls: list[tuple[str, ...]] = []
    old = _ready_worker("a:1", calls, monkeypatch)
    monkeypatch.setattr(warm_container, "_containers", {old.plan: old})
    warm_container.shared_container(ContainerPlan("b:1", ()), {})
    assert old.retired and not old.ready and calls == [("rm", "-f", "warm-a:1")]
    assert old.fork(Path("s"), Path("."), {}, Path("o"), Path("e"), Path("r")) is None
    old.start()
    assert not old._starting and old.closed_on_purpose and calls == [("rm", "-f", "warm-a:1")]  # noqa: SLF001


KERNEL_CELLS = [
    "%load_ext batchmagic",
    "%%azbatch --backend local --container\nimport os\nfirst = os.readlink('/proc/self/ns/pid')",
    "import time\nfrom batchmagic.backends.warm_container import live_containers\n"
    "for _ in range(1800):\n    if live_containers():\n        break\n    time.sleep(0.1)\n"
    "worker = live_containers()[0]\nprint('warm', worker.name)",
    "%%azbatch --backend local --container\nimport os\nsecond = os.readlink('/proc/self/ns/pid')\n"
    "parent = os.getppid()",
    "import os\nprint(first != second, second == os.readlink(f'/proc/{worker.pid}/ns/pid'), parent)",
]


def test_a_real_kernel_forks_its_second_container_cell_in_its_warm_container_and_leaves_none(cenv, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in KERNEL_CELLS])
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    said = "".join(o.get("text", "") for o in nb.cells[2].outputs + nb.cells[4].outputs).split()
    assert said[0] == "warm" and said[2:] == ["True", "True", "1"], said
    # nbclient shut the kernel down: its exit removed the container
    wait_for(lambda: said[1] not in warm_containers(cenv), timeout=30)
