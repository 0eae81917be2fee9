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
  each ended); the task's ``subtasksinfo`` tells a node that was lost.

Pure builders and readers: :class:`~batchmagic.backends.azure.backend.AzureBackend` makes the calls.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from batchmagic.backends.base import STOPPED_AFTER, TaskStatus, TaskSubmission, exit_reason
from batchmagic.distributed import DEFAULT_SHM_SIZE, rank_id
from batchmagic.protocol import NodeState

__all__ = [
    "APPLICATION",
    "as_multi_instance",
    "batch_view",
    "CONTAINER_OPTIONS",
    "COORDINATION",
    "GROUP_FILE",
    "lost_node",
    "rank_statuses",
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


def rank_statuses(
    submission: TaskSubmission, task: TaskStatus, states: Iterable[NodeState | None]
) -> dict[str, TaskStatus]:
    """Each rank's status from the Batch task's (``task``) and the nodes' states: pending until its node's
    supervisor started it, then running, then completed with its code; a rank that never said it ended
    takes the task's end (the primary ended it, or Batch did)."""
    by_rank = {}
    for state in states:
        if state is None:
            continue
        for rank in state.ranks:
            by_rank[rank.rank] = (state, rank)
    out = {}
    for k, tid in enumerate(submission.task_ids):
        status = TaskStatus(tid, state="pending")
        found = by_rank.get(k)
        if found is not None:
            node, rank = found
            status.node = f"{node.node_id or node.address} (node {node.node_rank})"
            status.started = rank.started
            status.state = "running"
            if rank.code is not None:
                status.state, status.exit_code, status.ended = "completed", rank.code, rank.ended
                if rank.stopped and rank.after is not None:
                    status.failure = f"{STOPPED_AFTER} {rank_id(rank.after)} failed"
                else:
                    status.failure = exit_reason(rank.code)
        if task.state == "completed" and status.state != "completed":
            status.state, status.ended = "completed", task.ended
            status.exit_code = status.exit_code if status.exit_code is not None else task.exit_code
            if found is None:  # its node's supervisor never wrote a state: it never started
                status.failure = "its node never started it (see ranks.txt in that node's task directory)"
            elif task.exit_code not in (0, None):
                status.failure = f"{STOPPED_AFTER} another rank failed"
            else:
                status.failure = task.failure or "its node ended before it did (the primary ended, or Batch ended it)"
        out[tid] = status
    return out


def lost_node(subtasks: Iterable[Any]) -> str:
    """A subtask (a node other than the primary) that failed while the task runs: one line, else ""."""
    for sub in subtasks:
        state = str(getattr(sub.state, "value", sub.state) or "")
        if state == "completed" and (sub.exit_code or 0) != 0:
            node = sub.node_info.node_id if sub.node_info is not None else f"instance {sub.id}"
            info = sub.failure_info
            why = f"{info.code}: {info.message}" if info is not None else f"exit code {sub.exit_code}"
            return f"node {node} (instance {sub.id}) of the run failed ({why})"
    return ""
