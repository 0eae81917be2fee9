"""Distributed runs on the local backend: ranks as processes of this machine, as torchrun --standalone.

Through the real parts: a real InteractiveShell and the magic, the runner in subprocesses, and for the
training test PyTorch's gloo backend over loopback.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import batchmagic
from batchmagic import distributed
from batchmagic.api import Session
from batchmagic.errors import RemoteError, RunCancelled, RunFailed
from batchmagic.protocol import Layout
from batchmagic.run.state import Phase
from tests.support.docker import unavailable_in_ci

ENV_CELL = """
import os
seen = {k: os.environ[k] for k in ENV_NAMES}
print("world", os.environ["WORLD_SIZE"])
from batchmagic import distributed as d
helpers = (d.rank(), d.world(), d.local_rank(), d.node_rank(), d.is_main())
"""


def need(module: str, reason: str) -> None:
    """A test that needs ``module`` (a real part: torch, mpi4py) fails without it in CI (``CI`` set, or run
    as root), as one that needs dockerd does; elsewhere it is skipped with ``reason``."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        unavailable_in_ci(f"{reason} ({err})")


def need_torch() -> None:
    need("torch", "torch is in the test extra: pip install -e '.[test]'")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _pids(home: Path, run: Any) -> dict[str, int]:
    """Each rank's runner pid, from the pid file the local backend writes beside its spec."""
    pids = {}
    for tid in run.task_ids:
        path = home / "runs" / run.id / tid / "pid"
        if path.exists():
            pids[tid] = int(path.read_text().split()[0])
    return pids


def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def test_every_rank_sees_its_place_and_rank_zero_names_come_back(shell: Any) -> None:
    shell.user_ns["ENV_NAMES"] = distributed.ENV_NAMES
    shell.run_cell(f"%%azbatch --backend local --nodes 2 --procs-per-node 2 --distributed\n{ENV_CELL}")
    seen = shell.user_ns["seen"]
    assert seen["RANK"] == "0" and seen["WORLD_SIZE"] == "4" and seen["NODE_RANK"] == "0"
    assert seen["LOCAL_WORLD_SIZE"] == "2" and seen["LOCAL_RANK"] == "0"
    assert seen["MASTER_ADDR"] == "127.0.0.1" and 1024 <= int(seen["MASTER_PORT"]) <= 65535
    assert shell.user_ns["helpers"] == (0, 4, 0, 0, True)
    run = shell.user_ns["_azbatch"]
    assert run.task_ids == ["rank-0", "rank-1", "rank-2", "rank-3"]
    merged = run.logs()
    for k in range(4):
        assert f"[rank {k}] world 4\n" in merged, merged
    assert run.logs("rank-3") == "world 4\n"
    rows = run.state().ranks
    assert [(r.task_id, r.state, r.last_line) for r in rows] == [
        (f"rank-{k}", "succeeded", "world 4") for k in range(4)
    ]
    assert rows[3].node == "localhost (node 1)"
    from batchmagic.notebook.record import record_of

    assert "rank 3: succeeded on localhost (node 1): world 4" in record_of(run, background=False).text


def test_each_rank_has_its_own_environment(home: Path) -> None:
    run = batchmagic.submit(
        "import os\nprint('|'.join(os.environ[k] for k in ENV_NAMES))",
        {"ENV_NAMES": distributed.ENV_NAMES},
        backend="local",
        nodes=3,
        procs_per_node=2,
        distributed=True,
        home=home,
    )
    run.wait(timeout=120)
    rows = {tid: run.logs(tid).strip().split("|") for tid in run.task_ids}
    ports = {row[1] for row in rows.values()}
    assert len(ports) == 1
    for k in range(6):
        addr, _port, world, rank, local, local_world, node = rows[f"rank-{k}"]
        assert (addr, world, rank, local, local_world, node) == ("127.0.0.1", "6", str(k), str(k % 2), "2", str(k // 2))


def test_an_error_on_one_rank_fails_the_run_with_its_traceback(home: Path) -> None:
    cell = "import os, time\nif os.environ['RANK'] == '1':\n    raise ValueError('rank one is unhappy')\n"
    cell += "time.sleep(120)\n"
    started = time.monotonic()
    run = batchmagic.submit(cell, {}, backend="local", nodes=2, distributed=True, home=home)
    with pytest.raises(RemoteError) as info:
        run.wait(timeout=60)
    assert time.monotonic() - started < 30  # rank 0 was stopped, not left to its two-minute sleep
    assert info.value.task_id == "rank-1" and "rank one is unhappy" in str(info.value)
    assert info.value.outputs == {} and not run.partial  # a distributed run keeps nothing of a cell that raised
    assert not any(_alive(pid) for pid in _pids(home, run).values())


def test_a_killed_rank_ends_the_run_within_15_seconds_naming_it(home: Path) -> None:
    cell = (
        "import os, time\nfor i in range(600):\n"
        "    print('rank', os.environ['RANK'], 'step', i, flush=True)\n    time.sleep(0.2)\n"
    )
    run = batchmagic.submit(cell, {}, backend="local", nodes=2, distributed=True, home=home)
    _wait_for(lambda: "step 3" in run.logs("rank-1"))
    pids = _pids(home, run)
    os.kill(pids["rank-1"], signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(RunFailed) as info:
        run.wait(timeout=60)
    assert time.monotonic() - killed < 15
    message = str(info.value)
    assert "\n" not in message
    assert re.search(r"rank 1 on localhost \(node 1\) failed: the task process was killed by SIGKILL", message), message
    assert re.search(r"its last lines: rank 1 step \d+", message), message
    assert not any(_alive(pid) for pid in pids.values())


#: A kernel that submits a 2-rank run, prints its id once both ranks are stepping, and dies.
_DYING_KERNEL = """
import os, sys, time
from pathlib import Path
import batchmagic
cell = "import os, time\\nfor i in range(600):\\n    print('step', i, flush=True)\\n    time.sleep(0.2)\\n"
run = batchmagic.submit(cell, {}, backend="local", nodes=2, distributed=True, home=Path(sys.argv[1]), name="orphan")
deadline = time.time() + 60
while time.time() < deadline and not all("step 2" in run.logs(t) for t in run.task_ids):
    time.sleep(0.1)
print(run.id, flush=True)
os._exit(0)
"""


def _orphaned_ranks(home: Path) -> tuple[str, dict[str, int]]:
    """A 2-rank run whose kernel is gone: its id, and its ranks' pids."""
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(
        [sys.executable, "-c", _DYING_KERNEL, str(home)], capture_output=True, text=True, env=env, timeout=120
    )
    run_id = done.stdout.split()[-1]
    pids = {t: int((home / "runs" / run_id / t / "pid").read_text().split()[0]) for t in ("rank-0", "rank-1")}
    assert all(_alive(pid) for pid in pids.values()), done.stderr
    return run_id, pids


def _watchers(run_dir: Path) -> list[int]:
    """The rank watchers of the run in ``run_dir`` still running (their command line names the directory)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"batchmagic.runner.rankwatch" in argv and str(run_dir).encode() in argv and _alive(int(entry)):
            found.append(int(entry))
    return found


def test_a_dead_kernels_ranks_end_together_with_no_client(home: Path) -> None:
    """The kernel that started the ranks is gone and no client watches: a rank killed still ends the other
    (the run's rank watcher outlives the kernel), and a client attaching later is told which rank failed."""
    run_id, pids = _orphaned_ranks(home)
    os.kill(pids["rank-1"], signal.SIGKILL)
    _wait_for(lambda: not _alive(pids["rank-0"]), timeout=15)
    assert (home / "runs" / run_id / "rank-0" / "stopped-after").read_text() == "stopped after rank-1 failed"
    _wait_for(lambda: not _watchers(home / "runs" / run_id), timeout=10)  # its work done, the watcher is gone
    run = Session(home).attach(run_id)
    with pytest.raises(RunFailed) as info:
        run.wait(timeout=30)
    assert re.search(r"rank 1 on localhost \(node 1\) failed: the task process was killed by SIGKILL", str(info.value))


def test_a_dead_kernels_ranks_end_together_under_an_attached_client(home: Path) -> None:
    """Another client attached to a dead kernel's run: a rank killed ends the run within 15 s, naming it."""
    run_id, pids = _orphaned_ranks(home)
    run = Session(home).attach(run_id)
    os.kill(pids["rank-1"], signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(RunFailed) as info:
        run.wait(timeout=30)
    assert time.monotonic() - killed < 15
    assert "rank 1 on localhost (node 1) failed" in str(info.value), str(info.value)
    _wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=10)


def test_cancel_ends_every_rank(home: Path) -> None:
    cell = "import subprocess, time\nsubprocess.Popen(['sleep', '300'])\nprint('up', flush=True)\ntime.sleep(300)\n"
    run = batchmagic.submit(cell, {}, backend="local", nodes=2, procs_per_node=2, distributed=True, home=home)
    _wait_for(lambda: all("up" in run.logs(tid) for tid in run.task_ids))
    pids = _pids(home, run)
    assert len(pids) == 4
    groups = {os.getpgid(pid) for pid in pids.values()}
    assert len(_watchers(home / "runs" / run.id)) == 1  # the run's rank watcher, in a session of its own
    run.cancel()
    with pytest.raises(RunCancelled):
        run.wait(timeout=30)
    assert run.state().phase == Phase.CANCELLED
    _wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=15)
    _wait_for(lambda: not _watchers(home / "runs" / run.id), timeout=10)  # it left the ranks to the cancel
    leftovers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _alive(int(p)) and _pgid(int(p)) in groups]
    assert leftovers == []


def test_cancel_stops_blocked_ranks_together(home: Path, tmp_path: Path) -> None:
    """Four ranks that do not end on SIGTERM (as a rank blocked in a gloo collective: its Python handler never
    runs): each notes when its first SIGTERM came and goes on. Cancel signals them all at once, then gives one
    grace period, not one each, then SIGKILLs them all. Asserted on when each rank had SIGTERM and when each
    ended, not on how long the whole took (a loaded machine stretches that, not the order of things)."""
    from batchmagic.backends.local import _GRACE_SECONDS

    # The first SIGTERM only (the runner's watcher signals again while its own handler has not run), noted
    # whole or not at all (a rename): a SIGKILL cannot leave a note half written.
    cell = (
        "import os, signal, time\n"
        "def noted(*_):\n"
        "    path = os.path.join(SEEN, os.environ['RANK'])\n"
        "    if not os.path.exists(path):\n"
        "        with open(path + '.new', 'w') as f:\n"
        "            f.write(repr(time.time()))\n"
        "        os.replace(path + '.new', path)\n"
        "signal.signal(signal.SIGTERM, noted)\n"
        "print('up', flush=True)\n"
        "time.sleep(300)\n"
    )
    run = batchmagic.submit(cell, {"SEEN": str(tmp_path)}, backend="local", nodes=4, distributed=True, home=home)
    _wait_for(lambda: all("up" in run.logs(tid) for tid in run.task_ids))
    pids = _pids(home, run)
    assert len(pids) == 4
    ended: dict[str, float] = {}
    watcher = threading.Thread(target=_note_ends, args=(pids, ended), daemon=True)
    watcher.start()
    asked = time.time()
    run.cancel()
    watcher.join(timeout=30)
    assert not any(_alive(pid) for pid in pids.values())  # the cancel returns once every rank is gone
    with pytest.raises(RunCancelled):
        run.wait(timeout=60)
    termed = {k: float((tmp_path / str(k)).read_text()) for k in range(4) if (tmp_path / str(k)).exists()}
    assert len(termed) == 4, termed  # every rank had SIGTERM, and did not end on it
    # Every rank had SIGTERM before the first grace period was over (one by one: a grace period apart each).
    assert max(termed.values()) - min(termed.values()) < _GRACE_SECONDS, termed
    # None ended before the grace period was over (the SIGKILL waited for it), and they ended together: one
    # SIGKILL each at its end, not one grace period each.
    assert min(ended.values()) >= asked + _GRACE_SECONDS, (asked, ended)
    assert max(ended.values()) - min(ended.values()) < _GRACE_SECONDS, ended


def _note_ends(pids: dict[str, int], ended: dict[str, float]) -> None:
    """Note in ``ended`` when (``time.time()``, the clock the ranks note on) each of ``pids`` ended."""
    deadline = time.monotonic() + 60
    while len(ended) < len(pids) and time.monotonic() < deadline:
        for tid, pid in pids.items():
            if tid not in ended and not _alive(pid):
                ended[tid] = time.time()
        time.sleep(0.02)


def test_teardown_ends_every_rank_and_the_run_is_cancelled(shell: Any, home: Path) -> None:
    """``%azbatch_teardown`` of a running distributed run (watched in the background, --no-wait): every rank
    ends, and the run ends cancelled, not failed by a monitor that saw the ranks die."""
    cell = "import time\nprint('up', flush=True)\ntime.sleep(300)"
    shell.run_cell(f"%%azbatch --backend local --nodes 3 --distributed --no-wait\n{cell}")
    run = shell.user_ns["_azbatch"]
    _wait_for(lambda: all("up" in run.logs(tid) for tid in run.task_ids))
    pids = _pids(home, run)
    assert len(pids) == 3
    shell.run_line_magic("azbatch_teardown", "")
    assert run.done and run.state().phase == Phase.CANCELLED
    with pytest.raises(RunCancelled):
        run.result()
    _wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=15)
    time.sleep(0.5)  # the background monitor's ticks: it stays cancelled
    assert run.state().phase == Phase.CANCELLED


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def test_the_run_layout_keeps_a_log_and_result_per_rank(home: Path) -> None:
    run = batchmagic.submit("x = 1", {}, backend="local", nodes=2, distributed=True, home=home)
    assert run.wait(timeout=60) == {"x": 1}
    for tid in ("rank-0", "rank-1"):
        assert (home / Layout.result(run.id, tid)).exists()


#: Each rank binds a name and writes a --output file and a file beside the notebook; the ranks other than 0
#: bind a large value (8 MB, as a state dict would be), which must not travel: only rank 0's names come back.
RANKS_WRITE_CELL = """
import os
rank = int(os.environ["RANK"])
big = os.urandom(8_000_000) if rank else "rank 0's"
os.makedirs("model", exist_ok=True)
open(f"model/rank-{rank}.bin", "wb").write(bytes(1000))
open(f"beside-{rank}.txt", "w").write(str(rank))
print("wrote", rank)
"""


def assert_only_rank_zero_sent_back(run: Any, work: Path, results: dict[str, int]) -> None:
    """Rank 0's names, --output files and files beside the notebook came back, and only its: the other ranks'
    results (``results``: their sizes) hold a verdict and no pickle of their 8 MB, and they uploaded no file."""
    assert sorted(p.name for p in work.glob("beside-*")) == ["beside-0.txt"]
    assert not (work / "model").exists() or sorted(p.name for p in (work / "model").iterdir()) == ["rank-0.bin"]
    assert run.files == [("model/rank-0.bin", 1000)]
    assert set(results) == set(run.task_ids) and all(size < 20_000 for size in results.values()), results
    for tid in run.task_ids[1:]:
        assert run.outbox.list_keys(Layout.outputs(run.id, tid)) == []
    assert [k for k, _ in run.outbox.list_keys(Layout.outputs(run.id, "rank-0"))] != []
    for k in range(len(run.task_ids)):
        assert f"[rank {k}] wrote {k}\n" in run.logs()


def test_only_rank_zero_sends_back_its_names_and_files(shell: Any, home: Path) -> None:
    shell.run_cell(
        f"%%azbatch --backend local --nodes 2 --procs-per-node 2 --distributed --output model/*\n{RANKS_WRITE_CELL}"
    )
    assert shell.user_ns["big"] == "rank 0's" and shell.user_ns["rank"] == 0
    run = shell.user_ns["_azbatch"]
    results = {tid: (home / Layout.result(run.id, tid)).stat().st_size for tid in run.task_ids}
    assert_only_rank_zero_sent_back(run, Path.cwd(), results)


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [2, 4])
def test_ddp_training_equals_one_process_over_the_same_batches(shell: Any, nodes: int) -> None:
    need_torch()
    from tests.support.training import TRAIN_CELL, assert_same_weights, data, train_alone

    shell.user_ns.update(data())
    shell.run_cell(f"%%azbatch --backend local --nodes {nodes} --distributed --out weights\n{TRAIN_CELL}")
    assert_same_weights(shell.user_ns["weights"], train_alone(shell.user_ns))
    run = shell.user_ns["_azbatch"]
    assert f"[rank {nodes - 1}] step 20 loss" in run.logs()


def need_mpi() -> None:
    need("mpi4py", "mpi4py and mpich are in the test extra: pip install -e '.[test]'")


@pytest.mark.slow
def test_an_mpi_allreduce_across_the_ranks_of_one_cell(shell: Any) -> None:
    need_mpi()
    from tests.support.mpi import MPI_CELL

    shell.run_cell(f"%%azbatch --backend local --nodes 3 --distributed --out total\n{MPI_CELL}")
    assert shell.user_ns["total"] == 1 + 2 + 3
    logs = shell.user_ns["_azbatch"].logs()
    for k in range(3):
        assert f"[rank {k}] allreduce 6\n" in logs, logs
