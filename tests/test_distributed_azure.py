"""Distributed runs on Azure Batch through the real parts: the Batch emulator (multi-instance tasks,
each node a loopback address of its own, the process executor) and Azurite, from a real shell."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from batchmagic import RemoteError
from batchmagic.errors import RunCancelled, RunFailed
from batchmagic.protocol import Layout, NodeState
from batchmagic.run.state import Phase
from tests.support.azurite import RunningAzurite
from tests.support.emulator import RunningEmulator, start_emulator, wait_for
from tests.support.settings import use_azure
from tests.test_distributed import RANKS_WRITE_CELL, assert_only_rank_zero_sent_back, need_torch

HOSTS_CELL = """
import os
mine = {k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "NODE_RANK", "LOCAL_RANK")}
print("rank", os.environ["RANK"], "of", os.environ["WORLD_SIZE"], "master", os.environ["MASTER_ADDR"])
"""


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RunningEmulator]:
    with start_emulator(tmp_path / "batch", allocation_delay=0.2) as emu:
        yield emu


@pytest.fixture
def azure_env(monkeypatch: pytest.MonkeyPatch, home: Path, emulator: RunningEmulator, azurite: RunningAzurite) -> Any:
    use_azure(monkeypatch, emulator, azurite, prefix="dist")
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
    return emulator


def test_one_multi_instance_task_runs_every_rank(azure_env: RunningEmulator, shell: Any) -> None:
    shell.run_cell(f"%%azbatch --nodes 3 --distributed --name dist\n{HOSTS_CELL}")
    mine = shell.user_ns["mine"]
    run = shell.user_ns["_azbatch"]
    client = azure_env.client()
    task = client.get_task(run.id, "rank-0")
    assert task.multi_instance_settings.number_of_instances == 3
    subtasks = list(client.list_subtasks(run.id, "rank-0"))
    assert len(subtasks) == 2
    # MASTER_ADDR is the primary's address (the host part of AZ_BATCH_MASTER_NODE), never Batch's port 6000.
    master = mine.pop("MASTER_ADDR")
    assert re.fullmatch(r"127\.\d+\.\d+\.\d+", master) and master != "127.0.0.1"
    assert mine == {"MASTER_PORT": "6105", "WORLD_SIZE": "3", "RANK": "0", "NODE_RANK": "0", "LOCAL_RANK": "0"}
    merged = run.logs()
    for k in range(3):
        assert f"[rank {k}] rank {k} of 3 master {master}\n" in merged, merged
    spec = client.get_job(run.id).pool_info.auto_pool_specification.pool
    assert spec.enable_inter_node_communication and spec.task_slots_per_node == 1 and spec.target_dedicated_nodes == 3
    rows = run.state().ranks
    assert [(r.state, r.last_line) for r in rows] == [("succeeded", f"rank {k} of 3 master {master}") for k in range(3)]
    assert len({r.node for r in rows}) == 3 and rows[0].node.endswith("(node 0)")


NODE_CELL = """
import glob, os
rank = int(os.environ["RANK"])
mine = (os.environ["NODE_RANK"], os.environ["LOCAL_RANK"], os.path.basename(os.getcwd()))
shared = sorted(os.path.basename(p) for p in glob.glob("../.azbatch-bundle-*.zip"))  # the node's one copy
own = glob.glob(".azbatch-*/bundle.zip")  # a copy of the rank's own (each rank downloaded one before)
print("rank", rank, "node", mine[0], "shared", shared, "own", own)
"""


def test_a_nodes_ranks_share_one_read_of_the_spec_and_bundle(azure_env: RunningEmulator, shell: Any) -> None:
    """Two nodes of two ranks each (--procs-per-node 2): each node's supervisor read its ranks' specs and the
    run's bundle once, onto the node's disk, and its ranks, forked from it, read that copy."""
    shell.run_cell(f"%%azbatch --nodes 2 --procs-per-node 2 --distributed --out mine\n{NODE_CELL}")
    assert shell.user_ns["mine"] == ("0", "0", "rank-0")
    logs = shell.user_ns["_azbatch"].logs()
    for rank in range(4):
        assert f"[rank {rank}] rank {rank} node {rank // 2} shared ['.azbatch-bundle-0.zip'] own []" in logs, logs


def test_only_rank_zero_sends_back_its_names_and_files(azure_env: RunningEmulator, shell: Any) -> None:
    """Through Azurite: the other ranks' result blobs are small (their 8 MB value was not pickled nor
    uploaded), their files stay on their nodes, and the names that come back are rank 0's."""
    shell.run_cell(f"%%azbatch --nodes 2 --procs-per-node 2 --distributed --output model/*\n{RANKS_WRITE_CELL}")
    assert shell.user_ns["big"] == "rank 0's" and shell.user_ns["rank"] == 0
    run = shell.user_ns["_azbatch"]
    blobs = dict(run.store.list_keys(f"runs/{run.id}/"))
    results = {tid: blobs[Layout.result(run.id, tid)] for tid in run.task_ids}
    assert_only_rank_zero_sent_back(run, Path.cwd(), results)


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [2, 4])
def test_ddp_training_on_the_emulator_equals_one_process(azure_env: RunningEmulator, shell: Any, nodes: int) -> None:
    need_torch()
    from tests.support.training import TRAIN_CELL, assert_same_weights, data, train_alone

    shell.user_ns.update(data())
    shell.run_cell(f"%%azbatch --nodes {nodes} --distributed --out weights\n{TRAIN_CELL}")
    assert_same_weights(shell.user_ns["weights"], train_alone(shell.user_ns))


def test_an_error_on_one_rank_fails_the_run(azure_env: RunningEmulator, shell: Any) -> None:
    cell = (
        "import os, time\nif os.environ['RANK'] == '1':\n    raise ValueError('rank one is unhappy')\ntime.sleep(120)"
    )
    started = time.monotonic()
    with pytest.raises(RemoteError) as info:
        shell.run_cell(f"%%azbatch --nodes 2 --distributed\n{cell}")
    assert time.monotonic() - started < 60
    assert info.value.task_id == "rank-1" and "rank one is unhappy" in str(info.value)


def test_a_rank_that_calls_sys_exit_fails_the_run_in_the_same_words(azure_env: RunningEmulator, shell: Any) -> None:
    """``sys.exit(3)`` on rank 1: the run's line says "failed", why and its last lines, as any rank's failure
    does, and the panel's rows tell the rank that failed from the one stopped after it."""
    cell = (
        "import os, sys, time\nprint('hello from', os.environ['RANK'], flush=True)\n"
        "if os.environ['RANK'] == '1':\n    sys.exit(3)\ntime.sleep(60)"
    )
    with pytest.raises(RunFailed) as info:
        shell.run_cell(f"%%azbatch --nodes 2 --distributed --name ex3\n{cell}")
    message = str(info.value)
    assert re.fullmatch(
        r"run ex3: rank 1 on \S+ \(node 1\) failed: the cell called sys.exit\(3\); its last lines: hello from 1",
        message,
    ), message
    assert [r.state for r in shell.user_ns["_azbatch"].state().ranks] == ["stopped", "failed"]


def _rank_pids(run: Any) -> dict[int, int]:
    """Each rank's process, as its node's supervisor wrote it in the run's store."""
    pids = {}
    for node in range(run.backend._ranks[run.id].nodes):
        try:
            state = NodeState.from_json(run.store.get_bytes(Layout.node_state(run.id, node)))
        except KeyError:
            continue
        pids.update({r.rank: r.pid for r in state.ranks})
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_rank_ends_the_run_within_15_seconds(azure_env: RunningEmulator, shell: Any) -> None:
    cell = "import os, time\nfor i in range(600):\n    print('step', i, flush=True)\n    time.sleep(0.2)"
    shell.run_cell(f"%%azbatch --nodes 2 --distributed --no-wait --name victim\n{cell}")
    run = shell.user_ns["_azbatch"]
    wait_for(lambda: "step 3" in run.logs("rank-1"), timeout=60)
    pids = _rank_pids(run)
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(RunFailed) as info:
        run.wait(timeout=60)
    assert time.monotonic() - killed < 15
    message = str(info.value)
    assert re.search(r"rank 1 on \S+ \(node \d\) failed: the task process was killed by SIGKILL", message), message
    assert "its last lines: step" in message
    wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=15)


STEPS_CELL = "import time\nfor i in range(600):\n    print('step', i, flush=True)\n    time.sleep(0.2)"


@pytest.mark.parametrize("node", [1, 0])
def test_a_node_that_hangs_ends_the_run_within_15_seconds(azure_env: RunningEmulator, shell: Any, node: int) -> None:
    """A node freezes (its supervisor and its rank stopped, as a VM that hangs: no process dies, no connection
    resets): its heartbeat stands still, so the run ends, naming that node's rank as the cause and its last
    lines, and the other rank as stopped after it; not after a collective's 30 minutes. Node 1: the primary's
    supervisor sees it; node 0 (the primary itself): the notebook does, and ends the task."""
    shell.run_cell(f"%%azbatch --nodes 2 --distributed --no-wait --name frozen\n{STEPS_CELL}")
    run = shell.user_ns["_azbatch"]
    wait_for(lambda: all("step 3" in run.logs(t) for t in run.task_ids), timeout=60)
    pids = _rank_pids(run)
    group = os.getpgid(pids[node])  # that node's coordination command: its supervisor and its rank
    assert group != os.getpgid(pids[1 - node])
    os.killpg(group, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        with pytest.raises(RunFailed) as info:
            run.wait(timeout=60)
        took = time.monotonic() - frozen
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone with the task's end
            os.killpg(group, signal.SIGCONT)
    message = str(info.value)
    silent = rf"rank {node} on \S+ \(node {node}\) failed: its node went silent: no heartbeat for 10 s"
    assert re.search(silent, message), message
    assert "its last lines: step" in message and "\n" not in message
    assert took < 15, took
    assert [r.state for r in run.state().ranks] == (["stopped", "failed"] if node else ["failed", "stopped"])
    wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=15)


def test_a_node_removed_from_the_pool_ends_the_run_in_one_line(azure_env: RunningEmulator, shell: Any) -> None:
    """Node 1 leaves the pool mid-run (Batch requeues the task, to run every rank again from the start): the
    run ends at once in one line naming node 1's rank and why, rather than starting over unseen."""
    from azure.batch import models as m

    shell.run_cell(f"%%azbatch --nodes 2 --distributed --no-wait --name lost\n{STEPS_CELL}")
    run = shell.user_ns["_azbatch"]
    wait_for(lambda: all("step 3" in run.logs(t) for t in run.task_ids), timeout=60)
    client = azure_env.client()
    pool = client.get_task(run.id, "rank-0").node_info.pool_id
    other = next(iter(client.list_subtasks(run.id, "rank-0"))).node_info.node_id
    client.begin_remove_nodes(pool, m.BatchNodeRemoveOptions(node_ids=[other]), polling_interval=0)
    removed = time.monotonic()
    with pytest.raises(RunFailed) as info:
        run.wait(timeout=60)
    assert time.monotonic() - removed < 15
    message = str(info.value)
    assert f"rank 1 on {other} (node 1) failed: Batch requeued the task to start every rank again: its node " in message
    assert "its last lines: step" in message
    # Not started again: the job is ended (Batch leaves a terminated job's active task as it is, unscheduled).
    assert client.get_job(run.id).state in (m.BatchJobState.TERMINATING, m.BatchJobState.COMPLETED)
    assert client.get_task(run.id, "rank-0").state == m.BatchTaskState.ACTIVE


def test_a_node_restarted_under_its_ranks_is_blamed_not_rank_0(azure_env: RunningEmulator, shell: Any) -> None:
    """Node 1 reboots with its task ended (not requeued): Batch ends the whole task. The run's line names
    node 1's rank and what became of its node; rank 0, healthy and ended with the task, is only "stopped".
    (A named pool: an auto pool would let its nodes go as the run ends, before the client looks at them.)"""
    from azure.batch import models as m

    shell.run_line_magic("azbatch_pool", "create ib --vm Standard_D2s_v3 --max-nodes 2 --inter-node")
    shell.run_cell(f"%%azbatch --pool ib --nodes 2 --distributed --no-wait --name rebooted\n{STEPS_CELL}")
    run = shell.user_ns["_azbatch"]
    wait_for(lambda: all("step 3" in run.logs(t) for t in run.task_ids), timeout=60)
    client = azure_env.client()
    pool = client.get_task(run.id, "rank-0").node_info.pool_id
    other = next(iter(client.list_subtasks(run.id, "rank-0"))).node_info.node_id
    client.begin_reboot_node(
        pool, other, m._models.BatchNodeRebootOptions(node_reboot_kind="terminate"), polling_interval=0
    )
    with pytest.raises(RunFailed) as info:
        run.wait(timeout=30)
    message = str(info.value)
    assert f"rank 1 on {other} (node 1) failed: Batch ended the task as its node went down: its node " in message, (
        message
    )
    assert "its last lines: step" in message
    assert [r.state for r in run.state().ranks] == ["stopped", "failed"]


def test_a_node_whose_coordination_command_fails_is_blamed_with_its_own_words(
    azure_env: RunningEmulator, shell: Any
) -> None:
    """Node 1's supervisor cannot start (every address it may claim is in use: its coordination command exits
    1, and so fails the task): the line names rank 1, its node and the last lines of that node's ranks.txt
    (read through Batch's node file API), never rank 0 with the task's generic failure."""
    import socket

    shell.run_line_magic("azbatch_pool", "create ib --vm Standard_D2s_v3 --max-nodes 2 --inter-node")
    shell.run_line_magic("azbatch_pool", "resize ib 2")
    client = azure_env.client()
    wait_for(lambda: [str(n.state.value) for n in client.list_nodes("ib")] == ["idle", "idle"], timeout=60)
    held = [socket.socket() for _ in range(2)]
    for sock, node in zip(held, client.list_nodes("ib"), strict=True):
        sock.bind((node.ip_address, 6106))  # the port a node's supervisor claims its address with
    try:
        with pytest.raises(RunFailed) as info:
            shell.run_cell(
                "%%azbatch --pool ib --nodes 2 --distributed\nimport time\nprint('up', flush=True)\ntime.sleep(60)"
            )
    finally:
        for sock in held:
            sock.close()
    message = str(info.value)
    assert re.search(r"rank 1 on \S+ \(node 1\) failed: its node's part of the task failed \(exit code 1\)", message)
    assert "its node said: batchmagic: this node has none of the addresses of AZ_BATCH_HOST_LIST" in message
    assert [r.state for r in shell.user_ns["_azbatch"].state().ranks] == ["stopped", "failed"]


def test_the_supervisors_survive_answers_cut_short(
    emulator: RunningEmulator, azurite: RunningAzurite, monkeypatch: pytest.MonkeyPatch, home: Path, shell: Any
) -> None:
    """Storage answers the supervisors' reads of the nodes' states cut short (a connection that breaks
    mid-body: http.client.IncompleteRead, which is no OSError): the supervisors read again on their next
    look, and the run ends well, rather than the primary's supervisor dying and failing it."""
    from tests.support.proxy import FaultyProxy

    only = r"^GET /\S*/runs/\S*/nodes/\d+\.json\S* Python-urllib"  # the runner's reads of node states
    with FaultyProxy("127.0.0.1", azurite.port, truncate=0.5, only=only) as proxy:
        use_azure(monkeypatch, emulator, azurite, prefix="cut")
        monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
        proxied = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", proxied)
        cell = "import time\nfor i in range(15):\n    print('step', i, flush=True)\n    time.sleep(0.2)\ndone = 1"
        shell.run_cell(f"%%azbatch --nodes 2 --distributed --out done\n{cell}")
        assert shell.user_ns["done"] == 1
        assert proxy.counts["truncated"] >= 2, proxy.counts


def test_cancel_ends_every_rank(azure_env: RunningEmulator, shell: Any) -> None:
    cell = "import time\nprint('up', flush=True)\ntime.sleep(300)"
    shell.run_cell(f"%%azbatch --nodes 2 --distributed --no-wait\n{cell}")
    run = shell.user_ns["_azbatch"]
    wait_for(lambda: all("up" in run.logs(t) for t in run.task_ids), timeout=60)
    pids = _rank_pids(run)
    assert len(pids) == 2 and all(_alive(pid) for pid in pids.values())
    run.cancel()
    with pytest.raises(RunCancelled):
        run.result()
    assert run.state().phase == Phase.CANCELLED
    wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=30)
    assert run.state().phase == Phase.CANCELLED


def test_a_named_inter_node_pool_takes_a_distributed_run(azure_env: RunningEmulator, shell: Any) -> None:
    shell.run_line_magic("azbatch_pool", "create plain --vm Standard_D2s_v3 --max-nodes 2")
    with pytest.raises(UsageError, match="pool plain cannot take --distributed runs.*--inter-node"):
        shell.run_cell("%%azbatch --pool plain --nodes 2 --distributed\nx = 1")
    shell.run_line_magic("azbatch_pool", "create ib --vm Standard_D2s_v3 --max-nodes 2 --inter-node")
    assert azure_env.client().get_pool("ib").enable_inter_node_communication
    # More nodes than the pool ever holds: one line, not a multi-instance task waiting until its timeout.
    with pytest.raises(UsageError, match="pool ib grows to at most 2 nodes.*needs 3: use --nodes 2"):
        shell.run_cell("%%azbatch --pool ib --nodes 3 --distributed\nx = 1")
    shell.run_cell("%%azbatch --pool ib --nodes 2 --distributed\nimport os\nr = os.environ['WORLD_SIZE']")
    assert shell.user_ns["r"] == "2"


@pytest.mark.slow
def test_an_mpi_allreduce_across_the_nodes(azure_env: RunningEmulator, shell: Any) -> None:
    from tests.support.mpi import MPI_CELL
    from tests.test_distributed import need_mpi

    need_mpi()
    shell.run_cell(f"%%azbatch --nodes 3 --distributed --out total\n{MPI_CELL}")
    assert shell.user_ns["total"] == 6


def test_the_cost_is_n_nodes_and_teardown_ends_every_rank(
    azure_env: RunningEmulator, shell: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHMAGIC_REGION", "eastus")
    shell.run_cell("%%azbatch --nodes 3 --distributed --no-wait\nimport time\nprint('up', flush=True)\ntime.sleep(300)")
    run = shell.user_ns["_azbatch"]
    wait_for(lambda: all("up" in run.logs(t) for t in run.task_ids), timeout=60)
    from batchmagic.backends.azure.prices import Prices

    price = Prices.for_settings(run.backend.settings.home, "").hourly("Standard_D2s_v3", "eastus")
    assert price

    def three_nodes() -> bool:
        cost = run.state().cost
        return cost is not None and cost.per_hour is not None and sum(cost.nodes.values()) == 3

    wait_for(three_nodes, timeout=70)  # node counts are read again every HOLDING_INTERVAL (30 s) while it runs
    assert run.state().cost.per_hour == pytest.approx(3 * price)  # type: ignore[union-attr]
    pids = _rank_pids(run)
    assert len(pids) == 3
    shell.run_line_magic("azbatch_teardown", "")
    # Cancelled, never failed: its background monitor must not see the ranks teardown ended and blame one.
    assert run.done and run.state().phase == Phase.CANCELLED
    with pytest.raises(RunCancelled):
        run.result()
    wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=30)
    time.sleep(1.5)  # a few of the monitor's ticks: the run stays cancelled
    assert run.state().phase == Phase.CANCELLED


def _cut_off_at_the_next_poll(run: Any, proxy: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the run's monitor's polls do from now on, in order ("start", "end"), once the next one has
    started; Batch (behind ``proxy``) is unreachable from that moment on."""
    polls: list[str] = []
    real = run.backend.poll

    def poll(run_id: str) -> Any:  # the real poll, observed
        if not polls:
            # Made unreachable as this poll starts: a poll already in flight when Batch went away would
            # retry for a minute unobserved, and none would start meanwhile.
            proxy.reset_before = 1.0
        polls.append("start")
        try:
            return real(run_id)
        finally:
            polls.append("end")

    monkeypatch.setattr(run.backend, "poll", poll)
    wait_for(lambda: "start" in polls, timeout=30)  # the next tick (every 5 s at most while it runs)
    return polls


def test_teardown_does_not_wait_for_a_monitor_stuck_on_an_unreachable_batch(
    emulator: RunningEmulator,
    azurite: RunningAzurite,
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    shell: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Batch stops answering (a proxy in front of the emulator resets every connection) while a --no-wait
    distributed run's monitor polls it: ``%azbatch_teardown`` says at once that it could not reach Batch,
    while that poll is still retrying, rather than after it; once Batch answers again, a teardown ends the
    run ``cancelled``, and the poll that was in flight across the release does not turn it ``failed``."""
    from tests.support.proxy import FaultyProxy

    with FaultyProxy("127.0.0.1", int(emulator.endpoint.rsplit(":", 1)[1])) as proxy:
        use_azure(monkeypatch, emulator, azurite, prefix="stuck")
        monkeypatch.setenv("AZURE_BATCH_ENDPOINT", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
        cell = "import time\nprint('up', flush=True)\ntime.sleep(300)"
        shell.run_cell(f"%%azbatch --nodes 2 --distributed --no-wait\n{cell}")
        run = shell.user_ns["_azbatch"]
        wait_for(lambda: all("up" in run.logs(t) for t in run.task_ids), timeout=60)
        pids = _rank_pids(run)
        polls = _cut_off_at_the_next_poll(run, proxy, monkeypatch)
        capsys.readouterr()
        shell.run_line_magic("azbatch_teardown", "")
        assert polls == ["start"], polls  # the monitor's poll is still retrying: teardown did not wait for it
        assert "could not reach Azure Batch" in capsys.readouterr().out
        assert not run.done and all(_alive(pid) for pid in pids.values())
        proxy.reset_before = 0.0  # Batch is back
        shell.run_line_magic("azbatch_teardown", "")
        assert run.done and run.state().phase == Phase.CANCELLED
        wait_for(lambda: "end" in polls, timeout=120)  # the poll in flight ends, having seen the ranks end
        wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=30)
        time.sleep(1.0)  # and the monitor's loop, if it ticked again: the run stays cancelled
        assert run.state().phase == Phase.CANCELLED
        with pytest.raises(RunCancelled):
            run.result()


def test_cancel_says_at_once_that_an_unreachable_batch_kept_it_from_stopping_the_run(
    emulator: RunningEmulator,
    azurite: RunningAzurite,
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    shell: Any,
) -> None:
    """A user's Cancel (``run.cancel()``, what the panel's button and Ctrl-C call) while Batch does not
    answer: one line, while the monitor's poll is still retrying (not after the same minute of retries),
    that says the run was not cancelled, runs on, and what will end it. The ledger still holds the run, so
    a teardown once Batch answers ends it ``cancelled``."""
    from batchmagic.run.ledger import Ledger
    from tests.support.proxy import FaultyProxy

    with FaultyProxy("127.0.0.1", int(emulator.endpoint.rsplit(":", 1)[1])) as proxy:
        use_azure(monkeypatch, emulator, azurite, prefix="nocancel")
        monkeypatch.setenv("AZURE_BATCH_ENDPOINT", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("BATCHMAGIC_BACKEND", "azure")
        cell = "import time\nprint('up', flush=True)\ntime.sleep(300)"
        shell.run_cell(f"%%azbatch --nodes 2 --distributed --no-wait --timeout 2h\n{cell}")
        run = shell.user_ns["_azbatch"]
        wait_for(lambda: all("up" in run.logs(t) for t in run.task_ids), timeout=60)
        pids = _rank_pids(run)
        polls = _cut_off_at_the_next_poll(run, proxy, monkeypatch)
        with pytest.raises(RunFailed) as refused:
            run.cancel()
        assert polls == ["start"], polls  # the monitor's poll still retries: the cancel did not take as long
        line = str(refused.value)
        assert "\n" not in line and f"run {run.name} is not cancelled: could not reach Azure Batch" in line
        assert "--timeout of 2h" in line and "%azbatch_teardown" in line
        assert not run.done and all(_alive(pid) for pid in pids.values())
        assert run.id in Ledger(home).open_runs()
        proxy.reset_before = 0.0  # Batch is back
        shell.run_line_magic("azbatch_teardown", "")
        assert run.done and run.state().phase == Phase.CANCELLED
        wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=30)
        wait_for(lambda: "end" in polls, timeout=120)
        assert run.state().phase == Phase.CANCELLED


REQUEUE_CELL = """
import os, pathlib, time
mark = pathlib.Path(MARKS) / os.environ["RANK"]
attempt = "second" if mark.exists() else "first"
mark.touch()
print(attempt, "attempt", flush=True)
if attempt == "first" and os.environ["RANK"] == "0":
    time.sleep(300)  # until its node restarts
if attempt == "second" and os.environ["RANK"] == "1":
    time.sleep(2)  # rank 0 ends first: the primary must wait for this attempt's rank 1
"""


def test_a_requeued_run_ends_in_one_line_rather_than_starting_over(
    azure_env: RunningEmulator, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The primary's node restarts mid-run (a reboot that requeues its task): Batch would run every instance
    again from the start, the cell's work so far lost and paid for twice, unseen. The run ends at once instead,
    in one line naming rank 0, its node and why; rank 1 had finished; nothing runs a second attempt."""
    from azure.batch import models as m

    from batchmagic.api import Session

    (tmp_path / "marks").mkdir()
    session = Session()  # this test's settings (a session made by an earlier test holds its own)
    request.addfinalizer(session.teardown)
    run = session.submit(REQUEUE_CELL, {"MARKS": str(tmp_path / "marks")}, backend="azure", nodes=2, distributed=True)

    def polled(check: Any) -> Any:
        return lambda: not run.poll() and check()

    wait_for(polled(lambda: [r.state for r in run.state().ranks] == ["running", "succeeded"]), timeout=90)
    client = azure_env.client()
    task = client.get_task(run.id, "rank-0")
    pool, primary = task.node_info.pool_id, task.node_info.node_id
    other = next(iter(client.list_subtasks(run.id, "rank-0"))).node_info.node_id
    # The emulator's reboot takes a moment, a pool's minutes: hold the requeued task (it needs both nodes)
    # so that it cannot start again before the client's next poll.
    client.disable_node_scheduling(
        pool, other, m.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option="taskcompletion")
    )
    client.begin_reboot_node(
        pool, primary, m._models.BatchNodeRebootOptions(node_reboot_kind="requeue"), polling_interval=0
    )
    with pytest.raises(RunFailed) as info:
        run.wait(timeout=30)
    message = str(info.value)
    assert message.startswith(f"run {run.name}: rank 0 on {primary} (node 0) failed: Batch requeued the task"), message
    assert "its last lines: first attempt" in message
    assert [r.state for r in run.state().ranks] == ["failed", "succeeded"]
    from azure.core.exceptions import ResourceNotFoundError

    try:
        client.enable_node_scheduling(pool, other)
    except ResourceNotFoundError:
        pass  # the run's end let its auto pool go already
    time.sleep(2)  # the nodes are back (or gone): the task is not scheduled again
    assert sorted(p.name for p in (tmp_path / "marks").iterdir()) == ["0", "1"]
    assert client.get_task(run.id, "rank-0").state == m.BatchTaskState.ACTIVE
    assert "second attempt" not in run.logs()


def test_a_distributed_run_on_an_rdma_size_gives_its_containers_infiniband(
    azure_env: RunningEmulator, shell: Any
) -> None:
    """The multi-instance task Batch gets for an InfiniBand size (HB120rs_v3: no GPU, so the process executor
    runs it here) asks for the node's InfiniBand devices in its container, on top of the host's network and
    /dev/shm; one on a size without InfiniBand does not."""
    from batchmagic.backends.azure.gpus import INFINIBAND_OPTIONS

    options = {}
    for vm in ("Standard_HB120rs_v3", "Standard_D2s_v3"):
        shell.run_cell(f"%%azbatch --nodes 2 --distributed --vm {vm}\nx = 1")
        run = shell.user_ns["_azbatch"]
        (create,) = [r for r in azure_env.requests() if r["method"] == "POST" and r["path"] == f"/jobs/{run.id}/tasks"]
        options[vm] = create["body"]["containerSettings"]["containerRunOptions"]
    assert options["Standard_HB120rs_v3"] == f"--network host --shm-size 8g {INFINIBAND_OPTIONS}"
    assert options["Standard_D2s_v3"] == "--network host --shm-size 8g"
