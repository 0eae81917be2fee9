"""The runner's side of the notebook's folder: its skeleton before the cell, what changed after it.

Before the cell runs, the folder's directories are created in the working directory (the files the
cell names have arrived as inputs by then) and every file there is noted by size and modification
time. After it, each file that is new or whose size or time changed is uploaded under the folder's
prefix, so that the client can bring it back into the notebook's folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from batchmagic.channel import child_url, open_channel
from batchmagic.protocol import FolderSpec, sha256_file

__all__ = ["Snapshot", "prepare_folder", "snapshot", "upload_changed"]

#: A file's state as the runner compares it: (size, modification time in ns).
Snapshot = dict[str, tuple[int, int]]

#: Directories never brought back: caches, and the runner's own (``.azbatch-*``, see runner.main).
_SKIP_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints", ".git"})


def prepare_folder(folder: FolderSpec, cwd: Path) -> Snapshot:
    """Create the folder's skeleton under ``cwd``; return the state of every file there now."""
    root = cwd.resolve()
    for relative in folder.dirs:
        target = (root / relative).resolve()
        if root == target or root in target.parents:  # a spec never reaches out of the working directory
            target.mkdir(parents=True, exist_ok=True)
    return snapshot(cwd)


def _files(cwd: Path) -> Iterable[tuple[str, os.stat_result]]:
    for here, dirs, names in os.walk(cwd):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".azbatch-")]
        for name in names:
            path = os.path.join(here, name)
            try:
                stat = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            if os.path.isfile(path) and not os.path.islink(path):
                yield Path(path).relative_to(cwd).as_posix(), stat


def snapshot(cwd: Path) -> Snapshot:
    """Every regular file under ``cwd`` (the runner's own directory aside): relative path -> state."""
    return {relative: (stat.st_size, stat.st_mtime_ns) for relative, stat in _files(cwd)}


def upload_changed(
    folder: FolderSpec, cwd: Path, before: Snapshot, *, uploaded: Iterable[str] = ()
) -> tuple[tuple[str, int, str], ...]:
    """Upload each file created or changed since ``before`` under the folder's prefix; return them as
    ``(relative path, size, sha256)``. Files already ``uploaded`` (``--output``) go once."""
    done = set(uploaded)
    changed = [relative for relative, stat in _files(cwd) if before.get(relative) != (stat.st_size, stat.st_mtime_ns)]

    def one(relative: str) -> tuple[str, int, str]:
        path = cwd / relative
        if relative not in done:
            open_channel(child_url(folder.url, folder.prefix + relative)).upload_file(path)
        return relative, path.stat().st_size, sha256_file(path)

    from concurrent.futures import ThreadPoolExecutor  # here: after the cell, not in every runner's start

    with ThreadPoolExecutor(max_workers=8) as pool:
        return tuple(pool.map(one, sorted(changed)))
