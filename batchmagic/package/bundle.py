"""The bundle: one zip file that carries everything a cell needs to run anywhere.

Layout (entries are stored uncompressed, in this order)::

    cell.py                 the cell's source
    values/<name>.pkl       one cloudpickle per shipped value
    src/<path>.py           local modules and packages, relative to their sys.path root
    manifest.json           format version, Python version, names, sha256 of all the entries above

The manifest is written last because it carries the hash of what precedes it. This module is
shared by the client (writing) and the runner (reading), so it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CELL = "cell.py"
CELL_FILENAME = "<azbatch-cell>"  # the filename the cell is compiled under, shown in tracebacks

__all__ = ["FORMAT_VERSION", "BundleReader", "BundleWriter", "Manifest", "BundleError"]


class BundleError(Exception):
    """The bundle is unreadable, of another format version, or fails its hash check."""


def _python_version() -> str:
    """This interpreter's version: the manifest's by default (the client's)."""
    import platform  # here: a runner reads the manifest's version, and does without the import (2 ms)

    return platform.python_version()


@dataclass
class Manifest:
    """What a bundle holds.

    Attributes
    ----------
    format : int
        The bundle format version; the runner refuses any other.
    python : str
        The kernel's Python version (``major.minor.micro``).
    batchmagic : str
        The client's batchmagic version.
    sha256 : str
        Hash of every entry's name and bytes, in order, manifest excluded.
    values : dict
        Shipped value name -> size in bytes of its pickle.
    objects : dict
        Shipped values too big for the bundle: name -> ``{"sha256", "size"}`` of their pickle,
        stored apart (``objects/sha256/<hash>``) and handed to the runner by URL.
    modules : dict
        Name in the namespace -> module to import for it (``{"np": "numpy"}``).
    sources : list of str
        Paths of shipped local source files, under ``src/``.
    bound : list of str
        Names the cell binds at top level, in order.
    outputs : list of str or None
        Names to send back; None means every bound name.
    deleted : list of str
        Names the cell deletes at top level.
    first_line : int
        The line number the cell's first line has where the user wrote it: 2 under a ``%%azbatch`` line.
        The runner numbers the cell's lines from it, so tracebacks point at the notebook's own lines.
    tracked : dict
        Shipped values the cell reads and may change in place (``clf`` in ``clf.fit(X, y)``): name ->
        sha256 of the pickle shipped. After the cell the runner pickles each again and sends back those
        whose pickle differs (a runner that ignores this field sends back only the bound names).
    ipython : bool
        The cell uses IPython syntax (``%time``, ``!cmd``): the runner transforms it with IPython's input
        transformers and runs it in a minimal IPython shell.
    plot_settings : str
        The notebook's matplotlib settings that differ from the defaults, and its inline backend's figure
        formats (:mod:`batchmagic.package.plots`): the runner applies them before the cell. Empty: none.
    random_state : str
        The kernel's global random generators (:mod:`batchmagic.package.randomness`): the runner sets them
        before the cell and sends back the state the cell leaves. Empty (a sweep): the task's own.
    """

    python: str = field(default_factory=_python_version)
    batchmagic: str = ""
    sha256: str = ""
    format: int = FORMAT_VERSION
    values: dict[str, int] = field(default_factory=dict)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)
    outputs: list[str] | None = None
    deleted: list[str] = field(default_factory=list)
    first_line: int = 1
    tracked: dict[str, str] = field(default_factory=dict)
    ipython: bool = False
    plot_settings: str = ""
    random_state: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        data = json.loads(text)
        if data.get("format") != FORMAT_VERSION:
            raise BundleError(
                f"bundle format {data.get('format')!r} is not {FORMAT_VERSION}: "
                "the runner and the client run different batchmagic versions"
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class HashingWriter(io.RawIOBase):
    """A write-only stream that feeds a hash and counts bytes on their way to ``target`` (a zip entry, a file)."""

    def __init__(self, target: IO[bytes], digest: Any) -> None:
        self._target = target
        self._digest = digest
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._digest.update(view)
        self._target.write(view)
        self.count += view.nbytes
        return view.nbytes


class BundleWriter:
    """Write a bundle entry by entry, streaming each value straight into the file.

    Examples
    --------
    In [1]: with BundleWriter(path, manifest) as w:
       ...:     w.add_cell("x = 1")
       ...:     with w.open_value("df") as f:
       ...:         cloudpickle.dump(df, f)
    """

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._digest = hashlib.sha256()
        self._zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._last_size = 0

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._zip.close()
            self.path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _entry(self, name: str) -> Iterator[IO[bytes]]:
        self._digest.update(name.encode() + b"\0")
        with self._zip.open(name, "w", force_zip64=True) as raw:
            counter = HashingWriter(raw, self._digest)
            buffered = io.BufferedWriter(counter, buffer_size=1 << 20)
            yield buffered
            buffered.flush()
        self._last_size = counter.count

    def add_bytes(self, name: str, data: bytes) -> None:
        with self._entry(name) as f:
            f.write(data)

    def add_cell(self, source: str) -> None:
        self.add_bytes(CELL, source.encode())

    def add_source(self, relpath: str, data: bytes) -> None:
        self.add_bytes(f"src/{relpath}", data)
        self.manifest.sources.append(relpath)

    @contextlib.contextmanager
    def open_value(self, name: str) -> Iterator[IO[bytes]]:
        """A binary stream for the pickle of value ``name``; its size goes into the manifest."""
        with self._entry(f"values/{name}.pkl") as f:
            yield f
        self.manifest.values[name] = self._last_size

    def close(self) -> None:
        self.manifest.sha256 = self._digest.hexdigest()
        self._zip.writestr(MANIFEST, self.manifest.to_json())
        self._zip.close()


class BundleReader:
    """Read and verify a bundle (the runner's side)."""

    def __init__(self, path: Path) -> None:
        try:
            self._zip = zipfile.ZipFile(path)
            self.manifest = Manifest.from_json(self._zip.read(MANIFEST))
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as err:
            raise BundleError(f"not a batchmagic bundle: {path} ({err})") from err

    def verify(self) -> None:
        """Recompute the content hash; raise BundleError if it differs from the manifest's."""
        digest = hashlib.sha256()
        try:
            for info in self._zip.infolist():
                if info.filename == MANIFEST:
                    continue
                digest.update(info.filename.encode() + b"\0")
                with self._zip.open(info) as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
        except (zipfile.BadZipFile, OSError, EOFError) as err:  # zip's CRC check caught it first
            raise BundleError(f"bundle content is damaged: it was altered or truncated ({err})") from err
        if digest.hexdigest() != self.manifest.sha256:
            raise BundleError("bundle content does not match its manifest hash: it was altered or truncated")

    def cell(self) -> str:
        return self._zip.read(CELL).decode()

    def open_value(self, name: str) -> IO[bytes]:
        return self._zip.open(f"values/{name}.pkl")

    def extract_sources(self, dest: Path) -> None:
        for rel in self.manifest.sources:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._zip.read(f"src/{rel}"))

    def close(self) -> None:
        self._zip.close()
