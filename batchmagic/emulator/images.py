"""The emulator's supported images (``GET /supportedimages``) and the check a pool's image must pass.

A Marketplace image reference must name one of these (publisher, offer and sku, any case) with its
``nodeAgentSKUId``, and must not be past its ``batchSupportEndOfLife``: the service refuses both with
400 ``InvalidPropertyValue``. Custom images (``virtualMachineImageId`` and the gallery ids) are taken as
they come.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from batchmagic.emulator.errors import invalid_property, missing_property

__all__ = ["SUPPORTED_IMAGES", "check_image"]


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
    _image("microsoftwindowsserver", "windowsserver", "2016-datacenter-smalldisk", "batch.node.windows amd64"),
    _image("microsoftwindowsserver", "windowsserver", "2022-datacenter-smalldisk", "batch.node.windows amd64"),
]  # fmt: skip

_CUSTOM = ("virtualMachineImageId", "sharedGalleryImageId", "communityGalleryImageId")


def check_image(vmc: dict[str, Any], now: float, prefix: str = "") -> None:
    """Refuse a ``virtualMachineConfiguration`` whose image the emulator does not support (400)."""
    ref = vmc.get("imageReference")
    if not isinstance(ref, dict):
        raise missing_property(prefix + "virtualMachineConfiguration.imageReference")
    agent = str(vmc.get("nodeAgentSKUId") or "")
    if not agent:
        raise missing_property(prefix + "virtualMachineConfiguration.nodeAgentSKUId")
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
