"""The client's ledger: every run this machine's clients started, and what became of it, as JSON lines.

It lives in ``BATCHMAGIC_HOME/ledger.jsonl`` so that what a kernel started can be found again from any
kernel or terminal on the machine: ``%azbatch_status`` and ``batchmagic ls`` list it,
``%azbatch_attach`` rebuilds a run from it (with the run's store), ``%azbatch_teardown`` offers the
unreleased runs of kernels that are gone. Several processes append to it at once: each line
(a :class:`batchmagic.protocol.LedgerEntry`) is written whole, in one ``write``, under an exclusive
``flock``, and read under a shared one. A line a writer could not finish (a full disk) is cut off
again; one left by a writer that died mid-line is ended before the next is appended, so it never
swallows the next entry. A reader skips lines it cannot read (torn, foreign, newer) and says which
(:attr:`Ledger.skipped`, :meth:`Ledger.skipped_note`). It holds no secret: ``--env`` values of
secret-looking names are redacted before they get here.

Each client (a kernel, a script) gets an id, written into the metadata of what it creates, and records
its process id and host, so a reader can tell whether the client is still alive.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchmagic.protocol import LEDGER_EVENTS, LedgerEntry, LedgerLineError, LedgerSubmission

__all__ = ["Ledger", "LedgerRun"]

log = logging.getLogger("batchmagic.run.ledger")


@dataclass
class LedgerRun:
    """One run as the ledger tells it: its ``submitted`` event and what happened after."""

    run_id: str
    submitted: LedgerEntry
    phase: str = ""  # the final phase once a client saw it end: done, failed, cancelled
    released: bool = False
    attached_by: list[str] = field(default_factory=list)  # clients that attached to it later

    @property
    def name(self) -> str:
        return self.submitted.name or self.run_id

    @property
    def backend(self) -> str:
        return self.submitted.backend

    @property
    def client(self) -> str:
        return self.submitted.client

    @property
    def finished(self) -> bool:
        return bool(self.phase)

    def client_alive(self) -> bool:
        """Whether the kernel (or script) that submitted it still runs on this host."""
        return process_alive(self.submitted.pid, self.submitted.pid_start, self.submitted.host)


def process_alive(pid: int, pid_start: int = 0, host: str = "") -> bool:
    """Whether process ``pid`` (started at ``pid_start`` clock ticks after boot, on ``host``) still runs;
    True when it cannot be told (another host, no pid)."""
    if not pid or (host and host != socket.gethostname()):
        return True  # cannot tell: assume it is
    try:
        os.kill(pid, 0)
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
    return not pid_start or _start_time(pid) == pid_start


class Ledger:
    """``BATCHMAGIC_HOME/ledger.jsonl``: append events, read runs. ``skipped`` holds the lines the last
    read could not use: (line number, why)."""

    def __init__(self, home: Path, *, client_id: str | None = None) -> None:
        self.path = Path(home) / "ledger.jsonl"
        self.client_id = client_id or uuid.uuid4().hex[:12]
        self.skipped: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def record(
        self, event: str, run_id: str, *, submission: LedgerSubmission | None = None, **fields: Any
    ) -> LedgerEntry:
        """Append one event (``submitted``, ``finished``, ``released``, ``attached``), whoever else appends;
        the fields are :class:`LedgerEntry`'s. ``submitted`` records this process (pid, start, host).

        Raises
        ------
        OSError
            The line could not be written whole (a full disk: ENOSPC); the ledger is left as it was.
        """
        if event == "submitted":
            fields.update(pid=os.getpid(), pid_start=_start_time(os.getpid()), host=socket.gethostname())
        if "removed" in fields:
            fields["removed"] = tuple(fields["removed"])
        entry = LedgerEntry(
            event=event,
            run=run_id,
            client=self.client_id,
            time=time.time(),
            submission=submission or LedgerSubmission(),
            **fields,
        )
        self.append(entry.to_line())
        return entry

    def append(self, line: bytes) -> None:
        """Append a complete line in one ``write`` under the lock. A last line left unfinished by a writer
        that died is ended first; a write that fails or is short (a full disk) is cut off again and raised."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                data = line if size == 0 or os.pread(fd, 1, size - 1) == b"\n" else b"\n" + line
                try:
                    written = os.write(fd, data)
                except OSError:
                    _truncate(fd, size)
                    raise
                if written != len(data):
                    _truncate(fd, size)  # a torn line must not be left for the next writer to glue onto
                    raise OSError(errno.ENOSPC, "the disk is full: could not write a whole line", str(self.path))
            finally:
                os.close(fd)  # releases the lock

    def entries(self) -> list[LedgerEntry]:
        """Every entry this side can read, in order; what it skipped is in :attr:`skipped`."""
        try:
            with open(self.path, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH)
                data = f.read()
        except FileNotFoundError:
            self.skipped = []
            return []
        entries: list[LedgerEntry] = []
        skipped: list[tuple[int, str]] = []
        for number, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                entry = LedgerEntry.from_line(line)
            except LedgerLineError as err:
                skipped.append((number, str(err)))
                continue
            if entry.event in LEDGER_EVENTS:  # another event is a newer batchmagic's: not ours to read
                entries.append(entry)
        if skipped and skipped != self.skipped:
            log.warning("skipped unreadable lines of %s: %s", self.path, skipped)
        self.skipped = skipped
        return entries

    def skipped_note(self) -> str:
        """One line about what the last read skipped ("" when nothing): for status, attach, teardown, ls."""
        if not self.skipped:
            return ""
        shown = ", ".join(f"line {number} ({why})" for number, why in self.skipped[:3])
        more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        return f"skipped {len(self.skipped)} unreadable line(s) of the ledger {self.path}: {shown}{more}"

    def runs(self) -> dict[str, LedgerRun]:
        """Every run in the ledger, oldest first: run id -> what the ledger knows of it."""
        runs: dict[str, LedgerRun] = {}
        for entry in self.entries():
            if entry.event == "submitted":
                runs[entry.run] = LedgerRun(entry.run, entry)
            elif entry.run in runs:
                run = runs[entry.run]
                if entry.event == "finished":
                    run.phase = entry.phase
                elif entry.event == "released":
                    run.released = True
                elif entry.event == "attached":
                    run.attached_by.append(entry.client)
        return runs

    def open_runs(self) -> dict[str, LedgerEntry]:
        """Runs submitted by any client and not yet released: run id -> its ``submitted`` event."""
        return {rid: run.submitted for rid, run in self.runs().items() if not run.released}

    def find(self, key: str) -> LedgerRun | None:
        """A run by id, or by name (the latest of that name)."""
        runs = self.runs()
        if key in runs:
            return runs[key]
        named = [run for run in runs.values() if run.name == key]
        return named[-1] if named else None


def _truncate(fd: int, size: int | None) -> None:
    """Cut the file back to ``size`` after a failed write (best effort: the disk is full)."""
    if size is not None:
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (Linux); 0 where /proc is not there."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0
