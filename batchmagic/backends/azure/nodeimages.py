"""Which VM image a pool's nodes boot: chosen from what the Batch account lists as supported.

Batch lists the images it supports (``list_supported_images``: publisher, offer, sku, the node agent
that goes with it, capabilities, ``batchSupportEndOfLife``); an image past its end of life can no
longer be used to create or grow a pool. Hard-coding one would fail the day it ends, so the choice is
made from the account's list, with these rules:

1. Linux, with the ``DockerCompatible`` capability (every task runs in the training image).
2. Not past its ``batchSupportEndOfLife`` (an image with no date has none announced).
3. An Ubuntu node agent (``batch.node.ubuntu X.Y``), the newest version offered.
4. For an N-series size (``Standard_NC*``, ``ND*``: the compute GPU sizes), an image whose capabilities
   say it has the NVIDIA driver: ``NvidiaTeslaDriverInstalled`` (e.g. ``microsoft-dsvm`` ``ubuntu-hpc``
   2204/2404; the service's own list shows an ``ubuntu-hpc`` 2004 without it, so the offer is not proof).
   Batch then gives a container task the node's GPUs itself (no ``--gpus`` in its run options). The
   ``NV*`` sizes (GRID vGPUs, slices of a GPU) need the GRID driver: an image with
   ``NvidiaGridDriverInstalled``, else a Docker-compatible image with Azure's NVIDIA GPU driver extension
   (``NvidiaGpuDriverLinux``, which installs GRID on NV sizes) added to the pool
   (:attr:`NodeImage.driver_extension`).
5. Among equals: verified before unverified, then the plainest sku (``2404`` before ``2404-gen2``).

``AzBatch.node_image`` (``BATCHMAGIC_NODE_IMAGE``) overrides the choice: ``publisher:offer:sku[:version]``
(its node agent is looked up in the same list), or ``publisher:offer:sku:version@<node agent sku>`` for
an image the list lacks. Standard library only: the Azure backend turns the SDK's models into
:class:`SupportedImage`.

Examples
--------
In [1]: choose_node_image(images, "Standard_NC24ads_A100_v4", today=date(2026, 12, 1))
Out[1]: NodeImage(publisher='microsoft-dsvm', offer='ubuntu-hpc', sku='2404', version='latest',
                  node_agent_sku='batch.node.ubuntu 24.04')
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from batchmagic.errors import ConfigError

__all__ = ["SupportedImage", "NodeImage", "choose_node_image", "is_gpu_size", "parse_node_image"]

DOCKER = "DockerCompatible"
_UBUNTU = re.compile(r"^batch\.node\.ubuntu (\d+)\.(\d+)$", re.IGNORECASE)
TESLA = "NvidiaTeslaDriverInstalled"
GRID = "NvidiaGridDriverInstalled"
# The GPU sizes are the N family: Standard_NC4as_T4_v3, Standard_ND96isr_H100_v5, Standard_NV36ads_A10_v5.
_GPU_SIZE = re.compile(r"^(standard_)?n[a-z]", re.IGNORECASE)
_GRID_SIZE = re.compile(r"^(standard_)?nv", re.IGNORECASE)


@dataclass(frozen=True)
class SupportedImage:
    """One entry of the account's ``list_supported_images``, as the service reports it."""

    publisher: str
    offer: str
    sku: str
    node_agent_sku: str
    version: str = "latest"
    os_type: str = "linux"
    verified: bool = True
    capabilities: tuple[str, ...] = ()
    end_of_life: datetime | date | None = None

    @property
    def ubuntu(self) -> tuple[int, int] | None:
        """The Ubuntu version of its node agent, like (24, 4); None for another OS."""
        match = _UBUNTU.match(self.node_agent_sku.strip())
        return (int(match.group(1)), int(match.group(2))) if match else None

    @property
    def docker(self) -> bool:
        return DOCKER in self.capabilities

    @property
    def gpu(self) -> bool:
        """Ships the NVIDIA compute (Tesla) driver, as its capabilities say."""
        return TESLA in self.capabilities

    @property
    def grid(self) -> bool:
        """Ships the NVIDIA GRID driver the NV sizes' vGPUs need, as its capabilities say."""
        return GRID in self.capabilities

    def ended(self, today: date) -> bool:
        """Past its Batch support end of life on ``today``."""
        if self.end_of_life is None:
            return False
        end = self.end_of_life.date() if isinstance(self.end_of_life, datetime) else self.end_of_life
        return end <= today

    @property
    def name(self) -> str:
        return f"{self.publisher}:{self.offer}:{self.sku}:{self.version}"


@dataclass(frozen=True)
class NodeImage:
    """The image reference and node agent a pool is created with."""

    publisher: str
    offer: str
    sku: str
    version: str
    node_agent_sku: str
    driver_extension: bool = False  # the pool adds Azure's NVIDIA GPU driver extension (NV sizes on a plain image)

    @property
    def name(self) -> str:
        return f"{self.publisher}:{self.offer}:{self.sku}:{self.version}"

    @classmethod
    def of(cls, image: SupportedImage, *, driver_extension: bool = False) -> NodeImage:
        return cls(
            image.publisher, image.offer, image.sku, image.version or "latest", image.node_agent_sku, driver_extension
        )


def is_gpu_size(vm_size: str) -> bool:
    """An N-series (GPU) VM size."""
    return bool(_GPU_SIZE.match(vm_size or ""))


def is_grid_size(vm_size: str) -> bool:
    """An NV size: its GPU is a GRID vGPU, which needs the GRID driver."""
    return bool(_GRID_SIZE.match(vm_size or ""))


def parse_node_image(text: str) -> tuple[tuple[str, str, str, str], str]:
    """``publisher:offer:sku[:version][@node agent sku]`` -> ((publisher, offer, sku, version), agent).

    Raises
    ------
    ConfigError
        Not of that form.
    """
    reference, _, agent = text.strip().partition("@")
    parts = [p.strip() for p in reference.split(":")]
    if len(parts) not in (3, 4) or not all(parts):
        raise ConfigError(
            f"AzBatch.node_image {text!r} is not publisher:offer:sku[:version], e.g. "
            "microsoft-dsvm:ubuntu-hpc:2404 (or ...:latest@batch.node.ubuntu 24.04 for an image Batch does not list)"
        )
    version = parts[3] if len(parts) == 4 else "latest"
    return (parts[0], parts[1], parts[2], version), agent.strip()


def choose_node_image(images: Iterable[SupportedImage], vm_size: str, *, today: date, override: str = "") -> NodeImage:
    """The node image for a pool of ``vm_size``: ``override`` if given, else the rules of the module.

    Raises
    ------
    ConfigError
        The override is malformed, unknown to the account (without an ``@agent``), past its end of life or
        not Docker-compatible; or the account offers no image that fits.
    """
    images = list(images)
    if override:
        return _override(images, override, today, vm_size)
    gpu, grid = is_gpu_size(vm_size), is_grid_size(vm_size)
    base = [
        i for i in images if i.os_type.lower() == "linux" and i.docker and i.ubuntu is not None and not i.ended(today)
    ]
    usable = [i for i in base if not gpu or (i.grid if grid else i.gpu)]
    if grid and not usable and base:
        return NodeImage.of(min(base, key=_rank), driver_extension=True)  # the extension brings GRID
    if not usable:
        kind = (
            f"Docker-compatible Ubuntu with the NVIDIA driver ({GRID if grid else TESLA})"
            if gpu
            else ("Docker-compatible Ubuntu")
        )
        raise ConfigError(
            f"the Batch account lists no {kind} node image that is still supported (for {vm_size}): "
            "set AzBatch.node_image (BATCHMAGIC_NODE_IMAGE) to publisher:offer:sku[:version]"
        )
    return NodeImage.of(min(usable, key=_rank))


def _rank(i: SupportedImage) -> tuple[int, int, int, int, int, str]:
    """Newest Ubuntu first, verified before unverified, the plainest sku, ``latest``."""
    major, minor = i.ubuntu or (0, 0)
    return (-major, -minor, 0 if i.verified else 1, len(i.sku), 0 if i.version == "latest" else 1, i.name)


def _override(images: list[SupportedImage], text: str, today: date, vm_size: str = "") -> NodeImage:
    (publisher, offer, sku, version), agent = parse_node_image(text)
    key = (publisher.lower(), offer.lower(), sku.lower())
    listed = next((i for i in images if (i.publisher.lower(), i.offer.lower(), i.sku.lower()) == key), None)
    if listed is None:
        if agent:
            return NodeImage(publisher, offer, sku, version, agent)
        choices = ", ".join(sorted({i.name.rsplit(":", 1)[0] for i in images if i.docker and not i.ended(today)}))
        raise ConfigError(
            f"AzBatch.node_image {text!r} is not among the Batch account's supported images; Docker-compatible "
            f"ones: {choices or 'none'} (or add @<node agent sku> for an image Batch does not list)"
        )
    if listed.ended(today):
        raise ConfigError(
            f"AzBatch.node_image {text!r}: Batch support for it ended on {listed.end_of_life:%Y-%m-%d}; "
            "pick a newer image, or leave AzBatch.node_image empty to have one chosen"
        )
    if not listed.docker:
        raise ConfigError(
            f"AzBatch.node_image {text!r} is not Docker-compatible, and tasks run in the training image: "
            "pick one whose capabilities include DockerCompatible (e.g. microsoft-dsvm:ubuntu-hpc:2404)"
        )
    grid = is_grid_size(vm_size)
    if is_gpu_size(vm_size) and not grid and not listed.gpu:
        raise ConfigError(
            f"AzBatch.node_image {text!r} has no NVIDIA driver ({TESLA} is not among its capabilities), and "
            f"{vm_size}'s GPUs need one: pick an image that has it (e.g. microsoft-dsvm:ubuntu-hpc:2404), or leave "
            "AzBatch.node_image empty to have one chosen"
        )
    # An NV size on an image without GRID: the pool gets the driver extension, as when the image is chosen.
    extension = grid and not listed.grid
    return NodeImage(publisher, offer, sku, version, agent or listed.node_agent_sku, extension)
