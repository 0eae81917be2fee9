"""What a runner's cell started must end with the run, whatever session it started it in.

A runner's process group holds what the cell started plainly, and the group is what the backends signal.
A process the cell starts in a session of its own (``Popen(..., start_new_session=True)``, a daemonised
server) leaves the group; when its parent ends it is re-parented to the nearest *subreaper* above it, else
to the PID namespace's init: a warm worker, the container's PID 1, which runs on. So:

- a forked runner makes itself a subreaper (:func:`become_subreaper`): what the cell leaves behind stays
  its descendant, and the runner's end kills all its descendants (:func:`end_descendants`);
- a warm worker makes itself a subreaper too (it is already one as a container's PID 1): what a runner
  killed outright (SIGKILL) left comes to it, and it kills any such process (:func:`end_orphans`);
- what a fresh runner killed outright left goes to init: the local backend finds it by the working
  directory its environment names, as every process of the task's does (:func:`end_processes_with`).

Only the standard library: the runner's side of a node worker imports this before anything heavy.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "alive",
    "become_subreaper",
    "children",
    "descendants",
    "end_descendants",
    "end_orphans",
    "end_processes_with",
    "family",
    "pid_taken",
    "processes_with",
    "signal_listed",
    "start_ticks",
    "TERM_GRACE",
]

_PR_SET_CHILD_SUBREAPER = 36

#: Seconds :func:`end_descendants` gives what the cell left between SIGTERM and SIGKILL. A process that
#: heeds SIGTERM ends in milliseconds, and the wait ends with it: only one that is slow to stop costs it.
#: That one is the reason for it: a server the cell started that writes into the notebook's folder (a
#: checkpoint, a database) needs a moment to flush what it holds, else the folder comes back torn. Kept well
#: under the 3 s a backend gives a runner after its own SIGTERM (the local backend's ``_GRACE_SECONDS``, a
#: node's ``ranks.GRACE``), so that a cancelled runner still writes its result and log before its SIGKILL.
TERM_GRACE = 2.0


def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (Linux 3.4+): True when it is one now."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command's name ([] when the process is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def start_ticks(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (/proc): with the pid, it names one process; 0 unknown."""
    fields = _stat(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def alive(pid: int, ticks: int = 0) -> bool:
    """Whether ``pid`` runs (not a zombie, and the same process when ``ticks`` says when it started)."""
    fields = _stat(pid)
    if not fields:
        return not sys.platform.startswith("linux") and pid_taken(pid)  # no /proc (macOS): the signal check
    return fields[0] not in ("Z", "X") and (not ticks or int(fields[19]) == ticks)


def pid_taken(pid: int) -> bool:
    """Whether a process holds ``pid`` (the signal check: any process, a zombie too, on any system)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children(pid: int) -> list[int]:
    """The living (not zombie) children of ``pid``, those of each of its threads."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for tid in tasks:
            found += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except OSError:  # gone, or a kernel without CONFIG_PROC_CHILDREN: every process's parent
        if not os.path.isdir("/proc"):  # macOS: no process table to read; the backends signal the group
            return []
        found = [int(e) for e in os.listdir("/proc") if e.isdigit() and _stat(int(e))[1:2] == [str(pid)]]
    return [c for c in found if _stat(c)[:1] not in ([], ["Z"], ["X"])]


def descendants(pid: int) -> list[int]:
    """The living descendants of ``pid``, parents before their children."""
    return [child for child, _ in family(pid)]


def family(pid: int) -> list[tuple[int, int]]:
    """The living descendants of ``pid`` as (pid, its parent's pid), parents before their children."""
    found: list[tuple[int, int]] = []
    todo = [(c, pid) for c in children(pid)]
    while todo:
        found += todo
        seen = {c for c, _ in found}
        todo = [(c, p) for p, _ in todo for c in children(p) if c not in seen]
    return found


def signal_listed(listed: Iterable[tuple[int, int]], signum: int) -> None:
    """Send ``signum`` to each (pid, parent) that :func:`family` listed, and only to that process: one that
    ended since may have left its pid to another. On Linux each is pinned by a pidfd, then checked to be
    still the child of the parent it was listed under (a pid taken by a stranger has another parent), and
    signalled through the pidfd, which names that process whatever happens to its pid. Where pidfds are
    missing (not Linux, a kernel before 5.3, a sandbox that refuses them): by pid, as ``kill`` does."""
    for pid, parent in listed:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # gone
        except (AttributeError, OSError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
            continue
        try:
            if _stat(pid)[1:2] == [str(parent)]:
                signal.pidfd_send_signal(pidfd, signum)
        except (ProcessLookupError, PermissionError):
            pass
        finally:
            os.close(pidfd)


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def end_descendants(grace: float = TERM_GRACE) -> None:
    """End every descendant of this process: SIGTERM (a server may shut down cleanly), then, after at most
    ``grace`` seconds, SIGKILL to what remains, again until none is left (a killed process's children come
    to this process when it is a subreaper, else to the next one above: the warm worker). Each signal goes
    to the process listed, never to one that took its pid since (:func:`signal_listed`)."""
    me = os.getpid()
    left = family(me)
    if not left:
        return
    signal_listed(left, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = family(me)
    for _ in range(50):  # a process that forks as fast as it is killed: bounded, not forever
        if not left:
            return
        signal_listed(left, signal.SIGKILL)
        time.sleep(0.01)
        left = family(me)


def end_orphans(runners: Iterable[int]) -> list[int]:
    """In a warm worker: kill each of its children that is not one of ``runners`` and not of its own session
    (an import's helper process is): a process a runner's cell left, re-parented to the worker when that
    runner was killed outright. The pids killed."""
    mine = os.getsid(0)
    keep = set(runners)
    killed = []
    for pid in children(os.getpid()):
        try:
            theirs = os.getsid(pid)
        except OSError:
            continue
        if pid not in keep and theirs != mine:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def processes_with(variable: str, value: str) -> list[int]:
    """This machine's processes started with ``variable=value`` in their environment (those this user may
    read): a task's, through any session, by the variable its backend gives all it runs. A process started
    with an environment of its own making (``env -i``) is not found."""
    marker = f"{variable}={value}".encode()
    found = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit():
            try:
                environ = Path(entry.path, "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def end_processes_with(variable: str, value: str) -> list[int]:
    """SIGKILL every process :func:`processes_with` finds, again until none is left (a bounded number of
    rounds: a process that forks as fast as it is killed). The pids killed."""
    killed: list[int] = []
    for _ in range(20):
        left = processes_with(variable, value)
        if not left:
            break
        _signal_all(left, signal.SIGKILL)
        killed += left
        time.sleep(0.01)
    return killed
