"""The runner's side of run data: one object it may read, append to or write, named by a URL.

``file://`` paths locally, SAS URLs on Azure (plain Blob REST over ``urllib``: a task starts in a
fraction of the time the Azure SDK's import takes, and the training image needs nothing but the
standard library for its I/O). Standard library only; the client's side is :mod:`batchmagic.storage`.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

__all__ = ["Channel", "FileChannel", "BlobChannel", "BlobRequestError", "open_channel", "child_url", "RANGE_SIZE"]

RANGE_SIZE = 8 << 20  # bytes per ranged download request or upload block


def atomic_write(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


class Channel(ABC):
    """One object the runner reads or writes, named by a URL."""

    @abstractmethod
    def read(self) -> bytes: ...

    @abstractmethod
    def append(self, data: bytes) -> None: ...

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    def size(self) -> int:
        """The object's length in bytes; 0 when it does not exist (yet)."""
        try:
            return len(self.read())
        except (FileNotFoundError, BlobRequestError):
            return 0

    def download_to(self, path: Path, *, size: int | None = None, concurrency: int = 16) -> None:
        """Copy the object into ``path``; ``size`` and ``concurrency`` are hints a subclass may use."""
        Path(path).write_bytes(self.read())

    def local_path(self) -> Path | None:
        """The object's own file when it is one on this machine (read it there, no copy needed); else None."""
        return None

    def upload_file(self, path: Path, *, concurrency: int = 8) -> None:
        """Copy ``path`` into the object; ``concurrency`` is a hint a subclass may use."""
        self.write(Path(path).read_bytes())


class FileChannel(Channel):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> bytes:
        return self.path.read_bytes()

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)

    def write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, data)

    def download_to(self, path: Path, *, size: int | None = None, concurrency: int = 16) -> None:
        shutil.copyfile(self.path, path)

    def local_path(self) -> Path | None:
        return self.path

    def upload_file(self, path: Path, *, concurrency: int = 8) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, self.path)


def open_channel(url: str) -> Channel:
    """Open a ``file://`` or SAS ``https://`` URL given to the runner."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return FileChannel(Path(urllib.parse.unquote(parsed.path)))
    if parsed.scheme in ("http", "https"):
        return BlobChannel(url)
    raise ValueError(f"unsupported URL scheme for run data: {parsed.scheme!r}")


class BlobChannel(Channel):
    """A blob the runner reaches through a SAS URL (no account key ever reaches a task).

    Plain Blob REST calls over ``urllib``: a task starts in a fraction of the time the Azure SDK's
    import takes, and the training image needs nothing but the standard library for its I/O.
    """

    API_VERSION = "2021-12-02"
    ATTEMPTS = 4

    def __init__(self, url: str) -> None:
        self.url = url
        self._position: int | None = None  # the append blob's length as this channel left it

    def __repr__(self) -> str:
        return f"<BlobChannel {self.url.split('?')[0]}>"  # never the SAS token

    def _request(self, method: str, data: bytes | None = None, *, query: str = "", **headers: str) -> Any:
        import time
        import urllib.error
        import urllib.request

        url = self.url + (("&" if "?" in self.url else "?") + query if query else "")
        headers = {"x-ms-version": self.API_VERSION, **{k.replace("_", "-"): v for k, v in headers.items()}}
        if data is not None:
            headers["Content-Length"] = str(len(data))
        for attempt in range(self.ATTEMPTS):
            request = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                return urllib.request.urlopen(request, timeout=120)  # noqa: S310 - a SAS URL we were given
            except urllib.error.HTTPError as err:
                if err.code < 500 or attempt == self.ATTEMPTS - 1:
                    raise BlobRequestError(method, err.code, self.url) from None
            except OSError:
                if attempt == self.ATTEMPTS - 1:
                    raise
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def read(self) -> bytes:
        with self._request("GET") as response:
            return bytes(response.read())

    def size(self) -> int:
        try:
            with self._request("HEAD") as response:
                return int(response.headers["Content-Length"])
        except BlobRequestError as err:
            if err.status == 404:
                return 0
            raise

    def download_to(self, path: Path, *, size: int | None = None, concurrency: int = 16) -> None:
        """Download in parallel ranged requests (``concurrency`` at once, 8 MiB each) into ``path``."""
        total = self.size() if size is None else size
        if total <= RANGE_SIZE or concurrency <= 1:
            with self._request("GET") as response, open(path, "wb") as f:
                shutil.copyfileobj(response, f, length=4 << 20)
            return
        from concurrent.futures import ThreadPoolExecutor

        with open(path, "wb") as f:
            f.truncate(total)
            fd = f.fileno()

            def fetch(start: int) -> None:
                end = min(start + RANGE_SIZE, total) - 1
                with self._request("GET", x_ms_range=f"bytes={start}-{end}") as response:
                    offset = start
                    while chunk := response.read(1 << 20):
                        os.pwrite(fd, chunk, offset)
                        offset += len(chunk)

            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                list(pool.map(fetch, range(0, total, RANGE_SIZE)))

    def upload_file(self, path: Path, *, concurrency: int = 8) -> None:
        """Upload a file: one request when small, else 8 MiB blocks in parallel and a block list."""
        total = Path(path).stat().st_size
        if total <= RANGE_SIZE:
            self.write(Path(path).read_bytes())
            return
        import base64
        from concurrent.futures import ThreadPoolExecutor

        ids = [base64.b64encode(f"{i:08d}".encode()).decode() for i in range((total + RANGE_SIZE - 1) // RANGE_SIZE)]

        def put(index: int) -> None:
            with open(path, "rb") as f:
                f.seek(index * RANGE_SIZE)
                data = f.read(RANGE_SIZE)
            block = urllib.parse.quote(ids[index], safe="")
            self._request("PUT", data, query=f"comp=block&blockid={block}").close()

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(put, range(len(ids))))
        body = (
            "<?xml version='1.0' encoding='utf-8'?><BlockList>"
            + "".join(f"<Latest>{i}</Latest>" for i in ids)
            + "</BlockList>"
        )
        self._request("PUT", body.encode(), query="comp=blocklist").close()

    def append(self, data: bytes) -> None:
        """Append ``data`` exactly once: each block is conditioned on the blob's length
        (``x-ms-blob-condition-appendpos``), so a retry whose first attempt was applied although its
        answer was lost (a reset after the answer) is recognised by the length, not appended twice."""
        if self._position is None:
            try:
                self._request("PUT", b"", x_ms_blob_type="AppendBlob", If_None_Match="*").close()
                self._position = 0
            except BlobRequestError as err:
                if err.status != 409:  # 409: a retried task appends to the log its first attempt started
                    raise
                self._position = self.size()
        try:
            self._request(
                "PUT", data, query="comp=appendblock", x_ms_blob_condition_appendpos=str(self._position)
            ).close()
        except BlobRequestError as err:
            if err.status != 412 or self.size() != self._position + len(data):
                raise
        self._position += len(data)

    def write(self, data: bytes) -> None:
        self._request("PUT", data, x_ms_blob_type="BlockBlob").close()


class BlobRequestError(OSError):
    """A Blob REST call through a SAS URL was refused; the message never carries the SAS token."""

    def __init__(self, method: str, status: int, url: str) -> None:
        super().__init__(f"{method} {url.split('?')[0]} answered HTTP {status}")
        self.status = status


def child_url(url: str, name: str) -> str:
    """The URL of ``name`` under a container (or directory) URL, SAS query kept."""
    base, sep, query = url.partition("?")
    return f"{base.rstrip('/')}/{urllib.parse.quote(name)}{sep}{query}"
