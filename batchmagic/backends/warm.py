"""The local backend's warm worker: runners forked from a process that already imported what the kernel did.

A fresh ``python -m batchmagic.runner`` imports numpy, pandas and scikit-learn again before the cell runs
(a second or two). :class:`WarmWorker` keeps one process per backend and interpreter
(:mod:`batchmagic.runner.warm`) that has imported the runner and the third-party modules this kernel has
imported, and asks it to fork each task's runner: the child starts in milliseconds. Each request names the
kernel's modules again, so the worker imports what the kernel imported since. A forked runner has what a
spawned one has: its own session and process group (so the timeout and Cancel kill it as one), the task's
working directory, environment and output files. The first task of a kernel starts as before, while the
worker warms up beside it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

__all__ = ["WarmWorker", "Forked", "kernel_modules"]

log = logging.getLogger("batchmagic.backends.warm")

#: Modules of a kernel that a runner never needs, and whose state must not be forked (event loops,
#: sockets, threads): the notebook's machinery.
_NOT_PRELOADED = frozenset(
    {
        "IPython", "ipykernel", "ipywidgets", "jupyter_client", "jupyter_core", "zmq", "tornado", "traitlets",
        "comm", "debugpy", "prompt_toolkit", "jedi", "parso", "pexpect", "ptyprocess", "matplotlib_inline",
        "jupyter_ui_poll", "widgetsnbextension", "nest_asyncio", "psutil", "azure", "docker", "batchmagic",
        "pytest", "_pytest", "pluggy", "urllib3", "requests", "certifi", "isodate",
    }
)  # fmt: skip


def kernel_modules() -> list[str]:
    """The third-party modules this process has imported (from site-packages: ``sklearn.tree`` as well as
    ``sklearn``, and the private modules a library loads on first use, like ``sklearn.utils._param_validation``),
    the notebook's own machinery aside: what a warm worker imports before it forks, a package before its
    modules."""
    names = []
    for name, module in list(sys.modules.items()):
        parts = name.split(".")
        where = getattr(module, "__file__", None) or ""
        if parts[0] in _NOT_PRELOADED or parts[0].startswith("_") or "site-packages" not in where:
            continue
        names.append(name)
    return sorted(names)


class Forked:
    """A runner forked by the warm worker: the parts of ``subprocess.Popen`` the local backend uses
    (``pid``, ``poll``, ``wait``), its exit code read from the worker's connection."""

    def __init__(self, conn: socket.socket, reader: BinaryIO, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._conn = conn
        self._reader = reader  # the connection's buffered reader: it may hold the exit line already
        self._ended = threading.Event()
        threading.Thread(target=self._watch, name=f"warm-child-{pid}", daemon=True).start()

    def _watch(self) -> None:
        try:
            line = self._reader.readline()
            code = int(json.loads(line)["exit"]) if line else None
        except (OSError, ValueError, KeyError):
            code = None
        finally:
            self._conn.close()
        if code is None:  # the worker went away: the child is no longer ours to reap; wait for it to go
            while _alive(self.pid):
                self._ended.wait(0.1)
            code = 1  # unknown: the runner's result says what happened
        self.returncode = code
        self._ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"task runner {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WarmWorker:
    """One warm worker process for an interpreter, started on first use and kept while the kernel lives.

    Parameters
    ----------
    python : str
        The interpreter runners run with (the worker is started with it).
    env : dict
        The worker's own environment (``PYTHONPATH`` to this batchmagic).
    """

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self._python = python
        self._env = env
        self._dir = ""  # made when the worker starts: a backend that never runs a task leaves nothing behind
        self._socket = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.failed = False

    def start(self) -> None:
        """Start the worker in the background (idempotent); :meth:`fork` uses it once it is ready."""
        with self._lock:
            if self._process is not None or self.failed:
                return
            self._dir = tempfile.mkdtemp(prefix="batchmagic-warm-")
            self._socket = os.path.join(self._dir, "worker.sock")
            self._process = subprocess.Popen(
                [self._python, "-m", "batchmagic.runner.warm", self._socket, *kernel_modules()],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=self._dir,
            )
        threading.Thread(target=self._await_ready, name="batchmagic-warm-start", daemon=True).start()

    def _await_ready(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        if self._process.stdout.readline().strip() == b"ready":
            self._ready.set()
        else:
            log.warning("the warm worker did not start: tasks start as fresh processes")
            self.failed = True

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._process is not None and self._process.poll() is None

    def fork(self, spec: Path, cwd: Path, env: dict[str, str], stdout: Path, stderr: Path) -> Forked | None:
        """A runner for ``spec`` forked by the worker; None when the worker is not ready (or failed): the
        caller then starts the runner as a fresh process."""
        if not self.ready:
            self.start()
            return None
        request = {
            "spec": str(spec), "cwd": str(cwd), "env": env, "stdout": str(stdout), "stderr": str(stderr),
            "modules": kernel_modules(),
        }  # fmt: skip
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self._socket)
            conn.sendall(json.dumps(request).encode() + b"\n")
            reader = conn.makefile("rb")
            answer = json.loads(reader.readline() or b"{}")
        except (OSError, ValueError) as err:
            conn.close()
            log.warning("the warm worker could not fork a runner (%s): a fresh process instead", err)
            return None
        if "pid" not in answer:
            conn.close()
            log.warning("the warm worker refused a task (%s): a fresh process instead", answer.get("error"))
            return None
        return Forked(conn, reader, int(answer["pid"]))

    def close(self) -> None:
        """End the worker (its forked runners are sessions of their own: they go on)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
