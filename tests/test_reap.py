"""A runner ends what its cell left (batchmagic.runner.reap) by listing its descendants from /proc, then
signalling them: each signal must reach the process listed, never one that took its pid since."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from batchmagic.runner import reap
from batchmagic.runner.reap import alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pids reused on purpose: Linux's")

NEXT_PID = "/proc/sys/kernel/ns_last_pid"  # the pid the next fork gets, less one (what CRIU sets)


#: A process that, for each pid it reads, forks ``sleep 60`` with that pid (the first fork after it chose the
#: next pid): a stranger to the test's process, whose child it is not.
PID_TAKER = f"""
import os, sys
for line in sys.stdin:
    with open({NEXT_PID!r}, "w") as f:
        f.write(str(int(line) - 1))
    child = os.fork()
    if child == 0:
        os.execvp("sleep", ["sleep", "60"])
    print(child, flush=True)
"""


@pytest.fixture
def taker() -> Iterator[subprocess.Popen[str]]:
    if not os.access(NEXT_PID, os.W_OK):
        pytest.skip(f"cannot choose the next pid here ({NEXT_PID} needs CAP_SYS_ADMIN)")
    process = subprocess.Popen(
        [sys.executable, "-c", PID_TAKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield process
    assert process.stdin is not None and process.stdout is not None
    for pid in reap.descendants(process.pid):
        os.kill(pid, signal.SIGKILL)
    process.stdin.close()
    process.stdout.close()
    process.wait(timeout=10)


def test_a_pid_taken_after_the_listing_does_not_get_the_signal(taker: subprocess.Popen[str]) -> None:
    """A descendant listed, then ended, its pid then taken by a process that is none of ours: the SIGKILL
    meant for the descendant does not reach it (pinned by a pidfd, the listed process is gone)."""
    assert taker.stdin is not None and taker.stdout is not None
    stranger = 0
    for _ in range(20):  # another process of this machine may take the pid first: again, with another
        child = subprocess.Popen(["sleep", "60"])
        listed = [(pid, parent) for pid, parent in reap.family(os.getpid()) if pid == child.pid]
        assert listed == [(child.pid, os.getpid())]
        child.kill()
        child.wait()  # reaped: its pid is free
        taker.stdin.write(f"{child.pid}\n")
        taker.stdin.flush()
        stranger = int(taker.stdout.readline())
        if stranger == child.pid:
            break
        os.kill(stranger, signal.SIGKILL)
    assert stranger == child.pid, "each pid freed was taken by another process first"
    watch = os.pidfd_open(stranger)  # readable once it ends
    try:
        reap.signal_listed(listed, signal.SIGKILL)
        ended, _, _ = select.select([watch], [], [], 2.0)  # a SIGKILL ends a sleep in milliseconds
    finally:
        os.close(watch)
    assert not ended and alive(stranger)


def test_the_process_listed_gets_the_signal_with_a_pidfd_or_without(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listed process itself is signalled, and so it is where pidfds are missing (by pid, as before)."""
    for pidfd in (True, False):
        if not pidfd:
            monkeypatch.delattr(os, "pidfd_open")
        child = subprocess.Popen(["sleep", "60"])
        reap.signal_listed([(child.pid, os.getpid())], signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM


#: A runner's end as the runner does it (a subreaper that ends its descendants), with a grace far longer than
#: the test waits: a plain child and one in a session of its own, both of which heed SIGTERM.
RUNNER = """
import os, subprocess, time
from batchmagic.runner import reap
reap.become_subreaper()
subprocess.Popen(["sleep", "60"])
subprocess.Popen(["sleep", "60"], start_new_session=True)
while len(reap.descendants(os.getpid())) < 2:
    time.sleep(0.01)
reap.end_descendants(grace=60.0)
print(len(reap.descendants(os.getpid())))
"""


def test_descendants_that_heed_sigterm_end_the_wait_at_once() -> None:
    """The SIGTERM-to-SIGKILL grace is the most a slow process gets: processes that heed SIGTERM end the
    wait as soon as they are gone, so a cancel is no slower for a longer grace."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", RUNNER], env=env, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and done.stdout == "0\n", done.stderr


def test_without_proc_a_rank_is_alive_while_its_pid_is_taken(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Where there is no /proc (macOS), the local backend's rank watcher still tells a running rank from an
    ended one (by the pid: it took every rank for ended, and failed, and stopped the run at once)."""
    from batchmagic.runner.rankwatch import Rank

    monkeypatch.setattr(reap, "_stat", lambda pid: [])  # no process table to read
    monkeypatch.setattr(reap.sys, "platform", "darwin")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as running:
        rank = Rank("rank-0", tmp_path, running.pid, ticks=0)
        assert rank.alive() and alive(running.pid)
        running.kill()
        running.wait()
        assert not rank.alive() and not alive(running.pid)
