"""The builds a GPU node needs, from the builds installed in the kernel.

A laptop has the CPU build of a framework (``torch 2.5.1+cpu``), or the macOS wheel (``torch 2.5.1``,
``tensorflow-macos``), or none of the CUDA extras; the training image of a GPU run needs the Linux CUDA
build of the same version. :func:`map_for_gpu` turns the kernel's pins into the node's, with the package
index each needs, and one note per change for the plan. The rules (pure: no import of the frameworks):

- ``torch``, ``torchvision``, ``torchaudio``: the same version with the CUDA local tag of that release
  (``+cu124`` for 2.4-2.5, ``+cu126`` from 2.6; :data:`TORCH_CUDA`), from PyTorch's index for it
  (``https://download.pytorch.org/whl/cu124``). A build already for CUDA (``+cu121``) keeps its tag and
  gets its index.
- ``jax``: ``jax[cuda12]`` at the same version (the CUDA plugin wheels are on PyPI from jax 0.4.26);
  ``jaxlib`` stays pinned.
- ``tensorflow``, ``tensorflow-cpu``, ``tensorflow-macos``: ``tensorflow[and-cuda]`` at the same version;
  ``tensorflow-metal`` (Apple's GPU plugin) is dropped.
- ``cupy`` (a source build) and ``cupy-cuda11x``: ``cupy-cuda12x`` at the same version.

:func:`expected_on_node` gives the guard the same answer for one distribution: what the node's image
holds for the kernel's ``torch 2.5.1+cpu`` is ``torch 2.5.1+cu124``, an expected difference.

Examples
--------
In [1]: map_for_gpu({"torch": "2.5.1+cpu", "numpy": "2.1.3"}).requirements
Out[1]: ('numpy==2.1.3', 'torch==2.5.1+cu124')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CUDA_IMAGES",
    "GpuBuilds",
    "TORCH_CUDA",
    "cuda_base_image",
    "expected_on_node",
    "map_for_gpu",
    "torch_index",
]

#: The kernel's Python -> the CUDA runtime image a GPU run's training image is built FROM (``AzBatch.gpu_base_image``
#: overrides it): NVIDIA's CUDA 12.6 with cuDNN on the Ubuntu whose packages have that Python (the Dockerfile
#: installs it from them). CUDA 12.6 runs on the 525+ drivers of Batch's GPU images (minor-version compatibility).
CUDA_IMAGES: dict[str, str] = {
    "3.10": "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04",
    "3.11": "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04",
    "3.12": "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04",
}

#: torch minor release -> the CUDA tag of its wheels batchmagic installs on a GPU node. From 2.6 on,
#: cu126: its wheels run on the 525+ drivers of every current Batch GPU image (CUDA 12 minor-version
#: compatibility), where the newer tags (cu128, cu130) need a 570+ or 580+ driver.
TORCH_CUDA: dict[tuple[int, int], str] = {
    (1, 13): "cu117",
    (2, 0): "cu118",
    (2, 1): "cu121",
    (2, 2): "cu121",
    (2, 3): "cu121",
    (2, 4): "cu124",
    (2, 5): "cu124",
}
_TORCH_LATEST = "cu126"
_TORCH_FAMILY = {"torch": 0, "torchvision": 0, "torchaudio": 0}
# torchvision and torchaudio versions go with torch's: their own number, the same CUDA tag.
_TORCH_INDEX = "https://download.pytorch.org/whl/"
_VERSION = re.compile(r"^(\d+)\.(\d+)")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cuda_base_image(python: str) -> str:
    """The default base of a GPU run's image for the kernel's ``python`` (``"3.12"``): :data:`CUDA_IMAGES`; for a
    Python no Ubuntu LTS packages, ``python:<v>-slim``, since the frameworks' CUDA wheels (torch, jax[cuda12],
    tensorflow[and-cuda], cupy-cuda12x) bring the CUDA runtime libraries themselves as pip packages."""
    return CUDA_IMAGES.get(python, f"python:{python}-slim")


def torch_index(tag: str) -> str:
    """PyTorch's package index for a CUDA tag: ``cu124`` -> ``https://download.pytorch.org/whl/cu124``."""
    return f"{_TORCH_INDEX}{tag}"


def _torch_tag(torch_version: str) -> str:
    match = _VERSION.match(torch_version)
    if not match:
        return _TORCH_LATEST
    key = (int(match.group(1)), int(match.group(2)))
    return TORCH_CUDA.get(key, _TORCH_LATEST if key >= (2, 6) else "cu118")


@dataclass(frozen=True)
class GpuBuilds:
    """The node's requirements for a GPU run, the indexes they come from, and what changed (for the plan)."""

    requirements: tuple[str, ...]
    index_urls: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def _mapped(name: str, version: str, torch_version: str | None) -> tuple[str, str] | None:
    """(the node's requirement, its index or "") for one kernel pin; None to drop it; the pin itself when
    nothing changes."""
    key = _normalize(name)
    if key in _TORCH_FAMILY:
        local = version.partition("+")[2]
        tag = local if local.startswith("cu") or local.startswith("rocm") else _torch_tag(torch_version or version)
        return f"{name}=={_public(version)}+{tag}", torch_index(tag)
    if key == "jax":
        return f"jax[cuda12]=={version}", ""
    if key in ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel"):
        return f"tensorflow[and-cuda]=={version}", ""
    if key == "tensorflow-metal":
        return None
    if key in ("cupy", "cupy-cuda11x"):
        return f"cupy-cuda12x=={version}", ""
    return f"{name}=={version}", ""


def map_for_gpu(pins: Mapping[str, str]) -> GpuBuilds:
    """The kernel's pins (distribution -> version) as a GPU node needs them; see the module's rules."""
    torch_version = next((v for n, v in pins.items() if _normalize(n) == "torch"), None)
    requirements: list[str] = []
    indexes: list[str] = []
    notes: list[str] = []
    for name, version in sorted(pins.items(), key=lambda item: item[0].lower()):
        mapped = _mapped(name, version, torch_version)
        if mapped is None:
            notes.append(f"{name} {version} here is for Apple GPUs: left out of the GPU node's image")
            continue
        requirement, index = mapped
        requirements.append(requirement)
        if index and index not in indexes:
            indexes.append(index)
        if requirement != f"{name}=={version}" or index:
            where = f" from {index}" if index else ""
            notes.append(f"{name} {version} here -> {requirement}{where} on the GPU node")
    return GpuBuilds(tuple(sorted(requirements, key=str.lower)), tuple(indexes), tuple(notes))


def expected_on_node(name: str, version: str, torch_version: str | None = None) -> tuple[str, str] | None:
    """What a GPU node's image holds for the kernel's ``name`` ``version``: (distribution, version), or None
    when it is left out. The version guard compares against this instead of the kernel's own pin."""
    mapped = _mapped(name, version, torch_version)
    if mapped is None:
        return None
    requirement = mapped[0]
    dist, _, pinned = requirement.partition("==")
    return _normalize(dist.split("[")[0]), pinned
