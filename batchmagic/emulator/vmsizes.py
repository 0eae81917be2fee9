"""The emulator's VM sizes: a table with cores and quota families, and the service's naming rules.

A size in the table is known exactly. Any other well-formed name (``Standard_<family><vCPUs>
<features>[_<accelerator>][_v<version>]``, any case) is accepted as the service accepts every current
family and version: its cores are the number in its name and its family is derived from the letters
(``Standard_D2_v5`` -> 2 cores, ``standardDv5Family``), with a log line saying so. Retired sizes (the
original A series; the NC, NCv2, ND and NV GPU series, retired 2023-09-06; NCv3, retired 2025-09-30) and
names that are not VM sizes at all (``small``, ``Standard_nope``) are refused.

The GPU sizes carry their GPU count (:attr:`VmSize.gpus`): a node of one gives its container tasks that
many GPUs when its image has the NVIDIA driver (see :func:`batchmagic.emulator.images.node_gpus`).

Examples
--------
In [1]: lookup("STANDARD_DS1_V2")
Out[1]: VmSize(name='standard_ds1_v2', cores=1, family='standardDSv2Family', known=True)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

__all__ = ["VmSize", "lookup", "SIZES", "GPUS", "RETIRED"]

log = logging.getLogger("batchmagic.emulator")


@dataclass(frozen=True)
class VmSize:
    """A VM size as the emulator charges it against the account's core quota."""

    name: str
    cores: int
    family: str
    known: bool
    gpus: int = 0


def _series(prefix: str, suffix: str, family: str, cores: tuple[int, ...]) -> dict[str, tuple[int, str]]:
    return {f"standard_{prefix}{n}{suffix}": (n, family) for n in cores}


_D_V2 = {1: 1, 2: 2, 3: 4, 4: 8, 5: 16, 11: 2, 12: 4, 13: 8, 14: 16, 15: 20}
_COMMON = (2, 4, 8, 16, 32, 48, 64, 96)

#: Lower-case size name -> (vCPUs, quota family).
SIZES: dict[str, tuple[int, str]] = {
    **_series("a", "_v2", "standardAv2Family", (1, 2, 4, 8)),
    **_series("a", "m_v2", "standardAv2Family", (2, 4, 8)),
    **{f"standard_d{k}_v2": (c, "standardDv2Family") for k, c in _D_V2.items()},
    **{f"standard_ds{k}_v2": (c, "standardDSv2Family") for k, c in _D_V2.items()},
    **_series("d", "_v3", "standardDv3Family", _COMMON[:-1]),
    **_series("d", "s_v3", "standardDSv3Family", _COMMON[:-1]),
    **_series("d", "_v4", "standardDv4Family", _COMMON[:-1]),
    **_series("d", "s_v4", "standardDSv4Family", _COMMON[:-1]),
    **_series("d", "ds_v4", "standardDDSv4Family", _COMMON[:-1]),
    **_series("d", "_v5", "standardDv5Family", _COMMON),
    **_series("d", "s_v5", "standardDSv5Family", _COMMON),
    **_series("d", "ds_v5", "standardDDSv5Family", _COMMON),
    **_series("d", "as_v5", "standardDASv5Family", _COMMON),
    **_series("e", "_v3", "standardEv3Family", _COMMON[:-1]),
    **_series("e", "s_v3", "standardESv3Family", _COMMON[:-1]),
    **_series("e", "_v4", "standardEv4Family", _COMMON[:-1]),
    **_series("e", "s_v4", "standardESv4Family", _COMMON[:-1]),
    **_series("e", "_v5", "standardEv5Family", _COMMON),
    **_series("e", "s_v5", "standardESv5Family", _COMMON),
    **_series("f", "s_v2", "standardFSv2Family", (2, 4, 8, 16, 32, 48, 64, 72)),
    **_series("dc", "s_v2", "standardDCSv2Family", (1, 2, 4, 8)),
    "standard_hb120rs_v3": (120, "standardHBrsv3Family"),
    "standard_hc44rs": (44, "standardHCSFamily"),
    "standard_nc4as_t4_v3": (4, "standardNCASv3_T4Family"),
    "standard_nc8as_t4_v3": (8, "standardNCASv3_T4Family"),
    "standard_nc16as_t4_v3": (16, "standardNCASv3_T4Family"),
    "standard_nc64as_t4_v3": (64, "standardNCASv3_T4Family"),
    "standard_nc24ads_a100_v4": (24, "standardNCADSA100v4Family"),
    "standard_nc48ads_a100_v4": (48, "standardNCADSA100v4Family"),
    "standard_nc96ads_a100_v4": (96, "standardNCADSA100v4Family"),
    "standard_nc40ads_h100_v5": (40, "standardNCadsH100v5Family"),
    "standard_nc80adis_h100_v5": (80, "standardNCadsH100v5Family"),
    "standard_nd96asr_v4": (96, "standardNDASv4_A100Family"),
    "standard_nd96amsr_a100_v4": (96, "standardNDAMSv4_A100Family"),
    "standard_nd96isr_h100_v5": (96, "standardNDSH100v5Family"),
    "standard_nd96isr_h200_v5": (96, "standardNDSH200v5Family"),
    **{f"standard_nv{n}ads_a10_v5": (n, "standardNVADSA10v5Family") for n in (6, 12, 18, 36, 72)},
    "standard_nv36adms_a10_v5": (36, "standardNVADSA10v5Family"),
}

#: GPUs a node of each GPU size shows its tasks (an NV slice of an A10 shows as one).
GPUS: dict[str, int] = {
    "standard_nc4as_t4_v3": 1, "standard_nc8as_t4_v3": 1, "standard_nc16as_t4_v3": 1, "standard_nc64as_t4_v3": 4,
    "standard_nc24ads_a100_v4": 1, "standard_nc48ads_a100_v4": 2, "standard_nc96ads_a100_v4": 4,
    "standard_nc40ads_h100_v5": 1, "standard_nc80adis_h100_v5": 2,
    "standard_nd96asr_v4": 8, "standard_nd96amsr_a100_v4": 8,
    "standard_nd96isr_h100_v5": 8, "standard_nd96isr_h200_v5": 8,
    "standard_nv6ads_a10_v5": 1, "standard_nv12ads_a10_v5": 1, "standard_nv18ads_a10_v5": 1,
    "standard_nv36ads_a10_v5": 1, "standard_nv36adms_a10_v5": 1, "standard_nv72ads_a10_v5": 2,
}  # fmt: skip

#: Sizes Azure has retired: the service refuses new pools of them.
RETIRED = frozenset(
    [f"standard_a{n}" for n in range(0, 12)] + [f"basic_a{n}" for n in range(0, 5)] + ["extrasmall", "small"]
    + ["medium", "large", "extralarge"]
    + [f"standard_nc{n}" for n in ("6", "12", "24", "24r", "6_promo", "12_promo", "24_promo", "24r_promo")]
    + [f"standard_nc{n}s_v{v}" for n in ("6", "12", "24", "24r") for v in (2, 3)]
    + [f"standard_nd{n}s" for n in ("6", "12", "24", "24r")]
    + [f"standard_nv{n}" for n in ("6", "12", "24", "6_promo", "12_promo", "24_promo")]
)  # fmt: skip

_NAME = re.compile(r"(?P<tier>standard|basic)_(?P<family>[a-z]+)(?P<cores>\d+)(?:-\d+)?(?P<features>[a-z]*)"
                   r"(?P<accel>(?:_[a-z][a-z0-9]*)*?)(?:_v(?P<version>\d+))?")  # fmt: skip


def lookup(name: str) -> VmSize | None:
    """The size ``name`` names (any case), or None when it is retired or not a VM size name."""
    key = name.strip().lower()
    if key in SIZES:
        cores, family = SIZES[key]
        return VmSize(key, cores, family, True, GPUS.get(key, 0))
    if key in RETIRED:
        return None
    m = _NAME.fullmatch(key)
    if m is None:
        return None
    cores = int(m["cores"])
    if cores < 1 or cores > 1024:
        return None
    family = f"standard{m['family'].upper()}{m['features'].upper()}" + (f"v{m['version']}" if m["version"] else "")
    size = VmSize(key, cores, family + "Family", False, 1 if m["family"].startswith("n") else 0)
    log.info("VM size %s is not in the emulator's table: assuming %d cores, family %s", name, cores, size.family)
    return size
