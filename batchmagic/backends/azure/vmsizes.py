"""A table of common Azure VM sizes and their vCPU counts.

The emulator uses it to validate ``vmSize`` and to charge pools against the core quota; the client
side of batchmagic imports it to validate ``--vm``. Importing this module has no side effects.

Examples
--------
In [1]: from batchmagic.backends.azure.vmsizes import cores_for

In [2]: cores_for("Standard_D4s_v3")
Out[2]: 4
"""

from __future__ import annotations

__all__ = ["VM_SIZES", "TEMP_DISK_GIB", "cores_for", "family_for", "temp_disk_bytes"]

#: Lower-case VM size name -> (vCPUs, quota family), as the Batch service counts cores.
VM_SIZES: dict[str, tuple[int, str]] = {
    "standard_a1_v2": (1, "standardAv2Family"),
    "standard_a2_v2": (2, "standardAv2Family"),
    "standard_a4_v2": (4, "standardAv2Family"),
    "standard_a8_v2": (8, "standardAv2Family"),
    "standard_d2_v2": (2, "standardDv2Family"),
    "standard_d3_v2": (4, "standardDv2Family"),
    "standard_d4_v2": (8, "standardDv2Family"),
    "standard_d2_v3": (2, "standardDv3Family"),
    "standard_d4_v3": (4, "standardDv3Family"),
    "standard_d8_v3": (8, "standardDv3Family"),
    "standard_d2s_v3": (2, "standardDSv3Family"),
    "standard_d4s_v3": (4, "standardDSv3Family"),
    "standard_d8s_v3": (8, "standardDSv3Family"),
    "standard_d16s_v3": (16, "standardDSv3Family"),
    "standard_d32s_v3": (32, "standardDSv3Family"),
    "standard_d64s_v3": (64, "standardDSv3Family"),
    "standard_d2s_v5": (2, "standardDSv5Family"),
    "standard_d4s_v5": (4, "standardDSv5Family"),
    "standard_d8s_v5": (8, "standardDSv5Family"),
    "standard_d16s_v5": (16, "standardDSv5Family"),
    "standard_d2ds_v5": (2, "standardDDSv5Family"),
    "standard_d4ds_v5": (4, "standardDDSv5Family"),
    "standard_e2_v3": (2, "standardEv3Family"),
    "standard_e4_v3": (4, "standardEv3Family"),
    "standard_e8_v3": (8, "standardEv3Family"),
    "standard_e16_v3": (16, "standardEv3Family"),
    "standard_e32_v3": (32, "standardEv3Family"),
    "standard_e64_v3": (64, "standardEv3Family"),
    "standard_e4s_v3": (4, "standardESv3Family"),
    "standard_e8s_v3": (8, "standardESv3Family"),
    "standard_e16s_v3": (16, "standardESv3Family"),
    "standard_f2s_v2": (2, "standardFSv2Family"),
    "standard_f4s_v2": (4, "standardFSv2Family"),
    "standard_f8s_v2": (8, "standardFSv2Family"),
    "standard_f16s_v2": (16, "standardFSv2Family"),
    "standard_f32s_v2": (32, "standardFSv2Family"),
    "standard_f64s_v2": (64, "standardFSv2Family"),
    "standard_hb120rs_v3": (120, "standardHBrsv3Family"),
    "standard_nc6s_v3": (6, "standardNCSv3Family"),
    "standard_nc12s_v3": (12, "standardNCSv3Family"),
    "standard_nc24s_v3": (24, "standardNCSv3Family"),
    "standard_nc4as_t4_v3": (4, "standardNCASv3_T4Family"),
    "standard_nc8as_t4_v3": (8, "standardNCASv3_T4Family"),
    "standard_nc24ads_a100_v4": (24, "standardNCADSA100v4Family"),
}


def cores_for(vm_size: str) -> int | None:
    """Return the vCPU count of a VM size, or None when the size is unknown.

    Parameters
    ----------
    vm_size : str
        An Azure VM size name such as ``"Standard_D2s_v3"``; case-insensitive.

    Returns
    -------
    int or None
        The number of cores the Batch service charges against the account's quota per node.
    """
    entry = VM_SIZES.get(vm_size.strip().lower())
    return entry[0] if entry else None


def family_for(vm_size: str) -> str | None:
    """Return the quota family of a VM size (e.g. ``"standardDSv3Family"``), or None when unknown."""
    entry = VM_SIZES.get(vm_size.strip().lower())
    return entry[1] if entry else None


#: Lower-case VM size name -> its temporary disk in GiB, where task working directories live on a
#: Batch node. Only sizes whose figure is published here; the rest are unknown (no check is made).
TEMP_DISK_GIB: dict[str, int] = {
    "standard_d2s_v3": 16,
    "standard_d4s_v3": 32,
    "standard_d8s_v3": 64,
    "standard_d16s_v3": 128,
    "standard_d32s_v3": 256,
    "standard_d64s_v3": 512,
    "standard_d2_v3": 50,
    "standard_d4_v3": 100,
    "standard_d8_v3": 200,
    "standard_e2_v3": 50,
    "standard_e4_v3": 100,
    "standard_e8_v3": 200,
    "standard_e16_v3": 400,
    "standard_e32_v3": 800,
    "standard_e64_v3": 1600,
}


def temp_disk_bytes(vm_size: str) -> int | None:
    """Bytes of a VM size's temporary disk (the task's working directory), or None when unknown."""
    gib = TEMP_DISK_GIB.get(vm_size.strip().lower())
    return gib << 30 if gib else None
