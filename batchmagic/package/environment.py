"""The cell's environment, as a spec a training image is built from and tagged by.

The spec holds the kernel's Python major.minor, the base image, batchmagic's own version, and
the pinned requirements: the distributions behind every module the cell imports and every module
its shipped values need to unpickle (module -> distribution through
:func:`importlib.metadata.packages_distributions`, pinned to the versions installed here), plus
``--requirements FILE`` and ``--pip "pkg==x"``. The standard library and batchmagic are left out;
local or editable distributions (not on PyPI) are noted as shipped as source instead of pinned.

A GPU run's spec (``gpu=True``) holds the builds a GPU node needs instead of the kernel's CPU or macOS ones
(:mod:`batchmagic.package.cuda`: ``torch 2.5.1+cpu`` -> ``torch==2.5.1+cu124`` from PyTorch's cu124 index), the
package indexes they come from, and what changed (:attr:`EnvironmentSpec.notes`, for the plan); the guard
takes those differences as expected.

The spec's hash names the image: ``<registry>/<repository>:env-<hash12>``; the spec itself goes
into the image's labels, where the version guard (:func:`check_compatible`) reads it back.

Examples
--------
In [1]: spec = environment_spec(["tabulate"], base_image="python:3.11-slim")
In [2]: spec.tag("127.0.0.1:5000/batchmagic")
Out[2]: '127.0.0.1:5000/batchmagic:env-3f9a0c12d4e5'
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import json
import pickletools
import re
import sys
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchmagic._version import __version__
from batchmagic.errors import ConfigError
from batchmagic.package.cuda import expected_on_node, map_for_gpu, torch_index
from batchmagic.settings import DEFAULT_BASE_IMAGE

__all__ = [
    "DEFAULT_BASE_IMAGE",
    "EnvironmentSpec",
    "LABEL",
    "check_compatible",
    "environment_spec",
    "parse_pip",
    "read_requirements",
    "shipped_modules",
    "split_registry",
]

DEFAULT_REPOSITORY = "batchmagic"
#: The image label that holds the spec (JSON).
LABEL = "org.batchmagic.environment"
FORMAT = 1
# What the runner itself needs in the image (the `runner` extra), always pinned to the kernel's versions:
# cloudpickle in particular must match for the shipped objects to unpickle.
RUNNER_DISTRIBUTIONS = ("cloudpickle", "azure-storage-blob")
_NEVER = frozenset({"batchmagic", "__main__", "__future__", "builtins"})
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")
_SPECIFIER = re.compile(r"^((===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _module_distributions() -> dict[str, list[str]]:
    return dict(md.packages_distributions())


def _local_source(dist: md.Distribution) -> bool:
    """True for an editable or local-directory install (not something pip can fetch from an index)."""
    try:
        text = dist.read_text("direct_url.json")
    except Exception:  # noqa: BLE001 - a broken or odd distribution: treat it as an ordinary one
        return False
    if not text:
        return False
    try:
        info = json.loads(text)
    except ValueError:
        return False
    return bool(info.get("dir_info")) or str(info.get("url", "")).startswith("file:")


@dataclass(frozen=True)
class EnvironmentSpec:
    """What a training image holds; its hash is the image's tag.

    Attributes
    ----------
    python : str
        The kernel's Python, ``"3.11"``.
    base_image : str
        The image the training image is built FROM.
    batchmagic : str
        batchmagic's version and a digest of its sources (the runner in the image is this copy).
    requirements : tuple of str
        Pinned requirements, sorted: ``("cloudpickle==3.1.1", "tabulate==0.9.0")``.
    source : tuple of str
        Local/editable distributions the cell uses: not installed in the image, shipped as source.
    gpu : bool
        Built for a GPU node: the requirements are the CUDA builds (:mod:`batchmagic.package.cuda`).
    index_urls : tuple of str
        Package indexes besides PyPI the requirements come from (PyTorch's CUDA wheels).
    notes : tuple of str
        What the GPU mapping changed, one line each (for the plan; not part of the hash).
    pip_index : str
        An index pip uses besides PyPI in the build (``AzBatch.pip_extra_index_url``; not part of the hash).
    """

    python: str
    base_image: str
    batchmagic: str
    requirements: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    format: int = FORMAT
    gpu: bool = False
    index_urls: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)
    # Where pip finds the pinned versions, not what they are: not part of the hash (or the tag).
    pip_index: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": self.format,
            "python": self.python,
            "base_image": self.base_image,
            "batchmagic": self.batchmagic,
            "requirements": list(self.requirements),
            "source": list(self.source),
        }
        if self.gpu:  # only when set: a CPU spec keeps the hash (and the image tag) it always had
            data["gpu"] = True
            data["index_urls"] = list(self.index_urls)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EnvironmentSpec:
        data = json.loads(text)
        return cls(
            python=str(data["python"]),
            base_image=str(data.get("base_image", "")),
            batchmagic=str(data.get("batchmagic", "")),
            requirements=tuple(data.get("requirements") or ()),
            source=tuple(data.get("source") or ()),
            format=int(data.get("format", FORMAT)),
            gpu=bool(data.get("gpu", False)),
            index_urls=tuple(data.get("index_urls") or ()),
        )

    @property
    def hash(self) -> str:
        """12 hex digits of the spec's sha256: the same environment gives the same tag."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def tag(self, registry: str) -> str:
        """``<registry>/<repository>:env-<hash12>`` (see :func:`split_registry`)."""
        host, repository = split_registry(registry)
        return f"{host}/{repository}:env-{self.hash}" if host else f"{repository}:env-{self.hash}"

    @property
    def pins(self) -> dict[str, str]:
        """Normalized distribution name -> pinned version, for the ``==`` requirements."""
        found = {}
        for req in self.requirements:
            name, sep, version = req.partition("==")
            if sep:
                found[_normalize(name.split("[")[0])] = version.strip()
        return found

    def requirements_txt(self) -> str:
        """The requirements file the image installs: the extra indexes first (pip reads them from the file)."""
        indexes = "".join(f"--extra-index-url {url}\n" for url in self.index_urls)
        return indexes + "".join(f"{r}\n" for r in self.requirements)


def check_pip_index(url: str) -> str:
    """``AzBatch.pip_extra_index_url`` checked: an http(s) URL with no credentials in it ("" stays "").

    Raises
    ------
    ConfigError
        Not an http(s) URL, or a user name or password in it (the build would keep it in the image).
    """
    from urllib.parse import urlsplit

    url = url.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.username or parts.password or parts.query:
        raise ConfigError(
            "BATCHMAGIC_PIP_EXTRA_INDEX_URL has a user name or password (or a query: a token?) in it, "
            "which the image would keep: "
            "give an index that needs no credentials from the build (a mirror reachable from where you build)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"BATCHMAGIC_PIP_EXTRA_INDEX_URL {url!r} is not an index URL: write it like https://pypi.example.com/simple"
        )
    return url


def split_registry(registry: str) -> tuple[str, str]:
    """``"127.0.0.1:5000/batchmagic"`` -> ``("127.0.0.1:5000", "batchmagic")``; a bare host gets the
    repository ``batchmagic``; an empty value gives ``("", "batchmagic")`` (a local-only image)."""
    registry = registry.strip().rstrip("/")
    for prefix in ("https://", "http://"):
        if registry.startswith(prefix):
            registry = registry[len(prefix) :]
    host, _, repository = registry.partition("/")
    if host and not ("." in host or ":" in host or host == "localhost"):
        raise ConfigError(
            f"BATCHMAGIC_REGISTRY {registry!r} does not start with a registry host: "
            "write it like myregistry.azurecr.io/batchmagic or 127.0.0.1:5000/batchmagic"
        )
    repository = repository.lower() or DEFAULT_REPOSITORY
    if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", repository):
        raise ConfigError(f"BATCHMAGIC_REGISTRY repository {repository!r} is not a valid image repository name")
    return host, repository


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@functools.cache
def batchmagic_source_digest() -> str:
    """Version plus 8 hex digits of the package's sources: the runner in the image is this copy."""
    root = Path(__file__).parent.parent  # the batchmagic package
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:8]}"


# --- what the cell needs ---


def pickled_modules(data: bytes) -> set[str]:
    """Top-level modules a pickle refers to (its GLOBAL / STACK_GLOBAL opcodes): what unpickling imports."""
    found: set[str] = set()
    strings: list[str] = []
    memo: dict[int, Any] = {}
    try:
        last: str | None = None  # the string on top of the stack, if the last push was one
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                last = str(arg)
                strings.append(last)
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = last
                continue
            if name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg or 0)] = last
                continue
            if name in ("BINGET", "LONG_BINGET", "GET"):
                value = memo.get(int(arg or 0))
                last = value if isinstance(value, str) else None
                if last is not None:
                    strings.append(last)
                continue
            last = None
            if name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(strings[-2].split(".")[0])
            elif name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.add(arg.split(" ")[0].split(".")[0])
    except Exception:  # noqa: BLE001 - a truncated or exotic pickle: keep what was found
        pass
    return found


def shipped_modules(
    bundle: Path | str, imported: Iterable[str] = (), modules: Mapping[str, str] | None = None
) -> set[str]:
    """Top-level modules a bundle needs: those the cell imports, those it gets as module values,
    and those its pickled values refer to."""
    found = {m.split(".")[0] for m in imported}
    found |= {m.split(".")[0] for m in (modules or {}).values()}
    with zipfile.ZipFile(bundle) as archive:
        for info in archive.infolist():
            if info.filename.startswith("values/"):
                found |= pickled_modules(archive.read(info))
    return found


def distributions_for(modules: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Installed distributions behind ``modules``: ({name: version} for index packages, [local ones]).

    The standard library, batchmagic and modules no distribution provides (local ``.py`` files,
    which travel as source) are left out.
    """
    mapping = _module_distributions()
    pinned: dict[str, str] = {}
    local: list[str] = []
    for module in sorted(set(modules)):
        if not module or module in _NEVER or module in sys.stdlib_module_names:
            continue
        for dist_name in mapping.get(module, []):
            if _normalize(dist_name) == "batchmagic":
                continue
            try:
                dist = md.distribution(dist_name)
            except md.PackageNotFoundError:
                continue
            name = dist.metadata["Name"] or dist_name
            if _local_source(dist):
                local.append(name)
            else:
                pinned[name] = dist.version
    return pinned, sorted(set(local))


# --- --requirements and --pip ---


def _check_requirement(line: str, where: str) -> str:
    text = line.split(" #", 1)[0].strip()
    match = _REQUIREMENT.match(text)
    rest = match.group(3).split(";", 1)[0].strip() if match else ""
    if not match or (rest and not _SPECIFIER.match(rest)):
        raise ConfigError(f"{where}: {line.strip()!r} is not a requirement like pkg==1.2 or pkg>=1.0")
    return text


def read_requirements(path: str | Path) -> list[str]:
    """The requirements in a pip requirements file (names with optional version specifiers).

    Raises
    ------
    ConfigError
        The file is missing or unreadable, or a line is not a plain requirement (options such as
        ``-e`` or ``--index-url`` are not supported).
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--requirements {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--requirements {path} cannot be read ({err})") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found.append(_check_requirement(line, f"--requirements {path} line {number}"))
    return found


def parse_pip(items: Iterable[str]) -> list[str]:
    """``--pip`` values, each checked like a requirements line."""
    return [_check_requirement(item, "--pip") for item in items if item.strip()]


# --- the spec ---


def environment_spec(
    modules: Iterable[str] = (),
    *,
    base_image: str = "",
    requirements: str | Path | None = None,
    pip: Iterable[str] = (),
    gpu: bool = False,
    pip_index: str = "",
) -> EnvironmentSpec:
    """The spec of the image a cell needs.

    Parameters
    ----------
    modules : iterable of str
        Top-level modules the cell and its shipped values use (see :func:`shipped_modules`).
    base_image : str
        The image to build FROM; default :data:`DEFAULT_BASE_IMAGE`.
    requirements : path, optional
        A pip requirements file to add.
    pip : iterable of str
        More requirements (``--pip``).
    gpu : bool
        For a GPU node: the kernel's framework builds mapped to their CUDA builds (:mod:`batchmagic.package.cuda`).
    pip_index : str
        An index the build's pip uses besides PyPI (:func:`check_pip_index`).

    Raises
    ------
    ConfigError
        A requirements file that is missing or unparsable, or a malformed ``--pip``.
    """
    extra = read_requirements(requirements) if requirements else []
    extra += parse_pip(pip)
    pinned, local = distributions_for(modules)
    for name in RUNNER_DISTRIBUTIONS:
        try:
            pinned.setdefault(md.distribution(name).metadata["Name"] or name, md.version(name))
        except md.PackageNotFoundError:
            continue
    explicit = {_normalize(_REQUIREMENT.match(r).group(1)) for r in extra if _REQUIREMENT.match(r)}  # type: ignore[union-attr]
    kept = {name: version for name, version in pinned.items() if _normalize(name) not in explicit}
    indexes: list[str] = []
    notes: tuple[str, ...] = ()
    if gpu:
        builds = map_for_gpu(kept)
        requirements_list, indexes, notes = list(builds.requirements), list(builds.index_urls), builds.notes
        # A CUDA build named by --pip (torch==2.5.1+cu121) comes from its index too.
        for tag in sorted({m.group(1) for r in extra if (m := re.search(r"\+(cu\d+)\b", r))}):
            if torch_index(tag) not in indexes:
                indexes.append(torch_index(tag))
    else:
        requirements_list = [f"{name}=={version}" for name, version in kept.items()]
    requirements_list += extra
    return EnvironmentSpec(
        python=python_version(),
        base_image=base_image or DEFAULT_BASE_IMAGE,
        batchmagic=batchmagic_source_digest(),
        requirements=tuple(sorted(set(requirements_list), key=str.lower)),
        source=tuple(local),
        gpu=gpu,
        index_urls=tuple(indexes),
        notes=notes,
        pip_index=check_pip_index(pip_index),
    )


# --- the version guard ---


def check_compatible(image: str, labels: Mapping[str, str] | None, needed: Iterable[str]) -> None:
    """The version guard: the kernel's Python and the versions of ``needed`` distributions against
    the spec in an image's labels.

    Parameters
    ----------
    image : str
        The image's name, for the message.
    labels : mapping or None
        The image's labels; without a batchmagic spec there is nothing to compare (no error).
    needed : iterable of str
        Top-level modules needed to unpickle the shipped objects (plus what the cell imports).

    Raises
    ------
    ConfigError
        One line naming each mismatched package (and Python) with the kernel's and the image's versions.
    """
    text = (labels or {}).get(LABEL)
    if not text:
        return
    try:
        spec = EnvironmentSpec.from_json(text)
    except (ValueError, KeyError, TypeError):
        return
    problems = []
    if spec.python != python_version():
        problems.append(f"Python {python_version()} in the kernel, {spec.python} in the image")
    pinned, _local = distributions_for(needed)
    for name in RUNNER_DISTRIBUTIONS[:1]:  # cloudpickle: every bundle is unpickled with it
        try:
            pinned.setdefault(name, md.version(name))
        except md.PackageNotFoundError:
            pass
    problems += _mismatches(spec, pinned)
    if problems:
        raise ConfigError(
            f"image {image} does not match this kernel: {'; '.join(problems)}. "
            "Drop --image to build a matching one, or install the image's versions here"
        )


def _mismatches(spec: EnvironmentSpec, pinned: Mapping[str, str]) -> list[str]:
    """The kernel's pins the image does not hold. On a GPU image, a framework's CUDA build of the same
    version (``torch 2.5.1+cu124`` for the kernel's ``2.5.1+cpu``, ``tensorflow`` for ``tensorflow-macos``)
    is what was asked for, not a mismatch; ``tensorflow-metal`` is expected to be absent."""
    pins = spec.pins
    torch_version = next((v for n, v in pinned.items() if _normalize(n) == "torch"), None)
    problems = []
    for name, version in sorted(pinned.items(), key=lambda item: item[0].lower()):
        want = expected_on_node(name, version, torch_version) if spec.gpu else (_normalize(name), version)
        if want is None:
            continue
        dist, wanted = want
        theirs = pins.get(dist)
        if theirs is None:
            if not any(_normalize(r).startswith(dist) for r in spec.requirements):
                problems.append(f"{name} {version} in the kernel, not in the image")
        elif theirs != wanted:
            problems.append(f"{name} {version} in the kernel, {theirs} in the image")
    return problems
