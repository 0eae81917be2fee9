"""A cell that starts a process in a session of its own (as a daemonised server does) and does not wait for
it, and the ways to find such a process on this machine, for the tests that it ends with its run."""

from __future__ import annotations

import os
import signal

from tests.support.procs import processes


def escaping_cell(mark: int, hold: float) -> str:
    """A cell that starts ``sleep MARK`` in a new session, says so, then sleeps ``hold`` seconds."""
    return (
        "import subprocess, time\n"
        f"subprocess.Popen(['sleep', '{mark}'], start_new_session=True)\n"
        "print('started', flush=True)\n"
        f"time.sleep({hold})\n"
    )


def sleepers(mark: int) -> list[int]:
    """This machine's living ``sleep MARK`` processes (a container's too: they are this machine's)."""
    command = f"sleep\0{mark}\0".encode()
    return [p.pid for p in processes() if p.living and p.cmdline() == command]


def kill_sleepers(*marks: int) -> None:
    """Kill what a failed test left."""
    for mark in marks:
        for pid in sleepers(mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
