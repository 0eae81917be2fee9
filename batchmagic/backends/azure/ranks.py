"""A distributed run on Azure Batch: one multi-instance task, as the service documents it.

- The pool: ``enableInterNodeCommunication`` and ``taskSlotsPerNode`` 1 (else the task stays active),
  dedicated nodes only, at most 100 of them.
- The task (id ``rank-0``): ``multiInstanceSettings.numberOfInstances`` = nodes, the run's
  :class:`~batchmagic.protocol.RankGroup` as a common resource file (every node gets it in
  ``AZ_BATCH_TASK_SHARED_DIR``). The coordination command runs on every node and must exit 0: it starts
  the node supervisor (:mod:`batchmagic.runner.ranks`), which starts the node's ranks, writes the node's
  state and watches on in the background, so every node's ranks start at once. The application command
  (the primary only, once every coordination command has ended) tells the primary's supervisor to watch
  every node, and ends with its verdict: non-zero within seconds when a rank dies anywhere (the task
  fails, Batch ends the subtasks).
- Containers run on the host network (NCCL does not work across Docker's bridge) with a ``/dev/shm``
  NCCL can live with (Docker's is 64 MB).
- Each rank's state for the panel comes from the nodes' states in the store (which rank runs where, how
  each ended). While the task runs, a node whose heartbeat stands still (:class:`RankWatch`), that the
  primary found lost, whose subtask failed, or a requeue of the task ends the run, that node's ranks blamed;
  once the task has ended its ``subtasksinfo`` is read once, and the ranks of the node whose instance failed
  (with its ``ranks.txt``), that is gone, or that never wrote its state are the cause, those still running
  stopped after them.

Pure builders and readers: :class:`~batchmagic.backends.azure.backend.AzureBackend` makes the calls.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from batchmagic.backends.base import STOPPED_AFTER, TaskStatus, TaskSubmission, exit_reason
from batchmagic.distributed import DEFAULT_SHM_SIZE, rank_id
from batchmagic.protocol import SILENT, NodeState

__all__ = [
    "APPLICATION",
    "as_multi_instance",
    "batch_view",
    "CONTAINER_OPTIONS",
    "COORDINATION",
    "GROUP_FILE",
    "a_rank_failed",
    "failed_instances",
    "gone_causes",
    "RankWatch",
    "rank_statuses",
    "primary_lost",
    "requeue_causes",
    "SILENT_WHY",
    "tail_lines",
    "this_attempt",
]

#: The group's file name in each node's task directory (``AZ_BATCH_TASK_SHARED_DIR``).
GROUP_FILE = "group.json"
_SUPERVISOR = 'python3 -P -m batchmagic.runner.ranks --group "$AZ_BATCH_TASK_SHARED_DIR/group.json"'
#: The node's status directory ("$d"): beside the task's files, or in /tmp when this user cannot write there
#: (a fallback: the task's user owns them, and the container runs as that user). The supervisor's output is
#: "$d/ranks.txt". Whether it can be written is tried with the shell's own ``true`` (not ``touch``: one
#: process fewer on the start's path).
_STATUS_DIR = (
    'd="$AZ_BATCH_TASK_SHARED_DIR"; '
    'if ! true 2>/dev/null >> "$d/ranks.txt"; then d="/tmp/batchmagic-$AZ_BATCH_JOB_ID-$AZ_BATCH_NODE_ID"; '
    'mkdir -p "$d"; fi; '
)
#: Every node: the supervisor starts the node's ranks, writes its state to the store and exits 0, watching
#: them on in the background (the primary's application command waits for every coordination command to
#: end: then every node's state is this attempt's).
COORDINATION = "/bin/sh -c " + shlex.quote(f'{_STATUS_DIR}exec {_SUPERVISOR} --coordinate "$d" > "$d/ranks.txt" 2>&1')
#: The primary: let its supervisor read the other nodes' states (go), wait for its verdict (code) while it
#: lives, and end with it, its output on stderr as the task's.
APPLICATION = "/bin/sh -c " + shlex.quote(
    f'{_STATUS_DIR}touch "$d/go"; pid=$(cat "$d/supervisor.pid"); '
    'while [ ! -e "$d/code" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; '
    'cat "$d/ranks.txt" >&2; '
    'if [ -e "$d/code" ]; then exit "$(cat "$d/code")"; fi; '
    'echo "batchmagic: the primary node\'s supervisor ended without a verdict (killed?)" >&2; exit 1'
)
#: Why a silent node's ranks ended the run (the primary's supervisor or the client found its heartbeat still).
SILENT_WHY = f"its node went silent: no heartbeat for {SILENT:.0f} s (the node hung, or was lost with its VM)"
#: Lines of a failed node's ranks.txt (its supervisor's own output) the run's error carries.
TAIL_LINES = 3
#: Options of each node's container: the host's network and a large /dev/shm.
CONTAINER_OPTIONS = f"--network host --shm-size {DEFAULT_SHM_SIZE}"


def as_multi_instance(m: Any, task: Any, submission: TaskSubmission, group_url: str) -> None:
    """Make ``task`` (a ``BatchTaskCreateOptions`` of the SDK's models ``m``) the run's multi-instance task."""
    task.command_line = APPLICATION
    task.multi_instance_settings = m.MultiInstanceSettings(
        number_of_instances=submission.nodes,
        coordination_command_line=COORDINATION,
        common_resource_files=[m.ResourceFile(http_url=group_url, file_path=GROUP_FILE)],
    )
    container = task.container_settings
    if container is not None:
        given = container.container_run_options or ""
        if "--shm-size" not in given:  # the task's own options (gpus.container_run_options) may hold them
            container.container_run_options = f"{given} {CONTAINER_OPTIONS}".strip()


def batch_view(submission: TaskSubmission) -> TaskSubmission:
    """What Batch runs of a distributed run: one task, ``rank-0`` (the ranks are its instances' processes)."""
    first = submission.task_ids[0]
    return replace(submission, task_ids=[first], spec_keys={first: submission.spec_keys[first]})


def this_attempt(states: Iterable[NodeState | None], requeued: float | None) -> list[NodeState | None]:
    """The nodes' states of the task's current attempt: after a requeue (a node restarted: Batch runs every
    instance again), a state whose supervisor started before the requeue (``lastRequeueTime``) is the
    previous attempt's, and its node has not written this attempt's yet (None)."""
    if requeued is None:
        return list(states)
    return [s if s is not None and s.since >= requeued else None for s in states]


@dataclass
class RankWatch:
    """What the client keeps of a distributed run between its polls: the nodes' heartbeats as it read them
    (node rank -> (beat, when first read, on the client's monotonic clock): the nodes' clocks are never
    compared), the task's requeue time when it began to watch, the node ids the states named, and the nodes
    found to have ended the run (node rank -> why)."""

    heard: dict[int, tuple[int, float]] = field(default_factory=dict)
    looked: float | None = None  # the client's clock at the last read of the states
    requeue: float | None = None
    watching: bool = False  # ``requeue`` is set: the first poll has been made
    nodes: dict[int, str] = field(default_factory=dict)
    causes: dict[int, str] = field(default_factory=dict)
    instances_read: bool = False  # the subtasks were read once after the task ended

    def silent(self, states: Iterable[NodeState | None], now: float) -> list[int]:
        """The nodes whose heartbeat has stood still for :data:`SILENT` seconds while their ranks run. A gap
        between the client's own reads longer than that (a laptop asleep, a slow store) judges no one: the
        count starts again."""
        if self.looked is not None and now - self.looked > SILENT:
            self.heard = {node: (beat, now) for node, (beat, _) in self.heard.items()}
        self.looked = now
        out = []
        for state in states:
            if state is None:
                continue
            node = state.node_rank
            self.nodes[node] = state.node_id or state.address
            if state.done or not state.beat:  # ended, or a supervisor that does not beat (an older one)
                continue
            beat, since = self.heard.get(node, (-1, now))
            if beat != state.beat:
                self.heard[node] = (state.beat, now)
            elif now - since > SILENT:
                out.append(node)
        return out


def rank_statuses(
    submission: TaskSubmission,
    task: TaskStatus,
    states: Sequence[NodeState | None],
    causes: Mapping[int, str] | None = None,
) -> dict[str, TaskStatus]:
    """Each rank's status from the Batch task's (``task``) and the nodes' states: pending until its node's
    supervisor started it, then running, then completed with its code. A rank that never said it ended takes
    the task's end: the ranks of a node in ``causes`` (node rank -> why: lost, silent, its instance failed) or
    in the primary's ``lost`` are the run's cause; the others stopped after the first of them."""
    causes = primary_lost(states) | dict(causes or {})
    if task.state == "completed":  # a node that never wrote its state never started its ranks: a cause too
        causes = {node: _NEVER for node, state in enumerate(states) if state is None} | causes
    ppn = submission.procs_per_node
    first = min((node * ppn for node in causes), default=None)
    if ppn > 1:  # the line names one rank: say which others ran on that node
        causes = {n: f"{why} (the node's ranks: {n * ppn}-{n * ppn + ppn - 1})" for n, why in causes.items()}
    by_rank = {rank.rank: (state, rank) for state in states if state is not None for rank in state.ranks}
    failed = a_rank_failed(states)
    out = {}
    for k, tid in enumerate(submission.task_ids):
        status = TaskStatus(tid, state="pending")
        found = by_rank.get(k)
        if found is not None:
            _started(status, *found)
        if task.state == "completed" and status.state != "completed":
            status.state, status.ended = "completed", task.ended
            status.exit_code = status.exit_code if status.exit_code is not None else task.exit_code
            status.failure = _ended_with_task(task, found is not None, causes.get(k // ppn), first, failed)
        out[tid] = status
    return out


_NEVER = "its node never started it (see ranks.txt in that node's task directory)"


def primary_lost(states: Sequence[NodeState | None]) -> dict[int, str]:
    """The nodes the primary's supervisor ended the run for (node rank -> why): silent, or never started."""
    primary = states[0] if states else None
    return {
        node: SILENT_WHY if node < len(states) and states[node] is not None else _NEVER
        for node in (primary.lost if primary is not None else ())
    }


def _started(status: TaskStatus, node: NodeState, rank: Any) -> None:
    status.node = f"{node.node_id or node.address} (node {node.node_rank})"
    status.started = rank.started
    status.state = "running"
    if rank.code is not None:
        status.state, status.exit_code, status.ended = "completed", rank.code, rank.ended
        if rank.stopped and rank.after is not None:
            status.failure = f"{STOPPED_AFTER} {rank_id(rank.after)} failed"
        else:
            status.failure = exit_reason(rank.code)


def _ended_with_task(task: TaskStatus, started: bool, cause: str | None, first: int | None, failed: bool) -> str:
    """Why a rank that never said it ended did: its node's cause, else it stopped after the first rank of a
    node to blame, or after the rank that failed of itself (``failed``), else what the task says."""
    if cause is not None:
        return cause
    if not started:
        return _NEVER
    if first is not None:
        return f"{STOPPED_AFTER} {rank_id(first)} failed"
    if failed and task.exit_code not in (0, None):
        return f"{STOPPED_AFTER} another rank failed"
    if task.failure:
        return task.failure
    if task.exit_code not in (0, None):
        return f"the task ended with exit code {task.exit_code} (its stderr.txt on the primary node says why)"
    return "its node ended before it did (the primary ended, or Batch ended it)"


def failed_instances(subtasks: Iterable[Any], nodes: Mapping[int, str], count: int) -> dict[int, tuple[str, Any]]:
    """The instances (subtasks: the nodes other than the primary) that failed: node rank -> (why, the
    subtask). A subtask names its node by id; ``nodes`` (node rank -> id, from the nodes' states) maps it to
    its rank. A failed node that never wrote its state is not in ``nodes``: it is the one node of the
    ``count`` without a state, when only one is."""
    by_id = {node_id: rank for rank, node_id in nodes.items()}
    missing = [rank for rank in range(1, count) if rank not in nodes]
    out: dict[int, tuple[str, Any]] = {}
    for sub in subtasks:
        state = str(getattr(sub.state, "value", sub.state) or "")
        if state != "completed" or (sub.exit_code or 0) == 0:
            continue
        node_id = sub.node_info.node_id if sub.node_info is not None else ""
        rank = by_id.get(node_id, missing[0] if len(missing) == 1 else None)
        if rank is None:
            continue
        info = sub.failure_info
        why = f"exit code {sub.exit_code}"
        if info is not None and info.code != "FailureExitCode":  # that one only says the exit code was not 0
            why += f", {info.code}: {info.message}"
        out[rank] = (f"its node's part of the task failed ({why})", sub)
    return out


#: A node's states (Batch's ``BatchNodeState``) that say it restarted or broke under its task.
BROKEN = frozenset(
    {"rebooting", "reimaging", "starting", "waitingforstarttask", "starttaskfailed", "unusable", "offline", "unknown"}
    | {"restarted"}  # batchmagic's own word: back up, but booted after the task started
)


def gone_causes(
    nodes: Mapping[int, str], node_states: Mapping[str, str], why: str, *, left: bool = True
) -> dict[int, str]:
    """The run's nodes that broke or are gone: node rank -> ``why`` and what became of its node (``node_states``:
    node id -> its state now, "" when it is no longer in the pool). ``left``: a node that left the pool counts
    (not once the run has ended: its auto pool then lets every node go)."""
    counted = BROKEN | ({"", "leavingpool", "preempted"} if left else {"preempted"})
    words = {"": "its node left the pool", "restarted": "its node restarted"}
    return {
        rank: why + words.get(node_states[node_id], f"its node is {node_states[node_id]}")
        for rank, node_id in sorted(nodes.items())
        if node_states.get(node_id, "idle") in counted
    }


def requeue_causes(nodes: Mapping[int, str], node_states: Mapping[str, str]) -> dict[int, str]:
    """The task was requeued while the client watched (a node restarted or was removed; Batch would run every
    instance again from the start): node rank -> why, for the nodes that are gone; the primary (node 0) when
    none can be named."""
    why = "Batch requeued the task to start every rank again: "
    return gone_causes(nodes, node_states, why) or {0: why + "one of its nodes restarted or left the pool"}


def a_rank_failed(states: Iterable[NodeState | None]) -> bool:
    """Whether a node's state says one of its ranks failed of itself (not stopped after another)."""
    return any(r.code not in (None, 0) and not r.stopped for s in states if s is not None for r in s.ranks)


def tail_lines(text: str, count: int = TAIL_LINES) -> str:
    """The last ``count`` non-empty lines of a node's ranks.txt, as one clause of the run's error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()][-count:]
    return f"; its node said: {' | '.join(lines)}" if lines else ""
