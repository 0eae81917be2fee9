"""Where run data lives, as the client sees it: a :class:`Store` of keys (the layout is
:class:`batchmagic.protocol.Layout`).

:class:`LocalStore` keeps it in a directory on this machine, :class:`BlobStore` in an Azure Blob
Storage container; both sign URLs for the runner, which reads and writes them through
:mod:`batchmagic.channel`. This is the only module that imports ``azure.storage``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from batchmagic.channel import BlobChannel, Channel, FileChannel, atomic_write, open_channel
from batchmagic.protocol import sha256_file
from batchmagic.settings import DEFAULT_STORAGE_PATIENCE

log = logging.getLogger("batchmagic.storage")

__all__ = [
    "Store",
    "LocalStore",
    "BlobStore",
    "Channel",
    "FileChannel",
    "BlobChannel",
    "open_channel",
    "check_container_name",
    "read_at_once",
    "unreachable",
    "READERS",
]

#: Reads of small blobs made at once (a tick's logs, a distributed run's nodes' states): each is a round
#: trip, so N of them one after another take N round trips (800 ranks: 800 GETs a tick).
READERS = 16

_T = TypeVar("_T")
_R = TypeVar("_R")


def read_at_once(read: Callable[[_T], _R], items: Sequence[_T], *, workers: int | None = None) -> list[_R]:
    """``read(item)`` for each item, at most ``workers`` (:data:`READERS`) at a time, the answers in the
    items' order; the first that raises is raised."""
    workers = min(workers or READERS, len(items))
    if workers <= 1:
        return [read(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read, items))


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the store did not answer (a connection refused or reset, a timeout, a 5xx or
    503 from Blob Storage): worth trying again later, unlike a missing key or a refused request."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError | PermissionError):
        return True
    azure = sys.modules.get("azure.core.exceptions")  # only loaded when a BlobStore is in use
    if azure is None:
        return False
    if isinstance(err, azure.ServiceRequestError | azure.ServiceResponseError):
        return True
    status = getattr(err, "status_code", None)
    return isinstance(err, azure.HttpResponseError) and (status is None or status >= 500 or status == 408)


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
    def read_from(self, key: str, offset: int, limit: int | None = None) -> bytes:
        """Return the bytes of ``key`` from ``offset`` to its current end, at most ``limit`` of them (b"" if
        none yet)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds data."""

    def holds(self, key: str, size: int, *, sha256: Callable[[Path], str] = sha256_file) -> bool:
        """Whether the content-addressed ``key`` holds its content (here: that it exists)."""
        return self.exists(key)

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; return how many were deleted. Idempotent."""

    @abstractmethod
    def url(self, key: str, *, permissions: str, expiry: datetime) -> str:
        """A URL through which a runner can use ``key`` with ``permissions`` (r, a, c, w) until ``expiry``."""

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, for messages (never contains a secret)."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        """``(key, size)`` of every key under ``prefix``."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Write the data under ``key`` to the file ``path``."""

    @abstractmethod
    def write_url(self, *, expiry: datetime) -> str:
        """A URL under which a runner may create (not read) keys: children via :func:`child_url`."""

    def outbox(self, run_id: str) -> Store:
        """Where a run's tasks write files whose names are not known in advance (``--output``,
        Batch's own stdout/stderr): a store that holds that run's files and nothing else, so the
        write access a task gets is scoped to its run. Same keys as in the main store."""
        return self


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` as an independent file: a reflink where the filesystem has them
    (btrfs, XFS, overlayfs on those: instant, sharing blocks until either side is written), else a
    plain copy. Never a hard link: appending to the original must not alter the copy."""
    try:
        import fcntl

        with open(source, "rb") as src, open(target, "wb") as dst:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        return
    except (OSError, ImportError):
        pass  # not a filesystem with reflinks (ext4, tmpfs), or across filesystems: copy the bytes
    shutil.copyfile(source, target)  # sendfile/copy_file_range where the kernel has them


_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)

_CONTENT_ADDRESSED = re.compile(r"^(objects|inputs)/sha256/[0-9a-f]{64}$")


class LocalStore(Store):
    """Run data in a directory on this machine (the local backend's store)."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._resolved = self.root.resolve()  # once: path() is asked for a sweep's every task, several times

    def path(self, key: str) -> Path:
        target = (self._resolved / key).resolve()
        if self._resolved not in target.parents:
            raise ValueError(f"key escapes the store: {key!r}")
        return target

    def put_file(self, key: str, path: Path) -> None:
        """Copy to a temporary name beside the key, check it (its size; for content-addressed keys its
        sha256), then rename: a full disk or a killed copy never leaves a short file at the key, where
        a later run would take it for the real one."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).resolve() == target:
            return
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            copy_file(Path(path), partial)
            size, expected = partial.stat().st_size, Path(path).stat().st_size
            if size != expected:
                raise OSError(f"copying {path} to {target} wrote {size} of {expected} bytes")
            if _CONTENT_ADDRESSED.match(key) and sha256_file(partial) != key.rsplit("/", 1)[1]:
                raise OSError(f"the copy of {path} at {key} does not match its hash")
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def read_from(self, key: str, offset: int, limit: int | None = None) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                f.seek(offset)
                return f.read(-1 if limit is None else limit)
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

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        base = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root.resolve()
        if base.is_file():
            return [(prefix, base.stat().st_size)]
        keys = []
        for path in sorted(base.rglob("*")):
            try:  # a run's files deleted meanwhile (its teardown, another kernel's trim) are simply not listed
                if path.is_file():
                    keys.append((path.relative_to(self._resolved).as_posix(), path.stat().st_size))
            except FileNotFoundError:
                continue
        return keys

    def get_file(self, key: str, path: Path) -> None:
        shutil.copyfile(self.path(key), path)

    def write_url(self, *, expiry: datetime) -> str:
        return self.root.resolve().as_uri()

    def holds(self, key: str, size: int, *, sha256: Callable[[Path], str] = sha256_file) -> bool:
        """Whether ``key`` (content-addressed) holds the content its name says: a stored copy that was
        altered (appended to, truncated, edited) is dropped, so the caller stores it again. ``sha256``
        may remember hashes by the file's size and time (a HashCache): then an untouched copy is read once."""
        target = self.path(key)
        try:
            if target.stat().st_size == size and sha256(target) == key.rsplit("/", 1)[1]:
                return True
        except FileNotFoundError:
            return False
        log.warning("%s no longer matches its hash (it was altered in the store): storing it again", key)
        target.unlink(missing_ok=True)
        return False


# --- Azure Blob Storage ---

_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")


def check_container_name(name: str) -> str:
    """Azure's naming rules: 3-63 characters, lowercase letters, digits, single hyphens inside."""
    if not _CONTAINER_NAME.match(name or ""):
        raise ValueError(
            f"storage container name {name!r} breaks Azure's rules: 3-63 characters, lowercase letters, "
            "digits and single hyphens, starting and ending with a letter or digit; set BATCHMAGIC_CONTAINER"
        )
    return name


class BlobStore(Store):
    """Run data in an Azure Blob Storage container; runners get SAS URLs scoped to single blobs.

    Build it with :meth:`from_connection_string` (account key: SAS signed with it) or
    :meth:`from_account_url` (an Entra ID credential: user-delegation SAS). The key or credential
    stays inside this object: it is never part of a URL, a message or a repr.
    """

    kind = "blob"

    def __init__(self, container_client: Any, *, account_key: str | None = None, credential: Any = None) -> None:
        self._container = container_client
        self._account_key = account_key
        self._credential = credential
        self._delegation_key: Any = None
        self._delegation_expiry: datetime | None = None
        self.container_name: str = container_client.container_name
        self.account_name: str = container_client.account_name

    def __repr__(self) -> str:
        return f"<BlobStore {self.describe()}>"

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        container: str,
        *,
        patience: float = DEFAULT_STORAGE_PATIENCE,
        **client_options: Any,
    ) -> BlobStore:
        """A store on ``container`` of the account ``connection_string`` names; ``patience``: about how many
        seconds the client backs off over its retries of a request that got no answer
        (``Settings.storage_patience``)."""
        from azure.storage.blob import BlobServiceClient

        options = {**_client_options(patience), **client_options}
        service = BlobServiceClient.from_connection_string(connection_string, **options)
        key = service.credential.account_key if service.credential is not None else None
        return cls(service.get_container_client(check_container_name(container)), account_key=key)

    @classmethod
    def from_account_url(
        cls,
        account_url: str,
        container: str,
        credential: Any,
        *,
        patience: float = DEFAULT_STORAGE_PATIENCE,
        **client_options: Any,
    ) -> BlobStore:
        """A store on ``container`` at ``account_url`` signed in with ``credential`` (``patience``: as
        :meth:`from_connection_string`)."""
        from azure.storage.blob import BlobServiceClient

        options = {**_client_options(patience), **client_options}
        service = BlobServiceClient(account_url, credential=credential, **options)
        return cls(service.get_container_client(check_container_name(container)), credential=credential)

    def close(self) -> None:
        """Close its connections (one left to the garbage collector is a ResourceWarning in the notebook)."""
        self._container.close()

    def ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._container.create_container()
        except ResourceExistsError:
            pass

    def _blob(self, key: str) -> Any:
        return self._container.get_blob_client(key)

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as f:
            self._blob(key).upload_blob(f, overwrite=True, max_concurrency=4)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._blob(key).upload_blob(data, overwrite=True)

    def get_bytes(self, key: str) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return bytes(self._blob(key).download_blob().readall())
        except ResourceNotFoundError:
            raise KeyError(key) from None

    def read_from(self, key: str, offset: int, limit: int | None = None) -> bytes:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            return bytes(self._blob(key).download_blob(offset=offset, length=limit).readall())
        except ResourceNotFoundError:
            return b""
        except HttpResponseError as err:
            if err.status_code == 416:  # nothing past offset yet
                return b""
            raise

    def exists(self, key: str) -> bool:
        return bool(self._blob(key).exists())

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        return [(blob.name, blob.size) for blob in self._container.list_blobs(name_starts_with=prefix)]

    def holds(self, key: str, size: int, *, sha256: Callable[[Path], str] = sha256_file) -> bool:
        """Whether the content-addressed ``key`` holds a blob of the right size (one request); a blob
        of another size (a cut upload of an older client) is deleted, so the caller stores it again."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            stored = int(self._blob(key).get_blob_properties().size)
        except ResourceNotFoundError:
            return False
        if stored == size:
            return True
        log.warning("%s has %d bytes, not %d: storing it again", key, stored, size)
        self.delete_prefix(key)
        return False

    def get_file(self, key: str, path: Path) -> None:
        with open(path, "wb") as f:
            self._blob(key).download_blob(max_concurrency=8).readinto(f)

    def write_url(self, *, expiry: datetime) -> str:
        return self.container_url(permissions="cw", expiry=expiry)

    def outbox(self, run_id: str) -> BlobStore:
        """A container of the run's own (``<container>-<hash of the run id>``), created here: a
        write-only SAS on it reaches no other run's data, nor the bundles and inputs."""
        name = f"{self.container_name[:40]}-{hashlib.sha256(run_id.encode()).hexdigest()[:20]}"
        box = BlobStore(self._service().get_container_client(name), account_key=self._account_key)
        box._credential = self._credential
        box._delegation_key, box._delegation_expiry = self._delegation_key, self._delegation_expiry
        return box

    def delete_container(self) -> bool:
        """Delete this store's container; False if it was not there."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._container.delete_container()
        except ResourceNotFoundError:
            return False
        return True

    def outbox_names(self) -> list[str]:
        """The run containers (outboxes) next to this store's container."""
        prefix = f"{self.container_name[:40]}-"
        return [
            c.name for c in self._service().list_containers(name_starts_with=prefix) if len(c.name) == len(prefix) + 20
        ]

    def _service(self) -> Any:
        return self._container._get_blob_service_client()  # noqa: SLF001 - the same account, same credential

    def list_blobs_in(self, container: str, prefix: str) -> list[tuple[str, int]]:
        """``(name, size)`` of the blobs under ``prefix`` in another container of this account."""
        from azure.core.exceptions import ResourceNotFoundError

        client = self._container._get_blob_service_client().get_container_client(container)  # noqa: SLF001
        try:
            return [(blob.name, blob.size) for blob in client.list_blobs(name_starts_with=prefix)]
        except ResourceNotFoundError:
            return []

    def blob_url_in(self, container: str, name: str, *, permissions: str, expiry: datetime) -> str:
        """A SAS URL for one blob of another container of this account."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        sas = generate_blob_sas(
            self.account_name,
            container,
            name,
            permission=BlobSasPermissions.from_string(permissions),
            expiry=expiry,
            **self._sas_signing(expiry),
        )
        service = self._container._get_blob_service_client()  # noqa: SLF001
        return f"{service.get_blob_client(container, name).url}?{sas}"

    def delete_prefix(self, prefix: str) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        count = 0
        try:
            names = [name for name, _size in self.list_keys(prefix)]
        except ResourceNotFoundError:
            return 0  # no container (a run's outbox nothing was written to): nothing to delete
        for name in names:
            try:
                self._container.delete_blob(name)
                count += 1
            except ResourceNotFoundError:
                pass
        return count

    def _sas_signing(self, expiry: datetime) -> dict[str, Any]:
        if self._account_key:
            return {"account_key": self._account_key}
        from datetime import UTC, timedelta

        if self._delegation_key is None or (self._delegation_expiry and self._delegation_expiry < expiry):
            service = self._container._get_blob_service_client()  # noqa: SLF001 - same account
            start = datetime.now(UTC) - timedelta(minutes=5)
            # Azure issues user-delegation keys for at most 7 days.
            self._delegation_expiry = min(expiry + timedelta(hours=1), start + timedelta(days=7))
            self._delegation_key = service.get_user_delegation_key(start, self._delegation_expiry)
        return {"user_delegation_key": self._delegation_key}

    def url(self, key: str, *, permissions: str, expiry: datetime) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        sas = generate_blob_sas(
            self.account_name,
            self.container_name,
            key,
            permission=BlobSasPermissions.from_string(permissions),
            expiry=expiry,
            **self._sas_signing(expiry),
        )
        return f"{self._blob(key).url}?{sas}"

    def container_url(self, *, permissions: str, expiry: datetime) -> str:
        """A container SAS URL (for Batch's outputFiles, which need one): keep ``permissions`` to ``cw``."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas(
            self.account_name,
            self.container_name,
            permission=ContainerSasPermissions.from_string(permissions),
            expiry=expiry,
            **self._sas_signing(expiry),
        )
        return f"{self._container.url}?{sas}"

    def describe(self) -> str:
        return f"{self._container.url}"


def _client_options(patience: float) -> dict[str, Any]:
    """Retries for someone waiting at a notebook: a few, seconds apart (a connection refused is retried 3
    times, 3, 5 and 9 s apart with jitter at the default ``patience`` of 17 s, in proportion otherwise; the
    SDK's default backs off for about a minute and a half before it says the account cannot be reached);
    the callers' own patience (a run's collect, ``batchmagic logs``) takes over from there."""
    from azure.storage.blob import ExponentialRetry

    scale = patience / DEFAULT_STORAGE_PATIENCE

    class Patient(ExponentialRetry):
        def get_backoff_time(self, settings: dict[str, Any]) -> float:
            return float(super().get_backoff_time(settings)) * scale

    return {"retry_policy": Patient(initial_backoff=1, increment_base=2, retry_total=4)}
