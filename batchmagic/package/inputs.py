"""``--input`` and ``--output``: data into the task's working directory, files out of it.

``--input az://container/prefix[:dest]`` names blobs already in Blob Storage; ``--input
./local/path[:dest]`` names local files, uploaded once by content (``inputs/sha256/<hash>`` in the
run store, so unchanged data is never uploaded twice). Either way the runner gets one read SAS URL
per file, scoped to that blob, and downloads them in parallel before the cell runs.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from batchmagic.errors import ConfigError
from batchmagic.protocol import InputFile, Layout, sha256_file
from batchmagic.storage import BlobStore, Store

__all__ = [
    "InputSpec",
    "parse_input",
    "parse_output",
    "stage_inputs",
    "StagedInputs",
    "HashCache",
    "grant_paths",
]


@dataclass(frozen=True)
class InputSpec:
    source: str  # az://container/prefix, or a local path
    dest: str  # relative to the task's working directory

    @property
    def remote(self) -> bool:
        return self.source.startswith("az://")


def _check_dest(dest: str, token: str) -> str:
    path = PurePosixPath(dest)
    if not dest or path.is_absolute() or ".." in path.parts:
        raise ConfigError(f"--input {token!r}: the destination {dest!r} is outside the task's working directory")
    return posixpath.normpath(dest)


def _unquote(token: str) -> str:
    """IPython's magic line splitting keeps quotes around a token: 'data/*.csv' means data/*.csv."""
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token


def parse_input(token: str) -> InputSpec:
    """``az://c/p[:dest]`` or ``path[:dest]`` -> an InputSpec (the local path must exist)."""
    token = _unquote(token)
    if token.startswith("az://"):
        rest = token[len("az://") :]
        location, _, dest = rest.partition(":")
        container, _, prefix = location.partition("/")
        if not container or not prefix:
            raise ConfigError(f"--input {token!r} is not az://container/prefix[:dest]")
        default = PurePosixPath(prefix.rstrip("/")).name
        return InputSpec(f"az://{container}/{prefix}", _check_dest(dest or default, token))
    location, _, dest = token.partition(":")
    path = Path(location).expanduser()
    if not path.exists():
        raise ConfigError(f"--input {token!r}: {location} does not exist")
    return InputSpec(str(path.resolve()), _check_dest(dest or path.resolve().name, token))


def parse_output(pattern: str) -> str:
    pattern = _unquote(pattern)
    path = PurePosixPath(pattern)
    if not pattern or path.is_absolute() or ".." in path.parts:
        raise ConfigError(f"--output {pattern!r} must be a glob relative to the working directory, like model/*.pt")
    return pattern


class HashCache:
    """sha256 of local files, remembered by (path, size, mtime) so unchanged data is hashed once."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            self._known[key] = sha256_file(path)
        return self._known[key]


@dataclass
class StagedInputs:
    files: list[InputFile]  # what the runner fetches
    uploaded: int  # bytes uploaded for this run (0 when all content was there already)
    total: int  # bytes the task will download


def _require(signer: BlobStore | None) -> BlobStore:
    if signer is None:
        raise ConfigError(
            "az:// inputs need Blob Storage: export AZURE_STORAGE_CONNECTION_STRING for the account holding them"
        )
    return signer


def stage_inputs(
    specs: list[InputSpec],
    store: Store,
    *,
    expiry: datetime,
    hashes: HashCache,
    signer: BlobStore | None = None,
    disk: tuple[str, int] | None = None,
) -> StagedInputs:
    """Resolve every input to files with read URLs, uploading local content the store lacks.

    Everything is listed and sized first, so an input that cannot fit is refused before a byte moves.

    Parameters
    ----------
    signer : BlobStore, optional
        What lists ``az://`` inputs and signs read URLs for them (the run's store on Azure).
    disk : (str, int), optional
        The VM size and the bytes of its temporary disk, where the task's working directory lives.

    Raises
    ------
    ConfigError
        An ``az://`` path with no blob under it, or inputs larger than ``disk``.
    """
    remote: list[tuple[str, str, str, int]] = []  # container, blob, destination, size
    local: list[tuple[Path, str, int]] = []  # file, destination, size
    for spec in specs:
        if spec.remote:
            container, _, prefix = spec.source[len("az://") :].partition("/")
            blobs = _require(signer).list_blobs_in(container, prefix)
            if not blobs:
                raise ConfigError(f"--input {spec.source}: no blob there (container {container!r}, prefix {prefix!r})")
            single = len(blobs) == 1 and blobs[0][0] == prefix
            for name, size in blobs:
                relative = spec.dest if single else posixpath.join(spec.dest, name[len(prefix) :].lstrip("/"))
                remote.append((container, name, relative, size))
            continue
        root = Path(spec.source)
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            relative = spec.dest if root.is_file() else posixpath.join(spec.dest, path.relative_to(root).as_posix())
            local.append((path, relative, path.stat().st_size))
    total = sum(item[3] for item in remote) + sum(item[2] for item in local)
    if disk is not None and total > disk[1]:
        raise ConfigError(
            f"--input data is {total / 2**30:,.1f} GiB, more than the {disk[1] / 2**30:,.0f} GiB temporary disk of "
            f"{disk[0]}: pick a --vm with a bigger disk, or read the data in parts with batchmagic.data"
        )

    files: list[InputFile] = []
    for container, name, relative, size in remote:
        url = _require(signer).blob_url_in(container, name, permissions="r", expiry=expiry)
        files.append(InputFile(url, relative, size))
    uploaded = 0
    for path, relative, size in local:
        digest = hashes.sha256(path)
        key = Layout.input(digest)
        if not store.holds(key, size, sha256=hashes.sha256):  # an altered stored copy is stored again
            store.put_file(key, path)  # a copy (a reflink where it can be), never a link to the original
            uploaded += size
        url = store.url(key, permissions="r", expiry=expiry)
        files.append(InputFile(url, relative, size, digest))  # checked on the node
    return StagedInputs(files, uploaded, total)


class DataAccessWarning(UserWarning):
    """An az:// path in the cell cannot be granted to the run."""


def grant_paths(paths: list[str], signer: BlobStore | None, *, expiry: datetime) -> dict[str, str]:
    """A read SAS URL for each ``az://container/blob`` the cell names literally (batchmagic.data)."""
    import warnings

    if not paths:
        return {}
    if signer is None:
        warnings.warn(
            f"the cell reads {paths[0]}, but no Blob Storage is configured: export AZURE_STORAGE_CONNECTION_STRING",
            DataAccessWarning,
            stacklevel=3,
        )
        return {}
    grants = {}
    for path in paths:
        container, _, name = path[len("az://") :].partition("/")
        if not any(blob == name for blob, _size in signer.list_blobs_in(container, name)):
            warnings.warn(f"the cell reads {path}, and there is no such blob", DataAccessWarning, stacklevel=3)
            continue
        grants[path] = signer.blob_url_in(container, name, permissions="r", expiry=expiry)
    return grants
