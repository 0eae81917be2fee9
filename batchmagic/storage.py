"""Where run data lives: the client's :class:`Store` and the runner's :class:`Channel`.

Every run keeps its data under ``runs/<run-id>/`` in a store::

    runs/<run-id>/bundle                  the bundle (see batchmagic.bundle)
    runs/<run-id>/<task-id>/spec.json     what the runner is told: URLs of the three below
    runs/<run-id>/<task-id>/output.log    stdout/stderr records, appended while the cell runs
    runs/<run-id>/<task-id>/result        the pickled outcome, written once at the end

The client works with keys (:class:`LocalStore` on disk, :class:`BlobStore` in Azure Blob
Storage). The runner gets URLs only: ``file://`` paths locally, SAS URLs in Azure, opened with
:func:`open_channel`. This is the only module that imports ``azure.storage``.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from abc import ABC, abstractmethod
from datetime import datetime
from pathlib import Path

__all__ = ["Store", "LocalStore", "Channel", "FileChannel", "open_channel", "LOG_RECORD_KEYS"]

LOG_RECORD_KEYS = ("t", "s", "d")  # time, stream ("o" or "e"), data


class Store(ABC):
    """Key -> bytes storage for run data, as the client sees it."""

    kind: str = ""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key``."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise KeyError if there are none."""

    @abstractmethod
    def read_from(self, key: str, offset: int) -> bytes:
        """Return the bytes of ``key`` from ``offset`` to its current end (b"" if none yet)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds data."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; return how many were deleted. Idempotent."""

    @abstractmethod
    def url(self, key: str, *, permissions: str, expiry: datetime) -> str:
        """A URL through which a runner can use ``key`` with ``permissions`` (r, a, c, w) until ``expiry``."""

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, for messages (never contains a secret)."""


class LocalStore(Store):
    """Run data in a directory on this machine (the local backend's store)."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        target = (self.root / key).resolve()
        if self.root.resolve() not in target.parents:
            raise ValueError(f"key escapes the store: {key!r}")
        return target

    def put_file(self, key: str, path: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).resolve() != target:
            shutil.copyfile(path, target)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def read_from(self, key: str, offset: int) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        target = self.path(prefix.rstrip("/"))
        if target.is_dir():
            count = sum(1 for p in target.rglob("*") if p.is_file())
            shutil.rmtree(target, ignore_errors=True)
            return count
        if target.is_file():
            target.unlink()
            return 1
        return 0

    def url(self, key: str, *, permissions: str, expiry: datetime) -> str:
        return self.path(key).as_uri()

    def describe(self) -> str:
        return str(self.root)


def _atomic_write(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


# --- the runner's side: a URL it may read, append to, or write once ---


class Channel(ABC):
    """One object the runner reads or writes, named by a URL."""

    @abstractmethod
    def read(self) -> bytes: ...

    @abstractmethod
    def append(self, data: bytes) -> None: ...

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    def download_to(self, path: Path) -> None:
        Path(path).write_bytes(self.read())


class FileChannel(Channel):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> bytes:
        return self.path.read_bytes()

    def append(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)

    def write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path, data)

    def download_to(self, path: Path) -> None:
        shutil.copyfile(self.path, path)


def open_channel(url: str) -> Channel:
    """Open a ``file://`` or SAS ``https://`` URL given to the runner."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return FileChannel(Path(urllib.parse.unquote(parsed.path)))
    if parsed.scheme in ("http", "https"):
        from batchmagic.storage_blob import BlobChannel

        return BlobChannel(url)
    raise ValueError(f"unsupported URL scheme for run data: {parsed.scheme!r}")


def encode_log_record(t: float, stream: str, data: str) -> bytes:
    """One log record: a JSON line with the time, the stream ("o"/"e") and the text."""
    return (json.dumps({"t": round(t, 3), "s": stream, "d": data}, ensure_ascii=False) + "\n").encode()
