"""The client's ledger: every run this machine's clients started, and what became of it, as JSON lines.

It lives in ``BATCHMAGIC_HOME/ledger.jsonl`` so that what a kernel started can be found again from any
kernel or terminal on the machine: ``%azbatch_status`` and ``batchmagic ls`` list it,
``%azbatch_attach`` rebuilds a run from it (with the run's store), ``%azbatch_teardown`` offers the
unreleased runs of kernels that are gone. Several processes append to it at once: each line is
written whole under an exclusive ``flock`` and read under a shared one. It holds no secret: ``--env``
values of secret-looking names are redacted before they get here.

Each client (a kernel, a script) gets an id, written into the metadata of what it creates, and records
its process id and host, so a reader can tell whether the client is still alive.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Ledger", "LedgerRun"]


@dataclass
class LedgerRun:
    """One run as the ledger tells it: its ``submitted`` event and what happened after."""

    run_id: str
    submitted: dict[str, Any]
    phase: str = ""  # the final phase once a client saw it end: done, failed, cancelled
    released: bool = False
    attached_by: list[str] = field(default_factory=list)  # clients that attached to it later

    @property
    def name(self) -> str:
        return str(self.submitted.get("name") or self.run_id)

    @property
    def backend(self) -> str:
        return str(self.submitted.get("backend", ""))

    @property
    def client(self) -> str:
        return str(self.submitted.get("client", ""))

    @property
    def finished(self) -> bool:
        return bool(self.phase)

    def client_alive(self) -> bool:
        """Whether the kernel (or script) that submitted it still runs on this host."""
        pid = self.submitted.get("pid")
        if not pid or self.submitted.get("host") != socket.gethostname():
            return True  # cannot tell: assume it is
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False  # killed, not yet reaped by its parent
        except (OSError, IndexError):
            pass
        # A pid can be reused: the client's start time tells them apart.
        return bool(_start_time(int(pid)) == self.submitted.get("pid_start", _start_time(int(pid))))


class Ledger:
    def __init__(self, home: Path, *, client_id: str | None = None) -> None:
        self.path = Path(home) / "ledger.jsonl"
        self.client_id = client_id or uuid.uuid4().hex[:12]
        self._lock = threading.Lock()

    def record(self, event: str, run_id: str, **fields: Any) -> None:
        """Append one event (``submitted``, ``finished``, ``released``, ``attached``): one line, whole,
        under an exclusive lock, whoever else appends."""
        entry = {"time": time.time(), "client": self.client_id, "event": event, "run": run_id, **fields}
        if event == "submitted":
            entry.update(pid=os.getpid(), pid_start=_start_time(os.getpid()), host=socket.gethostname())
        data = (json.dumps(entry) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, data)
            finally:
                os.close(fd)  # releases the lock

    def events(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH)
                data = f.read()
        except FileNotFoundError:
            return []
        events = []
        for line in data.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:  # a line from a writer that died mid-line (before locking existed)
                continue
        return events

    def runs(self) -> dict[str, LedgerRun]:
        """Every run in the ledger, oldest first: run id -> what the ledger knows of it."""
        runs: dict[str, LedgerRun] = {}
        for event in self.events():
            run_id = event.get("run", "")
            kind = event.get("event")
            if kind == "submitted":
                runs[run_id] = LedgerRun(run_id, event)
            elif run_id in runs:
                if kind == "finished":
                    runs[run_id].phase = str(event.get("phase", ""))
                elif kind == "released":
                    runs[run_id].released = True
                elif kind == "attached":
                    runs[run_id].attached_by.append(str(event.get("client", "")))
        return runs

    def open_runs(self) -> dict[str, dict[str, Any]]:
        """Runs submitted by any client and not yet released: run id -> its ``submitted`` event."""
        return {rid: run.submitted for rid, run in self.runs().items() if not run.released}

    def find(self, key: str) -> LedgerRun | None:
        """A run by id, or by name (the latest of that name)."""
        runs = self.runs()
        if key in runs:
            return runs[key]
        named = [run for run in runs.values() if run.name == key]
        return named[-1] if named else None


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (Linux); 0 where /proc is not there."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0
