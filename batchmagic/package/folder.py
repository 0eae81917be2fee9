"""The notebook's folder, mirrored in the task's working directory: a cell behaves as if it ran here.

The folder is the kernel's working directory (where the notebook is). The rules:

- **What is shipped.** Every string in the cell, and in the notebook's own functions the cell calls
  (their constants and string defaults, and those of the notebook functions they call), and every path
  value of the notebook's variables they read (a string, a ``Path``), that names an existing file or
  directory under the folder by a relative path (or a glob: ``'data/*.csv'``) is shipped, content-
  addressed and cached as ``--input`` files are, to the same relative path. A named directory ships
  whole; a glob of anything (``'*'``) names nothing. A path an ``--input`` already ships is left to it.
- **The skeleton.** The folder's directories are created in the working directory, so that writing
  into an existing folder works: at most :data:`MAX_DIRS`, :data:`MAX_DEPTH` deep, skipping hidden
  ones, virtual environments, ``node_modules``, ``__pycache__`` and ``site-packages``.
- **The cap.** What is shipped this way may total ``ship_limit`` bytes; past it the run is refused
  before anything is uploaded, with one line naming the largest path and the ``--input`` that ships it.
- **What comes back.** Every file the cell created or changed under its working directory is kept in
  the run's storage; when a single cell's run ends, they come into the notebook's folder at the same
  relative paths, smallest first, up to ``bring_back_limit`` bytes. The rest stays in storage and the
  run says how to fetch it (``run.download``). A sweep's files stay in storage, per task.
- **Never overwritten.** A local file that changed since the run was submitted (or appeared since) keeps
  its content: the run's version goes beside it, as ``name.azbatch-<run id>.ext``, and the run says so.
  A file the cell deleted is not deleted here.
- **A missing path.** A cell that fails on a file that is neither here nor there gets a line naming
  the path and how to ship it, under its traceback.
"""

from __future__ import annotations

import ast
import glob
import inspect
import os
import posixpath
import re
import shlex
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from batchmagic.errors import ConfigError
from batchmagic.package.inputs import InputSpec
from batchmagic.protocol import TaskError, TaskOutcome, sha256_file

__all__ = [
    "MAX_DIRS",
    "MAX_DEPTH",
    "FolderPlan",
    "BroughtBack",
    "plan_folder",
    "cell_strings",
    "shell_words",
    "function_strings",
    "named_paths",
    "skeleton",
    "placement",
    "beside_name",
    "bring_back",
    "explain_missing",
    "format_size",
]

MAX_DIRS = 1000  # directories of the skeleton: a kernel started in a home folder must not ship a whole disk's
MAX_DEPTH = 6
_MAX_FUNCTIONS = 100  # notebook functions followed from the cell
_MAX_PATH_ITEMS = 100  # a list of paths in a variable is read; a long list is data, not paths
_SKIPPED_DIRS = frozenset({"node_modules", "__pycache__", "site-packages"})
_GLOB = re.compile(r"[*?\[]")
_MISSING = re.compile(r"No such file or directory: '([^']+)'")


@dataclass
class FolderPlan:
    """What a run ships from the notebook's folder and what it needs to bring files back.

    ``inputs`` are :class:`~batchmagic.package.inputs.InputSpec` for the named paths (staged with ``--input``'s);
    ``baseline`` each shipped file's (size, mtime ns) when the run was planned, at ``taken_at``.
    """

    root: Path
    inputs: list[InputSpec] = field(default_factory=list)
    dirs: tuple[str, ...] = ()
    baseline: dict[str, tuple[int, int]] = field(default_factory=dict)
    taken_at: float = 0.0
    size: int = 0


@dataclass
class BroughtBack:
    """What came back into the notebook's folder, what went beside a changed file, what stayed."""

    written: list[tuple[str, int]] = field(default_factory=list)
    beside: list[tuple[str, str]] = field(default_factory=list)  # (path, where the run's version went)
    stayed: list[tuple[str, int]] = field(default_factory=list)

    def warnings(self, limit: int) -> list[str]:
        """One line for the files put beside changed ones, one for the files left in storage."""
        lines = []
        if self.beside:
            shown = ", ".join(f"{path} -> {other}" for path, other in self.beside[:5])
            lines.append(
                f"{_count(len(self.beside))} changed here while the run ran, so the run's version went beside it, "
                f"never over it: {shown}{_more(len(self.beside))}"
            )
        if self.stayed:
            total = sum(size for _path, size in self.stayed)
            shown = ", ".join(path for path, _size in self.stayed[:5])
            lines.append(
                f"{_count(len(self.stayed))} the cell wrote ({format_size(total)}) stayed in the run's storage, over "
                f"AzBatch.bring_back_limit ({format_size(limit)}): {shown}{_more(len(self.stayed))}; "
                "run.download('DEST') fetches them (in a notebook: _azbatch.download('DEST'))"
            )
        return lines

    def detail(self) -> str:
        """The panel's line for the files that came back."""
        if not self.written:
            return ""
        shown = ", ".join(path for path, _size in self.written[:5])
        return f"files back: {shown}{_more(len(self.written))}"


def _count(n: int) -> str:
    return "1 file" if n == 1 else f"{n} files"


def _more(n: int) -> str:
    return f" and {n - 5} more" if n > 5 else ""


def format_size(n: int) -> str:
    """Bytes for a person: ``512 B``, ``12.0 KB``, ``3.4 MB``, ``1.2 GB`` (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


# --- what the cell names ---


def cell_strings(source: str) -> list[str]:
    """The string constants of the cell's source (a cell that does not parse: its quoted strings, and the
    words of its shell commands, ``!ls data`` naming ``data`` as ``os.listdir('data')`` would)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython syntax (%time, !cmd): the quoted strings are still what it names
        quoted = [m.group(2) for m in re.finditer(r"(['\"])((?:(?!\1)[^\\\n])*)\1", source)]
        return quoted + shell_words(source)
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


#: A shell escape, on its own or assigned (``!cmd``, ``!!cmd``, ``out = !cmd``), or ``%sx``/``%system``.
_SHELL_LINE = re.compile(r"^\s*(?:[\w.]+(?:\s*,\s*[\w.]+)*\s*=\s*)?(?:!!?|%sx\b|%system\b)(.*)$")
#: A cell magic whose body is shell script.
_SHELL_CELL = re.compile(r"^\s*%%(?:bash|sh|script\s+(?:ba)?sh)\b")


def shell_words(source: str) -> list[str]:
    """The words of the cell's shell commands (``!ls data``, ``files = !ls data``, a ``%%bash`` cell's
    lines), which may name paths as a string constant does; options (``-la``) aside."""
    lines = source.splitlines()
    body = lines[1:] if lines and _SHELL_CELL.match(lines[0]) else []
    commands = body + [m.group(1) for m in map(_SHELL_LINE.match, lines) if m]
    words: list[str] = []
    for command in commands:
        try:
            parts = shlex.split(command, comments=True)
        except ValueError:  # an unclosed quote: the plain words still name what they name
            parts = command.split()
        words.extend(part for part in parts if not part.startswith("-"))
    return words


def _cell_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set(re.findall(r"[A-Za-z_]\w*", source))
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def _code_strings(code: types.CodeType) -> Iterator[str]:
    for const in code.co_consts:
        if isinstance(const, str):
            yield const
        elif isinstance(const, types.CodeType):
            yield from _code_strings(const)


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def function_strings(source: str, namespace: Mapping[str, Any]) -> list[str]:
    """The string constants of the notebook's functions the cell calls, and of the notebook functions
    those call (functions defined in ``__main__``: a library's are not the notebook's); their string
    default arguments; and the paths held by the notebook's variables that the cell or those functions
    read (``HOUSING_PATH = os.path.join("datasets", "housing")`` in an earlier cell: its value is known
    before the run, as a literal is)."""
    pending = [namespace.get(name) for name in _cell_names(source)]
    seen: set[int] = set()
    strings: list[str] = []
    while pending and len(seen) < _MAX_FUNCTIONS:
        value = pending.pop()
        strings.extend(_path_values(value))
        if not inspect.isfunction(value) or value.__module__ != "__main__" or id(value) in seen:
            continue
        seen.add(id(value))
        strings.extend(_code_strings(value.__code__))
        for default in [*(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).values()]:
            strings.extend(_path_values(default))
        scope = value.__globals__
        pending.extend(scope.get(name) for name in _code_names(value.__code__))
    return strings


def _path_values(value: Any) -> list[str]:
    """What a value names as a path: a string, a ``pathlib.Path``, or a short list or tuple of them."""
    items = list(value) if isinstance(value, (list, tuple)) and len(value) <= _MAX_PATH_ITEMS else [value]
    paths = (os.fspath(item) if isinstance(item, os.PathLike) else item for item in items)
    return [path for path in paths if isinstance(path, str)]


def _candidate(text: str) -> bool:
    return bool(text) and len(text) < 1024 and not any(c in text for c in "\n\r\0") and not text.startswith("~")


def named_paths(strings: Iterable[str], root: Path) -> list[str]:
    """The relative paths under ``root`` that ``strings`` name and that exist (globs expanded), the
    folder itself aside, each once, and none under another one in the list."""
    found: set[str] = set()
    for text in strings:
        if not _candidate(text) or os.path.isabs(text):
            continue
        if _GLOB.search(text):
            if not re.search(r"\w", _GLOB.sub("", text)):
                continue  # '*', '**/*': a pattern of anything names nothing in particular
            matches = [Path(m).relative_to(root).as_posix() for m in glob.glob(str(root / text))[:10_000]]
        else:
            matches = [text] if os.path.lexists(root / text) else []
        for match in matches:
            relative = posixpath.normpath(match.replace(os.sep, "/"))
            if relative in (".", "") or relative.startswith("../") or relative == "..":
                continue
            found.add(relative)
    kept: list[str] = []
    for relative in sorted(found):
        if not any(relative.startswith(parent + "/") for parent in kept):
            kept.append(relative)
    return kept


def _is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").exists() or (path / "conda-meta").is_dir()


def skeleton(
    root: Path, *, exclude: Iterable[Path] = (), max_dirs: int = MAX_DIRS, max_depth: int = MAX_DEPTH
) -> tuple[str, ...]:
    """The directories under ``root``, breadth first, as relative paths: at most ``max_dirs``,
    ``max_depth`` deep; hidden ones, virtual environments, caches and ``exclude`` skipped."""
    excluded = {Path(p).resolve() for p in exclude}
    found: list[str] = []
    level: list[Path] = [root]
    for _depth in range(max_depth):
        below: list[Path] = []
        for here in level:
            try:
                entries = sorted(os.scandir(here), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or entry.name in _SKIPPED_DIRS or not entry.is_dir(follow_symlinks=False):
                    continue
                path = Path(entry.path)
                if path.resolve() in excluded or _is_venv(path):
                    continue
                found.append(path.relative_to(root).as_posix())
                if len(found) >= max_dirs:
                    return tuple(found)
                below.append(path)
        level = below
    return tuple(found)


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not {"__pycache__", ".git"} & set(p.parts))


def _covered(relative: str, path: Path, inputs: Iterable[InputSpec]) -> bool:
    """Whether an ``--input`` already ships this path (its source) or fills its destination."""
    resolved = path.resolve()
    for spec in inputs:
        if spec.remote:
            if relative == spec.dest or relative.startswith(spec.dest + "/"):
                return True
            continue
        source = Path(spec.source)
        if resolved == source or source in resolved.parents or relative == spec.dest:
            return True
    return False


def plan_folder(
    cell: str,
    namespace: Mapping[str, Any],
    root: Path,
    *,
    limit: int,
    inputs: Iterable[InputSpec] = (),
    exclude: Iterable[Path] = (),
) -> FolderPlan:
    """What the run ships from ``root`` (the notebook's folder): the paths the cell names, its skeleton.

    Raises
    ------
    ConfigError
        The named paths total more than ``limit`` bytes: the line names the largest and its ``--input``.
    """
    given = list(inputs)
    plan = FolderPlan(root=root, taken_at=time.time())
    sizes: dict[str, int] = {}
    for relative in named_paths([*cell_strings(cell), *function_strings(cell, namespace)], root):
        path = root / relative
        if _covered(relative, path, given):
            continue
        files = _files_of(path)
        for file in files:
            stat = file.stat()
            plan.baseline[file.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
        sizes[relative] = sum(f.stat().st_size for f in files)
        plan.inputs.append(InputSpec(str(path.resolve()), relative))
    plan.size = sum(sizes.values())
    if plan.size > limit:
        largest = max(sizes, key=lambda k: sizes[k])
        raise ConfigError(
            f"{largest} is {format_size(sizes[largest])}, and the files this cell names in the notebook's folder "
            f"total {format_size(plan.size)}, over AzBatch.ship_limit ({format_size(limit)}): ship it with "
            f"--input {largest}:{largest} (uploaded once, cached), or raise %config AzBatch.ship_limit"
        )
    plan.dirs = skeleton(root, exclude=exclude)
    return plan


# --- what comes back ---


def beside_name(relative: str, run_id: str) -> str:
    """``images/plot.png`` -> ``images/plot.azbatch-<run id>.png``: where a run's version goes when
    the local file changed meanwhile."""
    head, name = posixpath.split(relative)
    stem, dot, suffix = name.rpartition(".")
    new = f"{stem}.azbatch-{run_id}.{suffix}" if dot and stem else f"{name}.azbatch-{run_id}"
    return posixpath.join(head, new) if head else new


def placement(local: Path, relative: str, size: int, sha256: str, plan: FolderPlan) -> str:
    """Where a file the cell wrote goes: ``"write"`` (new here, or unchanged since the run was
    submitted: as the cell would have done here), ``"same"`` (already this content), or ``"beside"``
    (the local file changed, or appeared, while the run ran: it is never overwritten)."""
    if not os.path.lexists(local):
        return "write"
    if not local.is_file() or local.is_symlink():
        return "beside"
    stat = local.stat()
    if stat.st_size == size and sha256_file(local) == sha256:
        return "same"
    known = plan.baseline.get(relative)
    if known is not None:
        return "write" if known == (stat.st_size, stat.st_mtime_ns) else "beside"
    # Not shipped: the cell never saw it. Had the cell run here it would have replaced what was there
    # before the run; what appeared or changed since is someone else's.
    return "write" if stat.st_mtime < plan.taken_at else "beside"


def bring_back(
    plan: FolderPlan,
    changed: Iterable[tuple[str, int, str]],
    fetch: Callable[[str, Path], None],
    *,
    run_id: str,
    limit: int,
) -> BroughtBack:
    """Bring the files the cell created or changed into the notebook's folder, smallest first, up to
    ``limit`` bytes; ``fetch(relative, path)`` downloads one from the run's storage."""
    report = BroughtBack()
    budget = limit
    for relative, size, digest in sorted(changed, key=lambda item: (item[1], item[0])):
        local = plan.root / relative
        if plan.root.resolve() not in local.resolve().parents:
            continue  # a name that leaves the folder (a symlink here): not the cell's to write
        where = placement(local, relative, size, digest, plan)
        if where == "same":
            continue
        if size > budget:
            report.stayed.append((relative, size))
            continue
        budget -= size
        target = relative if where == "write" else beside_name(relative, run_id)
        _fetch_into(fetch, relative, plan.root / target)
        if where == "write":
            report.written.append((relative, size))
        else:
            report.beside.append((relative, target))
    return report


def _fetch_into(fetch: Callable[[str, Path], None], relative: str, target: Path) -> None:
    """Download beside the target, then rename: a reader never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.azbatch-part")
    try:
        fetch(relative, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def explain_missing(outcome: TaskOutcome, root: Path) -> TaskOutcome:
    """A cell that failed on a relative path that does not exist gets a line, under its traceback,
    naming the path and how to ship it."""
    error = outcome.error
    if error is None or error.type != "FileNotFoundError":
        return outcome
    match = _MISSING.search(error.message)
    if match is None or os.path.isabs(match.group(1)):
        return outcome
    path = match.group(1)
    if os.path.lexists(root / path):
        hint = (
            f"{path} is in the notebook's folder, but the cell does not name it in a string, so it was not "
            f"shipped: name it literally, or ship it with --input {path}:{path}"
        )
    else:
        hint = (
            f"{path} is neither in the notebook's folder ({root}) nor where the cell ran: put it in the "
            f"notebook's folder (the files a cell names are shipped, its folders are created), or ship it "
            f"with --input SOURCE:{path}"
        )
    explained = TaskError(error.type, f"{error.message}\n{hint}", (*error.traceback, f"\n{hint}\n"))
    return replace(outcome, error=explained)
