"""This machine's processes as ``ps`` reads them from ``/proc``: what the tests look for among them (a
warm worker, what a cell left behind, a process group) is a filter over :func:`processes`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Proc", "processes"]


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str  # "R", "S", ... "Z" for a zombie, "X" for a dead one
    ppid: int
    pgid: int

    @property
    def living(self) -> bool:
        return self.state not in ("Z", "X")

    def cmdline(self) -> bytes:
        """Its command line, arguments separated by NUL (b"" once it is gone)."""
        return _read(self.pid, "cmdline")

    def argv(self) -> list[bytes]:
        return self.cmdline().split(b"\0")

    def environ(self) -> list[bytes]:
        """Its environment's ``NAME=value`` entries ([] once it is gone, or not ours to read)."""
        return _read(self.pid, "environ").split(b"\0")


def _read(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def processes() -> list[Proc]:
    """Every process of this machine (a container's too: they are this machine's), zombies included."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found.append(Proc(int(entry.name), fields[0], int(fields[1]), int(fields[2])))
    return found
