"""Cell + namespace -> bundle: decide what the cell needs and package it.

Names the cell reads (see :mod:`batchmagic.package.analysis`) that exist in the namespace are shipped:
modules as imports, everything else by value with cloudpickle (functions and classes defined in
the notebook travel by value; those of installed packages by reference). Local ``.py`` modules
and packages under the working directory travel as source files.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import importlib.util
import logging
import shutil
import sys
import types
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from batchmagic._version import __version__
from batchmagic.config import working_directory
from batchmagic.errors import CaptureError
from batchmagic.package.analysis import CellAnalysis, StarImportError, analyze
from batchmagic.package.bundle import CELL_FILENAME, BundleWriter, HashingWriter, Manifest
from batchmagic.package.ipysyntax import TIMEIT_SCOPE, for_analysis, refused_magic, to_python
from batchmagic.package.plots import plot_settings
from batchmagic.package.randomness import global_state
from batchmagic.protocol import Layout

__all__ = ["CapturedCell", "UndefinedNameWarning", "capture"]

log = logging.getLogger("batchmagic.capture")

# Names IPython puts in every user namespace; a cell reading them means the kernel's, not a value.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "_ih", "_oh", "_dh", "_i", "_ii", "_iii"})
_NEVER_SHIP_MODULES = frozenset({"batchmagic", "__main__"})
OBJECT_THRESHOLD = 16 << 20  # bytes: bigger pickled values travel as content-addressed objects


class UndefinedNameWarning(UserWarning):
    """The cell reads a name that is defined nowhere: it will raise NameError remotely."""


@dataclass
class CapturedCell:
    """The result of :func:`capture`: a bundle on disk and what went into it."""

    path: Path
    manifest: Manifest
    analysis: CellAnalysis
    size: int
    objects: dict[str, ExternalObject] = field(default_factory=dict)  # large values, outside the bundle

    @property
    def outputs(self) -> list[str]:
        return self.manifest.outputs if self.manifest.outputs is not None else self.manifest.bound


def check_cell(source: str) -> CellAnalysis:
    """Parse and analyze a cell, turning its problems into :class:`CaptureError`."""
    if not source.strip():
        raise CaptureError("the cell is empty: put the code to run below the %%azbatch line")
    python = to_python(source)  # %time, !cmd...: as the kernel would compile the cell
    refused = refused_magic(python)
    if refused:
        raise CaptureError(f"{refused}; nothing was submitted")
    try:
        if python.rstrip() == source.rstrip():
            return analyze(source, filename=CELL_FILENAME)
        analysis = analyze(for_analysis(python), filename=CELL_FILENAME)
        analysis.bound = [name for name in analysis.bound if name != TIMEIT_SCOPE]
        analysis.ipython = True
        return analysis
    except SyntaxError as err:
        where = f"line {err.lineno}" if err.lineno else "the cell"
        raise CaptureError(f"syntax error at {where}: {err.msg}; nothing was submitted") from err
    except StarImportError as err:
        raise CaptureError(
            f"line {err.lineno}: 'from {err.module} import *' cannot be captured reliably; "
            f"import the names you use explicitly (from {err.module} import a, b)"
        ) from err


def capture(
    source: str,
    namespace: Mapping[str, Any],
    path: Path,
    *,
    outputs: Iterable[str] | None = None,
    provided: Iterable[str] = (),
    root: Path | None = None,
    object_threshold: int = OBJECT_THRESHOLD,
    first_line: int = 1,
    track_changes: bool = True,
) -> CapturedCell:
    """Package a cell and what it reads from ``namespace`` into a bundle at ``path``.

    Parameters
    ----------
    source : str
        The cell's code.
    namespace : mapping
        The namespace it would run in (the notebook's ``user_ns``).
    path : Path
        Where to write the bundle.
    outputs : iterable of str, optional
        Names to bring back; each must be one the cell binds or reads. Default: every bound name, and
        every value it reads and changes in place.
    provided : iterable of str, optional
        Names each task gets from elsewhere (a sweep's parameters): not shipped from the namespace.
    root : Path, optional
        Local modules are those whose files lie under this directory. Default: the working directory.
    object_threshold : int
        Values whose pickle is bigger than this many bytes become objects of their own
        (:class:`ExternalObject`, beside the bundle) instead of bundle entries.
    first_line : int
        The line number of the cell's first line where it was written (2 under a ``%%azbatch`` line).
    track_changes : bool
        Record the hash of each shipped value that could change in place (:func:`may_change`), so the
        runner sends back those the cell changed (``grid.fit(X, y)``, ``d['b'] = 2``). Off for sweeps.

    Raises
    ------
    CaptureError
        Empty cell, syntax error, star import, ``outputs`` naming a name the cell never binds,
        or a value that cannot be pickled. Nothing is left on disk.
    """
    analysis = check_cell(source)
    wanted = _wanted(outputs, analysis)
    given = set(provided)
    values = {k: v for k, v in namespace.items() if k not in given}
    to_ship: dict[str, Any] = {}
    modules: dict[str, str] = {}
    for name in analysis.inputs:
        if name in _IPYTHON_NAMES or name not in values:
            continue
        value = values[name]
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
        else:
            to_ship[name] = value

    _warn_undefined(analysis, values, given)
    manifest = Manifest(
        batchmagic=__version__,
        modules=modules,
        bound=analysis.bound,
        outputs=wanted,
        deleted=sorted(analysis.deleted),
        first_line=first_line,
        ipython=analysis.ipython,
        plot_settings=plot_settings(),
        random_state=global_state() if track_changes else "",  # a sweep's tasks draw apart, as now
    )
    root = Path(root or working_directory()).resolve()
    objects: dict[str, ExternalObject] = {}
    with BundleWriter(path, manifest) as writer:
        writer.add_cell(source)
        for name, value in to_ship.items():
            pickled = _pickle_to_file(name, value, Path(path).with_name(f"{Path(path).name}.{name}.pkl"))
            if track_changes and name not in analysis.bound and may_change(value):
                manifest.tracked[name] = pickled.sha256  # what the runner compares the value with after the cell
            if pickled.size > object_threshold:
                # Its own content-addressed object: uploaded once, however many runs ship it.
                objects[name] = pickled
                manifest.objects[name] = {"sha256": pickled.sha256, "size": pickled.size}
                continue
            with writer.open_value(name) as f, open(pickled.path, "rb") as src:
                shutil.copyfileobj(src, f, length=1 << 20)
            pickled.path.unlink()
        for relpath, data in _local_sources(analysis, values, root):
            writer.add_source(relpath, data)
    return CapturedCell(
        path=Path(path), manifest=manifest, analysis=analysis, size=Path(path).stat().st_size, objects=objects
    )


def _warn_undefined(analysis: CellAnalysis, values: Mapping[str, Any], given: set[str]) -> None:
    """A name the cell reads that is defined nowhere: a warning now, rather than a NameError remotely."""
    undefined = [
        n
        for n in analysis.inputs
        if n not in values
        and n not in given
        and n not in vars(builtins)
        and n not in analysis.bound
        and n not in _IPYTHON_NAMES
    ]
    for name in undefined:
        warnings.warn(
            f"the cell reads `{name}`, which is defined nowhere; it will raise NameError remotely",
            UndefinedNameWarning,
            stacklevel=3,
        )


def _wanted(outputs: Iterable[str] | None, analysis: CellAnalysis) -> list[str] | None:
    """``--out``'s names, each one the cell binds or reads (a value it may change in place)."""
    if outputs is None:
        return None
    wanted = list(dict.fromkeys(outputs))
    never = [n for n in wanted if n not in analysis.bound and n not in analysis.inputs]
    if never:
        raise CaptureError(
            f"--out names {', '.join(never)}, which the cell neither assigns nor uses; "
            f"it assigns: {', '.join(analysis.bound) or 'nothing'}"
        )
    return wanted


_ATOMS = (type(None), bool, int, float, complex, str, bytes, range, type(...))
_NEVER_CHANGED = (
    types.ModuleType,
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    functools.partial,
)


def may_change(value: Any, depth: int = 0) -> bool:
    """Whether using ``value`` in a cell could change it in place, so that it must be compared after the
    cell. Modules, classes and functions are never "changed" by being used (a class's attributes, a
    function's defaults stay the notebook's); numbers, strings and tuples of them cannot change."""
    if isinstance(value, _ATOMS) or isinstance(value, _NEVER_CHANGED):
        return False
    if isinstance(value, tuple | frozenset) and depth < 3:
        return any(may_change(item, depth + 1) for item in value)
    return True


@dataclass
class ExternalObject:
    """A shipped value pickled to a file of its own, named in the store by its sha256."""

    path: Path
    sha256: str
    size: int

    @property
    def key(self) -> str:
        return Layout.object(self.sha256)


def _pickle_to_file(name: str, value: Any, path: Path) -> ExternalObject:
    digest = hashlib.sha256()
    try:
        with open(path, "wb") as raw:
            writer = HashingWriter(raw, digest)
            cloudpickle.dump(value, writer, protocol=5)
            size = writer.count
    except Exception as err:
        path.unlink(missing_ok=True)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CaptureError(
            f"cannot ship `{name}` ({_type_name(value)}): it cannot be pickled ({reason}); "
            "create it inside the cell instead"
        ) from err
    return ExternalObject(path, digest.hexdigest(), size)


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


# --- local modules ---


def _is_local_file(file: str | None, root: Path) -> bool:
    if not file:
        return False
    if file.startswith("/"):
        return _is_local_absolute(file, root)
    return _under(Path(file).resolve(), root)


@functools.lru_cache(maxsize=8192)
def _is_local_absolute(file: str, root: Path) -> bool:
    """:func:`_is_local_file` for an imported module's absolute file, once per kernel and folder: every
    submit asks for each of the kernel's modules, and ``Path.is_relative_to`` costs 15 ms for them all."""
    return _under(_resolved(file), root)


def _under(path: Path, root: Path) -> bool:
    if path == root or not path.is_relative_to(root):  # strictly under root (path.parents builds every parent)
        return False
    return not any(part in ("site-packages", "dist-packages") for part in path.parts)


@functools.lru_cache(maxsize=8192)
def _resolved(file: str) -> Path:
    """An imported module's absolute file, resolved once per kernel: every submit asks for each of the
    kernel's modules (about a millisecond each, a kernel has hundreds)."""
    return Path(file).resolve()


def _module_file(name: str) -> str | None:
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec and spec.has_location else None


def _module_of(value: Any) -> str | None:
    if isinstance(value, types.ModuleType):
        return value.__name__
    owner = value if isinstance(value, type | types.FunctionType) else type(value)
    return getattr(owner, "__module__", None)


def _local_modules(root: Path) -> dict[str, str]:
    """Top-level local modules already imported in this process: name -> file."""
    found: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        if "." in name or name in _NEVER_SHIP_MODULES:
            continue
        file = getattr(module, "__file__", None)
        if file is not None and _is_local_file(file, root):
            found[name] = file
    return found


def _local_sources(analysis: CellAnalysis, values: Mapping[str, Any], root: Path) -> list[tuple[str, bytes]]:
    """Source files of local modules, if the cell or the namespace uses any.

    Local modules may import each other, so when one is used, every local module this process
    has imported goes along (plus any the cell imports that are not imported yet).
    """
    local = _local_modules(root)
    for name in analysis.imported_modules:
        if name not in local and name not in _NEVER_SHIP_MODULES:
            file = _module_file(name)
            if _is_local_file(file, root):
                local[name] = file  # type: ignore[assignment]
    if not local:
        return []
    used = set(analysis.imported_modules)
    for value in values.values():
        module = _module_of(value)
        if module:
            used.add(module.split(".")[0])
    if not used & set(local):
        return []

    files: list[tuple[str, bytes]] = []
    for name, file in sorted(local.items()):
        path = Path(file).resolve()
        if path.name == "__init__.py":
            package_dir = path.parent
            base = package_dir.parent
            for source in sorted(package_dir.rglob("*.py")):
                if "__pycache__" not in source.parts:
                    files.append((source.relative_to(base).as_posix(), source.read_bytes()))
        elif path.suffix == ".py":
            files.append((path.name, path.read_bytes()))
        else:
            log.warning("local module %s is not pure Python (%s); it is not shipped", name, path)
    return files
