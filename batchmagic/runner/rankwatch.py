"""The local backend's watcher of a distributed run's ranks: ``python -m batchmagic.runner.rankwatch TASK_DIR...``.

A local distributed run's ranks are processes of this machine, each in a session of its own, started by
the kernel that submitted the run. That kernel ends the others as soon as one fails; but the kernel may be
gone (closed, restarted, killed) while the ranks run on, and then nothing would: the other ranks would wait
for the dead one in their next collective (PyTorch's timeout is 30 minutes), with or without a client
attached. So the kernel also starts this watcher, in a session of its own, which outlives it, as each Azure
node's supervisor (:mod:`batchmagic.runner.ranks`) outlives the command that started it. It:

1. reads each rank's ``pid`` file (pid, start ticks, start time) in its task directory;
2. looks at the ranks every ``POLL`` seconds: a rank that ended (its process gone, or a zombie) with no
   result, or a result that says the cell failed, is a failure;
3. on the first failure, writes ``stopped-after`` (``stopped after rank-k failed``) in each other rank's task
   directory still running (the backend shows it as that rank's reason, whoever watches), then SIGTERMs
   every such rank's process group at once, gives them one grace period together, and SIGKILLs what is
   left, with what they started in sessions of their own (found by their working directory) and their
   containers (``--container``);
4. exits once every rank has ended, or at once when the run is cancelled (``cancelled`` in the run's
   directory: whoever cancels ends the ranks).

Standard library only, as the rest of the runner.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from batchmagic.runner.reap import alive, end_processes_with

__all__ = ["CANCELLED_FILE", "STOPPED_FILE", "Rank", "first_failure", "main", "stopped_note"]

POLL = 0.2  # seconds between looks at the ranks
GRACE = 3.0  # seconds the stopped ranks have, together, to write their results before SIGKILL
#: In a rank's task directory: why the watcher stopped it. In the run's directory: the run was cancelled.
STOPPED_FILE, CANCELLED_FILE = "stopped-after", "cancelled"
#: How a stopped rank's reason begins (batchmagic.backends.base.STOPPED_AFTER, which this module may not import).
_STOPPED_AFTER = "stopped after"


@dataclass
class Rank:
    """One rank as its task directory says: its runner's pid and start ticks, its container (if any)."""

    task_id: str
    dir: Path
    pid: int
    ticks: int
    container: str = ""

    def alive(self) -> bool:
        """Whether the rank's runner runs: the same process (its start ticks), not a zombie; where there is
        no /proc (macOS), whether its pid is taken."""
        return alive(self.pid, self.ticks)

    def failed(self) -> bool:
        """An ended rank failed unless its result says the cell succeeded (a killed runner writes none)."""
        try:
            from batchmagic.protocol import TaskOutcome

            return not TaskOutcome.from_bytes((self.dir / "result").read_bytes()).ok
        except Exception:  # noqa: BLE001 - whatever is there, it is no successful result
            return True


def first_failure(ranks: list[Rank], ended: dict[str, bool]) -> Rank | None:
    """The first rank (in rank order) that ended and failed; ``ended`` maps a task id to whether it failed."""
    return next((rank for rank in ranks if ended.get(rank.task_id)), None)


def stopped_note(task_dir: Path) -> str:
    """Why the watcher stopped the rank of ``task_dir`` ("" if it did not)."""
    try:
        return (task_dir / STOPPED_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def read_ranks(run_dir: Path, task_ids: list[str], containers: dict[str, str]) -> list[Rank]:
    ranks = []
    for task_id in task_ids:
        pid, ticks, _started = (run_dir / task_id / "pid").read_text().split()
        ranks.append(Rank(task_id, run_dir / task_id, int(pid), int(ticks), containers.get(task_id, "")))
    return ranks


def stop(failed: Rank, others: list[Rank]) -> None:
    """End ``others`` because ``failed`` failed: the note first (read by whoever watches), then SIGTERM to
    every group at once, one grace period for all, SIGKILL to what is left."""
    for rank in others:
        with contextlib.suppress(OSError):
            note = rank.dir / STOPPED_FILE
            if not note.exists():
                note.write_text(f"{_STOPPED_AFTER} {failed.task_id} failed", encoding="utf-8")
    _signal_groups(others, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while any(rank.alive() for rank in others) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_groups([rank for rank in others if rank.alive()], signal.SIGKILL)
    for rank in others:  # what a rank started in a session of its own names its working directory
        end_processes_with("AZ_BATCH_TASK_WORKING_DIR", str(rank.dir / "wd"))
    names = [rank.container for rank in others if rank.container]
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True, timeout=60, check=False)


def _signal_groups(ranks: list[Rank], signum: int) -> None:
    for rank in ranks:
        if rank.alive():  # its pid is still its own: the group it leads is the rank's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(rank.pid, signum)


def watch(run_dir: Path, ranks: list[Rank]) -> int:
    """Until every rank has ended (0), or the run is cancelled (0); 1 when it ended ranks after a failure."""
    ended: dict[str, bool] = {}
    while True:
        if (run_dir / CANCELLED_FILE).exists():
            return 0
        for rank in ranks:
            if rank.task_id not in ended and not rank.alive():
                ended[rank.task_id] = rank.failed()
        failed = first_failure(ranks, ended)
        if failed is not None:
            others = [rank for rank in ranks if rank.task_id not in ended and not stopped_note(rank.dir)]
            if others and not (run_dir / CANCELLED_FILE).exists():
                stop(failed, others)
            return 1
        if len(ended) == len(ranks):
            return 0
        time.sleep(POLL)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    run_dir, given = Path(args[0]), args[1:]
    task_ids = [arg.split("=", 1)[0] for arg in given]
    containers = {arg.split("=", 1)[0]: arg.split("=", 1)[1] for arg in given if "=" in arg}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the kernel's terminal going away is no reason to stop
    return watch(run_dir, read_ranks(run_dir, task_ids, containers))


if __name__ == "__main__":
    sys.exit(main())
