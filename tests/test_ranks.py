"""The pieces of a distributed run that decide, with plain data: the merged log's prefixes, which rank
to blame, each rank's status from the nodes' states, the node supervisor's start deadline."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace

import pytest

from batchmagic.backends.azure.ranks import (
    APPLICATION,
    COORDINATION,
    SILENT_WHY,
    RankWatch,
    failed_instances,
    gone_causes,
    rank_statuses,
    requeue_causes,
    tail_lines,
    this_attempt,
)
from batchmagic.backends.base import TaskStatus, TaskSubmission
from batchmagic.distributed import is_main, local_rank, node_rank, rank, rank_environment, thread_budget, world
from batchmagic.protocol import NodeState, RankGroup, RankState, TaskError, TaskOutcome
from batchmagic.run.ranks import RankPrefixer, blame, failure_of
from batchmagic.run.state import LogRecord
from batchmagic.runner import ranks as supervisor


def test_rank_environment_and_helpers() -> None:
    env = rank_environment(node_rank=1, local_rank=1, nodes=2, procs_per_node=4, master_addr="10.0.0.4", master_port=7)
    assert env == {
        "MASTER_ADDR": "10.0.0.4", "MASTER_PORT": "7", "WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4", "NODE_RANK": "1",
    }  # fmt: skip
    assert (rank(env), world(env), local_rank(env), node_rank(env), is_main(env)) == (5, 8, 1, 1, False)
    assert (rank({}), world({}), is_main({})) == (0, 1, True)
    assert thread_budget(8, 4, {}) == {"OMP_NUM_THREADS": "2"}
    assert thread_budget(8, 4, {"OMP_NUM_THREADS": "3"}) == {} and thread_budget(8, 1, {}) == {}


def test_prefixes_go_where_lines_start() -> None:
    prefixer = RankPrefixer()
    records = [
        LogRecord(1.0, "stdout", "hel", "rank-1"),
        LogRecord(1.1, "stdout", "lo\nwor", "rank-1"),
        LogRecord(1.2, "stdout", "a\n", "rank-0"),
        LogRecord(1.3, "stdout", "ld\n", "rank-1"),
    ]
    text = "".join(r.text for r in prefixer.apply(records))
    assert text == "[rank 1] hello\n[rank 0] a\n[rank 1] world\n"  # two ranks at once: whole lines each
    assert prefixer.apply([LogRecord(2.0, "stderr", "no newline", "rank-3")]) == []
    assert [r.text for r in prefixer.flush()] == ["[rank 3] no newline"] and prefixer.flush() == []


def test_blame_takes_the_rank_that_failed_of_itself_first() -> None:
    statuses = {
        "rank-0": TaskStatus("rank-0", "completed", 143, ended=5.0, failure="stopped after rank-2 failed"),
        "rank-1": TaskStatus("rank-1", "completed", 0, ended=6.0),
        "rank-2": TaskStatus("rank-2", "completed", 1, ended=4.0, node="n2"),
    }
    crashed = TaskOutcome(ok=False, error=TaskError("ValueError", "bad", ("Traceback\n", "ValueError: bad\n")))
    outcomes = {
        "rank-0": (TaskOutcome(ok=False, phase="terminated"), "stopped after rank-2 failed"),
        "rank-1": (TaskOutcome(ok=True), ""),
        "rank-2": (crashed, ""),
    }
    failed = blame(["rank-0", "rank-1", "rank-2"], statuses, outcomes)
    assert failed is not None and failed.task_id == "rank-2"
    error = failure_of("run", failed, ["x"], lambda o: "")
    assert type(error).__name__ == "RemoteError" and error.task_id == "rank-2"  # type: ignore[attr-defined]
    killed = blame(["rank-2"], {"rank-2": TaskStatus("rank-2", "completed", -9, node="n2")}, {"rank-2": (None, "")})
    assert killed is not None
    line = str(failure_of("train", killed, ["step 1", "step 2"], lambda o: ""))
    assert line == "run train: rank 2 on n2 failed: it exited with code -9; its last lines: step 1 | step 2"
    assert blame(["rank-1"], statuses, outcomes) is None


def test_rank_statuses_from_the_nodes_states() -> None:
    sub = TaskSubmission("r", "r", [f"rank-{k}" for k in range(4)], {}, "D2", 60, nodes=2, procs_per_node=2)
    states = [
        NodeState(0, "tvm-a", "10.0.0.4", (RankState(0, 1.0, 11), RankState(1, 1.0, 12))),
        NodeState(1, "tvm-b", "10.0.0.5", (RankState(2, 1.0, 13, code=-9, ended=3.0), RankState(3, 1.0, 14))),
    ]
    running = rank_statuses(sub, TaskStatus("rank-0", "running"), states)
    assert [s.state for s in running.values()] == ["running", "running", "completed", "running"]
    assert running["rank-2"].failure == "the task process was killed by SIGKILL"
    assert running["rank-3"].node == "tvm-b (node 1)"
    ended = rank_statuses(sub, TaskStatus("rank-0", "completed", 1, ended=4.0), [states[0], None])
    assert ended["rank-0"].failure.startswith("stopped after") and ended["rank-2"].failure.startswith("its node never")


def test_a_node_to_blame_is_the_cause_and_the_ranks_still_running_stopped_after_it() -> None:
    """The task ended while ranks ran: the ranks of a node the primary found silent (its ``lost``) or whose
    instance failed are the cause; the others, rank 0 included, stopped after its first rank."""
    sub = TaskSubmission("r", "r", [f"rank-{k}" for k in range(4)], {}, "D2", 60, nodes=2, procs_per_node=2)
    primary = NodeState(0, "tvm-a", "10.0.0.4", (RankState(0, 1.0, 11, code=-15, stopped=True, after=2),), lost=(1,))
    primary = replace(primary, ranks=(*primary.ranks, RankState(1, 1.0, 12)))
    other = NodeState(1, "tvm-b", "10.0.0.5", (RankState(2, 1.0, 13), RankState(3, 1.0, 14)), beat=7)
    ended = TaskStatus("rank-0", "completed", 1, ended=4.0, failure="FailureExitCode: the task failed")
    got = rank_statuses(sub, ended, [primary, other])
    assert got["rank-2"].failure == got["rank-3"].failure == f"{SILENT_WHY} (the node's ranks: 2-3)"
    assert got["rank-0"].failure == got["rank-1"].failure == "stopped after rank-2 failed"
    why = rank_statuses(sub, ended, [replace(primary, lost=()), other], {1: "its node's part failed"})
    assert (
        why["rank-2"].failure == "its node's part failed (the node's ranks: 2-3)"
        and why["rank-1"].failure == "stopped after rank-2 failed"
    )
    # No node to blame: the task's own words (never each rank's "another rank failed" with none failed).
    bare = rank_statuses(sub, replace(ended, exit_code=None), [replace(primary, lost=()), other])
    assert bare["rank-1"].failure == "FailureExitCode: the task failed"


def test_failed_instances_name_the_node_and_the_coordination_command() -> None:
    class Sub:
        def __init__(self, state: str, code: int | None, node_id: str = "tvm-b") -> None:
            self.id, self.state, self.exit_code, self.failure_info = 1, state, code, None
            self.node_info = type("Info", (), {"node_id": node_id})()

    assert failed_instances([Sub("running", None)], {0: "tvm-a", 1: "tvm-b"}, 2) == {}
    ((why, _sub),) = failed_instances([Sub("completed", 137)], {0: "tvm-a", 1: "tvm-b"}, 2).values()
    assert why == "its node's part of the task failed (exit code 137)"
    sub = Sub("completed", 1)
    sub.failure_info = type("Failure", (), {"code": "TaskEnded", "message": "the node rebooted"})()
    assert failed_instances([sub], {1: "tvm-b"}, 2)[1][0].endswith("(exit code 1, TaskEnded: the node rebooted)")
    # A node that never wrote its state: the one node without one.
    assert list(failed_instances([Sub("completed", 1, "tvm-x")], {0: "tvm-a", 1: "tvm-b"}, 3)) == [2]
    assert failed_instances([Sub("completed", 1, "tvm-x")], {0: "tvm-a"}, 3) == {}  # two without: unknown
    assert tail_lines("a\n\nb\nc\nd\n") == "; its node said: b | c | d" and tail_lines("") == ""
    assert "--coordinate" in COORDINATION and "go" in APPLICATION and "code" in APPLICATION


def test_the_client_finds_a_silent_node_by_its_own_clock() -> None:
    watch = RankWatch()
    beating = [NodeState(0, "a", "", beat=3), NodeState(1, "b", "", beat=5), NodeState(2, "c", "", beat=0)]
    assert watch.silent(beating, 100.0) == []
    assert watch.silent([replace(beating[0], beat=4), *beating[1:]], 105.0) == []
    assert watch.silent([replace(beating[0], beat=9), *beating[1:]], 110.5) == [1]  # node 1 still at 5
    assert watch.silent([None, replace(beating[1], done=True), beating[2]], 111.0) == []  # done, or no beat
    assert watch.nodes == {0: "a", 1: "b", 2: "c"}
    late = RankWatch()
    late.silent(beating, 100.0)
    assert late.silent(beating, 130.0) == []  # the client's own gap: the count starts again
    assert late.silent(beating, 135.0) == []
    assert late.silent(beating, 140.5) == [0, 1]


def test_a_requeue_names_the_node_that_left() -> None:
    nodes = {0: "tvm-a", 1: "tvm-b"}
    assert list(requeue_causes(nodes, {"tvm-a": "running", "tvm-b": ""})) == [1]
    assert requeue_causes(nodes, {"tvm-a": "rebooting", "tvm-b": "idle"})[0].endswith("its node is rebooting")
    assert list(requeue_causes(nodes, {"tvm-a": "idle"})) == [0]  # none named: the primary's
    # Once the run has ended its auto pool lets every node go: only a node that broke is named then.
    assert gone_causes(nodes, {"tvm-a": "leavingpool", "tvm-b": "rebooting"}, "", left=False) == {
        1: "its node is rebooting"
    }


def test_the_primary_gives_up_on_a_node_that_never_starts(monkeypatch) -> None:
    group = RankGroup("r", nodes=3, procs_per_node=2, master_port=6105, specs=("",) * 6, states=("",) * 3)
    primary = supervisor.Supervisor(group, 0, "10.0.0.4", "10.0.0.4", "tvm-a")
    seen = [NodeState(1, "tvm-b", "10.0.0.5", (RankState(2, 1.0), RankState(3, 1.0)))]
    assert primary._never_started(seen) == []  # within the deadline
    primary.born = time.monotonic() - supervisor.START_TIMEOUT - 1
    assert primary._never_started(seen) == [2]
    assert primary._never_started([*seen, NodeState(2, "tvm-c", "10.0.0.6")]) == []


def test_node_ranks_put_the_primary_first_wherever_the_host_list_has_it() -> None:
    """Batch does not promise the primary comes first in AZ_BATCH_HOST_LIST: the primary (the host of
    AZ_BATCH_MASTER_NODE) is node rank 0 and the others keep the list's order, the same on every node."""
    hosts = ["127.0.91.3", "127.0.91.2", "127.0.91.4"]
    order = supervisor.node_order(hosts, "127.0.91.2")
    assert order == ["127.0.91.2", "127.0.91.3", "127.0.91.4"]
    assert supervisor.node_order(hosts, "10.0.0.9") == hosts  # a master not in the list: the list as it is
    rank0, held0 = supervisor.claim_node(order, True, 0)
    rank1, held1 = supervisor.claim_node(order, False, 0)
    try:
        assert (rank0, rank1) == (0, 1)
        assert held0 is not None and held0.getsockname()[0] == "127.0.91.2"
        assert held1 is not None and held1.getsockname()[0] == "127.0.91.3"
    finally:
        for held in (held0, held1):
            if held is not None:
                held.close()


def test_a_node_waits_for_its_address_held_by_the_previous_tasks_supervisor() -> None:
    """The next run's node starts while the previous run's supervisor there still holds its address (killed
    with its task, not yet gone): the node claims it once it is free, instead of failing the run."""
    import socket
    import threading

    port = supervisor.claim_node(["127.0.92.2", "127.0.92.3"], False, 0)[1]
    assert port is not None
    number = port.getsockname()[1]
    port.close()
    stale = socket.socket()
    stale.bind(("127.0.92.3", number))
    threading.Timer(0.3, stale.close).start()
    rank, held = supervisor.claim_node(["127.0.92.2", "127.0.92.3"], False, number, patience=10)
    try:
        assert rank == 1 and held is not None and held.getsockname() == ("127.0.92.3", number)
    finally:
        if held is not None:
            held.close()
    with pytest.raises(SystemExit, match="each in use"):
        blocker = socket.socket()
        blocker.bind(("127.0.92.3", number))
        try:
            supervisor.claim_node(["127.0.92.2", "127.0.92.3"], False, number, patience=0.2)
        finally:
            blocker.close()


def test_an_earlier_attempts_node_states_do_not_count(tmp_path) -> None:
    """After a requeue every instance runs again: the client keeps only states whose supervisor started after
    the requeue; a node other than the primary ignores a primary state from well before its own supervisor
    (this attempt's supervisors start together, the primary's possibly a moment first)."""
    old = NodeState(0, "tvm-a", "10.0.0.4", (RankState(0, 1.0, 11, code=0, ended=2.0),), done=True, since=1.0)
    new = NodeState(1, "tvm-b", "10.0.0.5", (RankState(1, 6.0, 12),), since=6.0)
    assert this_attempt([old, new, None], None) == [old, new, None]
    assert this_attempt([old, new, None], 5.0) == [None, new, None]
    states = tuple((tmp_path / f"node-{n}.json").as_uri() for n in range(2))
    group = RankGroup("r", nodes=2, procs_per_node=1, master_port=6105, specs=("", ""), states=states)
    (tmp_path / "node-0.json").write_bytes(replace(old, ranks=(RankState(0, 1.0, 11, code=1, ended=2.0),)).to_json())
    other = supervisor.Supervisor(group, 1, "10.0.0.5", "10.0.0.4", "tvm-b")
    assert other.others() == []  # the primary's failure is the previous attempt's: nothing to stop for
    stale = replace(old, since=other.state.since - supervisor.ATTEMPT_SKEW - 1)
    (tmp_path / "node-0.json").write_bytes(stale.to_json())
    assert other.others() == []
    for since in (other.state.since + 1, other.state.since - 2):  # this attempt's primary started after, or just before
        fresh = replace(old, since=since)
        (tmp_path / "node-0.json").write_bytes(fresh.to_json())
        assert other.others() == [fresh]


def test_the_primary_reads_no_other_node_until_its_application_command_starts(tmp_path) -> None:
    """Started by its coordination command, the primary's supervisor reads the other nodes' states only once
    the application command has said go (every coordination command has ended: their states are this
    attempt's); the start deadline counts from then."""
    states = tuple((tmp_path / f"node-{n}.json").as_uri() for n in range(2))
    group = RankGroup("r", nodes=2, procs_per_node=1, master_port=6105, specs=("", ""), states=states)
    stale = NodeState(1, "tvm-b", "10.0.0.5", (RankState(1, 1.0, 12, code=1, ended=2.0),), since=1.0)
    (tmp_path / "node-1.json").write_bytes(stale.to_json())
    primary = supervisor.Supervisor(group, 0, "10.0.0.4", "10.0.0.4", "tvm-a")
    primary.gate = tmp_path / supervisor.GO_FILE
    primary.born = time.monotonic() - supervisor.START_TIMEOUT - 1
    assert primary.others() == [] and primary._never_started([]) == []
    primary.gate.touch()
    assert primary.others() == [stale] and primary.gate is None
    assert primary._never_started([]) == []  # the deadline starts now


def test_a_node_keeps_writing_its_first_state_until_the_store_takes_it(tmp_path, monkeypatch) -> None:
    """The coordination command ends once the node's ranks started: their state must be in the store by
    then (the primary reads it next), so a write that fails is tried again, not left to the ranks' end."""
    states = tuple((tmp_path / f"node-{n}.json").as_uri() for n in range(2))
    group = RankGroup("r", nodes=2, procs_per_node=1, master_port=6105, specs=("", ""), states=states)
    node = supervisor.Supervisor(group, 1, "10.0.0.5", "10.0.0.4", "tvm-b")
    answers = [False, False, True]
    monkeypatch.setattr(node, "publish", lambda: answers.pop(0))
    monkeypatch.setattr(supervisor, "_fork_runner", lambda spec, cwd, env, fetched=None: type("P", (), {"pid": 42})())
    monkeypatch.setattr(supervisor.time, "sleep", lambda seconds: None)
    node.start(tmp_path)
    assert answers == [] and [r.pid for r in node.state.ranks] == [42]


def test_the_coordination_commands_arguments_are_read_as_argparse_reads_them() -> None:
    """The node's own command line is read without argparse, to the same effect; any other form is argparse's."""
    assert supervisor.parse_args(["--group", "g.json"]) == ("g.json", None)
    assert supervisor.parse_args(["--group", "g.json", "--coordinate", "/d"]) == ("g.json", "/d")
    assert supervisor.parse_args(["--coordinate=/d", "--group=g.json"]) == ("g.json", "/d")
    with pytest.raises(SystemExit):
        supervisor.parse_args(["--group", "--coordinate"])  # argparse: --group expects one argument
    with pytest.raises(SystemExit):
        supervisor.parse_args(["--coordinate", "/d"])  # argparse: --group is required


def test_stop_kills_a_rank_that_sits_out_its_sigterm(tmp_path, monkeypatch) -> None:
    """SIGTERM to each rank; SIGKILL, after GRACE, to one still running."""
    ready = tmp_path / "ready"
    deaf = (
        "import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    codes = ("import time; time.sleep(60)", deaf)
    pids = [os.posix_spawn(sys.executable, [sys.executable, "-c", code], os.environ) for code in codes]
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    group = RankGroup("r", nodes=1, procs_per_node=2, master_port=6105, specs=("", ""), states=("",))
    node = supervisor.Supervisor(group, 0, "10.0.0.4", "10.0.0.4", "tvm-a")
    node.procs = {rank: supervisor._Forked(pid) for rank, pid in enumerate(pids)}
    monkeypatch.setattr(supervisor, "GRACE", 0.5)
    node.stop()
    assert [proc.poll() for proc in node.procs.values()] == [-signal.SIGTERM, -signal.SIGKILL]


def test_the_primary_finds_a_node_whose_heartbeat_stands_still(tmp_path, monkeypatch) -> None:
    """The primary's supervisor judges another node's silence by its own clock, from the moment it first read
    the node's current beat: past SILENT seconds the node is lost. A read that fails, or a pause of its own
    loop, starts the count again; a node whose ranks have all ended, or that does not beat, is never lost."""
    states = tuple((tmp_path / f"node-{n}.json").as_uri() for n in range(2))
    group = RankGroup("r", nodes=2, procs_per_node=1, master_port=6105, specs=("", ""), states=states)
    primary = supervisor.Supervisor(group, 0, "10.0.0.4", "10.0.0.4", "tvm-a")
    clock = [100.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: clock[0])

    def look(beat: int, **fields: bool) -> list[int]:
        other = NodeState(1, "tvm-b", "10.0.0.5", (RankState(1, 1.0),), beat=beat, **fields)
        (tmp_path / "node-1.json").write_bytes(other.to_json())
        return primary._silent(primary.others())

    assert look(3) == []
    for _ in range(10):  # one look a second, the beat standing still
        clock[0] += 1.0
        assert look(3) == []
    clock[0] += 1.0
    assert look(3) == [1]
    assert look(4) == []  # it beat again
    clock[0] += 30.0  # this loop paused (a slow store): no silence was seen meanwhile
    assert look(4) == []
    clock[0] += 1.5
    assert look(4, done=True) == [] and look(0) == []
    (tmp_path / "node-1.json").unlink()
    for _ in range(11):  # unreadable: nothing is known, nothing is counted
        clock[0] += 1.0
        assert primary._silent(primary.others()) == []
    assert look(4) == []  # readable again, the same beat: the count starts from its last failed read


def test_a_node_writes_its_last_state_through_a_storage_outage(monkeypatch) -> None:
    """A node whose ranks have ended beats no more: its last state ("done") must reach the store, or the
    primary would take the node, silent with its ranks "running", for lost and fail a run that went well."""
    group = RankGroup("r", nodes=2, procs_per_node=1, master_port=6105, specs=("", ""), states=("s0", "s1"))
    node = supervisor.Supervisor(group, 1, "10.0.0.5", "10.0.0.4", "tvm-b")
    node.state = replace(node.state, ranks=(RankState(1, 1.0),))
    node.procs = {1: type("Done", (), {"poll": lambda self: 0})()}  # type: ignore[dict-item]
    written: list[NodeState] = []
    failures = [OSError("storage away")] * 3

    class Channel:
        def __init__(self, url: str) -> None:
            self.url = url

        def read(self) -> bytes:
            raise KeyError(self.url)  # the primary's state: not there

        def write(self, data: bytes) -> None:
            if failures:
                raise failures.pop()
            written.append(NodeState.from_json(data))

    monkeypatch.setattr(supervisor, "open_channel", Channel)
    monkeypatch.setattr(supervisor.time, "sleep", lambda seconds: None)
    assert node.watch() == 0
    assert not failures and written[-1].done and written[-1].ranks[0].code == 0
