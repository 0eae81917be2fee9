"""The emulator's supported images (``GET /supportedimages``) and the check a pool's image must pass.

A Marketplace image reference must name one of these (publisher, offer and sku, any case) with its
``nodeAgentSKUId``, and must not be past its ``batchSupportEndOfLife``: the service refuses both with
400 ``InvalidPropertyValue``. A ``virtualMachineImageId`` must be an ARM id of a managed image or an
Azure Compute Gallery image (or one of its versions) in the account's own subscription; the service
answers a malformed one with 400 ``InvalidPropertyValue`` naming ``virtualMachineImageId`` (recorded:
create_pools.json, an id with ``.../gallery/...`` for ``.../galleries/...``; docs: "Use the Azure Compute
Gallery to create a custom image pool": the image must be in the account's subscription). Shared and
community gallery ids are taken as they come.

GPUs (:func:`node_gpus`): a node of a GPU size gives its container tasks its GPUs only when its image has
the NVIDIA driver: the ``NvidiaTeslaDriverInstalled`` capability (``NvidiaGridDriverInstalled`` for the NV
sizes' vGPUs), or the pool's NVIDIA GPU driver extension (``NvidiaGpuDriverLinux``). The service documents
no refusal of a GPU pool on an image without the driver, and none is made: the pool is created and its
nodes start, as on Azure (where such a node has GPUs no program can use); its containers get no GPU, so
a program looking for one finds none. A custom image is taken to have the driver (its maker put it there).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from batchmagic.emulator import vmsizes
from batchmagic.emulator.errors import invalid_property, missing_property

__all__ = ["SUPPORTED_IMAGES", "check_image", "check_subnet", "node_gpus", "pool_gpus"]


TESLA = "NvidiaTeslaDriverInstalled"
GRID = "NvidiaGridDriverInstalled"
DRIVER_EXTENSION = "nvidiagpudriverlinux"


def _image(
    publisher: str, offer: str, sku: str, agent: str, *, caps: list[str] | None = None, eol: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "imageReference": {"publisher": publisher, "offer": offer, "sku": sku, "version": "latest"},
        "verificationType": "verified",
        "nodeAgentSKUId": agent,
        "osType": "windows" if "windows" in agent else "linux",
    }
    if caps:
        entry["capabilities"] = caps
    if eol:
        entry["batchSupportEndOfLife"] = eol
    return entry


#: Batch support of the batch.node.ubuntu 22.04 agent ends on 2027-06-30 (Azure/Batch#200, which names
#: microsoft-dsvm:ubuntu-hpc:2404 as the way on for container workloads).
_UBUNTU_2204_END = "2027-06-30T00:00:00Z"

SUPPORTED_IMAGES: list[dict[str, Any]] = [
    _image(
        "microsoft-dsvm", "ubuntu-hpc", "2204", "batch.node.ubuntu 22.04",
        caps=["DockerCompatible", "NvidiaTeslaDriverInstalled", "SupportsRDMAOnly"], eol=_UBUNTU_2204_END,
    ),
    _image(
        "microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 24.04",
        caps=["DockerCompatible", "NvidiaTeslaDriverInstalled", "SupportsRDMAOnly", "Generation2VMImage"],
    ),
    _image(
        "microsoft-azure-batch", "ubuntu-server-container", "20-04-lts", "batch.node.ubuntu 20.04",
        caps=["DockerCompatible", "NvidiaTeslaDriverInstalled"], eol="2025-04-30T00:00:00Z",
    ),
    _image("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts", "batch.node.ubuntu 22.04", eol=_UBUNTU_2204_END),
    _image(
        "microsoft-dsvm", "ubuntu-hpc", "2204-gen2", "batch.node.ubuntu 22.04",
        caps=["DockerCompatible", "NvidiaTeslaDriverInstalled", "Generation2VMImage"], eol=_UBUNTU_2204_END,
    ),
    _image("canonical", "ubuntu-24_04-lts", "server", "batch.node.ubuntu 24.04"),
    _image(
        "canonical", "0001-com-ubuntu-server-focal", "20_04-lts", "batch.node.ubuntu 20.04", eol="2025-04-30T00:00:00Z"
    ),
    _image("canonical", "ubuntuserver", "18_04-lts-gen2", "batch.node.ubuntu 18.04", eol="2023-05-31T00:00:00Z"),
    *[
        # The Windows Server skus the service lists for Batch (batch.node.windows amd64), "g2" ones included.
        _image("microsoftwindowsserver", "windowsserver", sku, "batch.node.windows amd64")
        for sku in (
            "2016-datacenter", "2016-datacenter-smalldisk", "2019-datacenter", "2019-datacenter-core",
            "2019-datacenter-gensecond", "2019-datacenter-smalldisk", "2022-datacenter", "2022-datacenter-g2",
            "2022-datacenter-core", "2022-datacenter-core-g2", "2022-datacenter-smalldisk",
            "2022-datacenter-smalldisk-g2", "2022-datacenter-azure-edition", "2025-datacenter",
            "2025-datacenter-g2", "2025-datacenter-azure-edition",
        )
    ],
]  # fmt: skip

_CUSTOM = ("virtualMachineImageId", "sharedGalleryImageId", "communityGalleryImageId")

#: ARM ids of a managed image, a gallery image or a gallery image version.
_IMAGE_ID = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/[^/]+/providers/Microsoft\.Compute/"
    r"(?:images/[^/]+|galleries/[^/]+/images/[^/]+(?:/versions/[^/]+)?)",
    re.IGNORECASE,
)
#: The ARM id of a virtual network's subnet.
_SUBNET_ID = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/[^/]+/providers/Microsoft\.(?:ClassicNetwork|Network)/"
    r"virtualNetworks/[^/]+/subnets/[^/]+",
    re.IGNORECASE,
)


def _in_subscription(pattern: re.Pattern[str], value: object, subscription: str) -> bool:
    m = pattern.fullmatch(str(value))
    return m is not None and m["sub"].lower() == subscription.lower()


def check_subnet(network: dict[str, Any] | None, subscription: str) -> None:
    """Refuse a ``subnetId`` that is not a subnet of the account's subscription (400, as the service does).

    Recorded: a subnet in another subscription is answered 400 ``InvalidPropertyValue`` naming
    ``subnetId`` (create_pools.json); docs ("Create an Azure Batch pool in a virtual network"): the
    virtual network must be in the same subscription and region as the Batch account.
    """
    subnet = (network or {}).get("subnetId")
    if subnet and not _in_subscription(_SUBNET_ID, subnet, subscription):
        raise invalid_property("subnetId", subnet, "The subnet must be in the Batch account's subscription.")


def _capabilities(ref: dict[str, Any]) -> list[str] | None:
    """The listed image's capabilities; None for a custom image or one the list lacks."""
    if any(ref.get(k) for k in _CUSTOM):
        return None
    wanted = tuple(str(ref.get(k) or "").lower() for k in ("publisher", "offer", "sku"))
    for entry in SUPPORTED_IMAGES:
        image = entry["imageReference"]
        if tuple(str(image[k]).lower() for k in ("publisher", "offer", "sku")) == wanted:
            return list(entry.get("capabilities") or [])
    return None


def pool_gpus(pool: dict[str, Any]) -> int:
    """GPUs a node of ``pool`` gives its container tasks: :func:`node_gpus` of its size's GPU count."""
    size = vmsizes.lookup(str(pool.get("vmSize") or ""))
    return node_gpus(pool, size.gpus if size is not None else 0)


def node_gpus(pool: dict[str, Any], size_gpus: int) -> int:
    """GPUs a node of ``pool`` (its ``vmSize`` has ``size_gpus``) gives its container tasks: all of them when
    the node has the NVIDIA driver its GPUs need, none otherwise (see the module's docstring)."""
    if size_gpus <= 0:
        return 0
    vmc = pool.get("virtualMachineConfiguration") or {}
    extensions = [str(e.get("type") or "").lower() for e in vmc.get("extensions") or [] if isinstance(e, dict)]
    if DRIVER_EXTENSION in extensions:
        return size_gpus
    capabilities = _capabilities(vmc.get("imageReference") or {})
    if capabilities is None:
        return size_gpus
    needed = GRID if str(pool.get("vmSize", "")).lower().startswith("standard_nv") else TESLA
    return size_gpus if needed in capabilities else 0


def check_image(vmc: dict[str, Any], now: float, prefix: str = "", subscription: str = "") -> None:
    """Refuse a ``virtualMachineConfiguration`` whose image the emulator does not support (400)."""
    ref = vmc.get("imageReference")
    if not isinstance(ref, dict):
        raise missing_property(prefix + "virtualMachineConfiguration.imageReference")
    agent = str(vmc.get("nodeAgentSKUId") or "")
    if not agent:
        raise missing_property(prefix + "virtualMachineConfiguration.nodeAgentSKUId")
    image_id = ref.get("virtualMachineImageId")
    if image_id and not _in_subscription(_IMAGE_ID, image_id, subscription):
        raise invalid_property(
            "virtualMachineImageId", image_id, "Not a managed or gallery image id in the account's subscription."
        )
    if any(ref.get(k) for k in _CUSTOM):
        return
    wanted = tuple(str(ref.get(k) or "").lower() for k in ("publisher", "offer", "sku"))
    for entry in SUPPORTED_IMAGES:
        image = entry["imageReference"]
        if tuple(str(image[k]).lower() for k in ("publisher", "offer", "sku")) != wanted:
            continue
        if entry["nodeAgentSKUId"].lower() != agent.lower():
            raise invalid_property(
                prefix + "virtualMachineConfiguration.nodeAgentSKUId",
                agent,
                f"The image needs the node agent SKU '{entry['nodeAgentSKUId']}'.",
            )
        eol = entry.get("batchSupportEndOfLife")
        if eol and datetime.fromisoformat(eol.replace("Z", "+00:00")).timestamp() <= now:
            raise invalid_property(
                prefix + "virtualMachineConfiguration.imageReference",
                "/".join(wanted),
                f"The image reached its Batch support end of life on {eol[:10]}.",
            )
        return
    raise invalid_property(
        prefix + "virtualMachineConfiguration.imageReference",
        "/".join(wanted),
        "The image is not in the account's supported images (GET /supportedimages).",
    )
