"""A ``sitecustomize`` for a warm worker alone (on its PYTHONPATH, not a task's): the runners it forks wait
before they make their own session, so that a cancel, a timeout or a signal that comes right after the fork
lands in the window where the runner leads no process group yet, every time instead of once in a while."""

from __future__ import annotations

from pathlib import Path

__all__ = ["slow_setsid"]

_HOOK = """
import os, time
_setsid = os.setsid
def _slow_setsid():
    time.sleep({seconds})
    return _setsid()
os.setsid = _slow_setsid
"""


def slow_setsid(folder: Path, seconds: float = 1.5) -> str:
    """Write the hook into ``folder`` (made); the folder, to put first on the worker's PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_HOOK.format(seconds=seconds))
    return str(folder)
