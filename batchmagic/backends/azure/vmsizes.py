"""The client's one table of Azure VM sizes: vCPUs, quota family, GPUs, InfiniBand, retirement.

The client imports it to validate ``--vm`` (:func:`vm_cores`: the table, else the size's name), to
choose the size ``--gpu KIND[:COUNT]`` asks for (:func:`choose_gpu_size`: the cheapest current size with
that GPU in the region, from this table and the price table) and to refuse a retired size in one line
naming a current one (:func:`check_current`).
The emulator keeps its own table (:mod:`batchmagic.emulator.vmsizes`): it answers as the service does.
Importing this module has no side effects.

GPU facts (Microsoft's size pages, late 2026): the NC sizes have no InfiniBand, the ND sizes 8 GPUs
and InfiniBand (200 Gb/s per GPU on ND A100 v4, 400 Gb/s on ND H100/H200 v5). The NVadsA10 v5 sizes up
to NV18 hold a share of one A10 (a GRID vGPU): they need the GRID driver, and ``--gpu`` never picks
them. The NC (K80), NCv2 (P100), ND (P40) and NV (M60) series were retired on 2023-09-06, the NCv3
(V100) series on 2025-09-30: Azure creates no new VM of them.

Examples
--------
In [1]: from batchmagic.backends.azure.vmsizes import cores_for, size_info

In [2]: cores_for("Standard_D4s_v3")
Out[2]: 4

In [3]: size_info("Standard_NC24ads_A100_v4").gpu.describe()
Out[3]: '1x A100 80 GB'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from batchmagic.errors import ConfigError

__all__ = [
    "GPU_SIZES",
    "Gpu",
    "GpuRequest",
    "SizeInfo",
    "TEMP_DISK_GIB",
    "VM_SIZES",
    "check_current",
    "choose_gpu_size",
    "cores_for",
    "family_for",
    "fits",
    "gpu_label",
    "gpus_for",
    "has_infiniband",
    "parse_gpu",
    "retirement",
    "size_info",
    "temp_disk_bytes",
    "vm_cores",
]

# Any Azure size name: the vCPUs are the first number (Standard_E32_v3, Standard_NC24ads_A100_v4).
_VM_SIZE = re.compile(r"^(Standard|Basic)_[A-Z]+(\d+)[a-z-]*(\d*)[a-z]*(_[A-Za-z0-9]+)*$", re.IGNORECASE)


@dataclass(frozen=True)
class Gpu:
    """The GPUs of a VM size: the model, how many, the memory of each (GiB); ``share`` < 1 for a slice of one."""

    model: str
    count: int
    memory_gib: int
    share: float = 1.0

    def describe(self) -> str:
        """``"8x H100 80 GB"``, or ``"1/6 of an A10 (4 GB)"`` for a slice."""
        if self.share < 1:
            return f"1/{round(1 / self.share)} of an {self.model} ({self.memory_gib} GB)"
        return f"{self.count}x {self.model} {self.memory_gib} GB"


@dataclass(frozen=True)
class SizeInfo:
    """One VM size as batchmagic knows it."""

    name: str  # as Azure spells it: Standard_NC24ads_A100_v4
    cores: int
    family: str  # the quota family the Batch account counts its cores in
    gpu: Gpu | None = None
    infiniband: bool = False
    retired: str = ""  # the date Azure retired it, "2025-09-30"; "" while current

    @property
    def key(self) -> str:
        return self.name.lower()

    def describe(self) -> str:
        """``"Standard_ND96isr_H100_v5 (96 vCPUs, 8x H100 80 GB, InfiniBand)"``."""
        parts = [f"{self.cores} vCPUs"] + ([self.gpu.describe()] if self.gpu else [])
        return f"{self.name} ({', '.join(parts + (['InfiniBand'] if self.infiniband else []))})"


def _gpu_series(
    family: str, model: str, memory: int, rows: tuple[tuple[str, int, int], ...], *, infiniband: bool = False
) -> list[SizeInfo]:
    return [SizeInfo(name, cores, family, Gpu(model, count, memory), infiniband) for name, cores, count in rows]


#: The GPU sizes, current and retired (retired ones are known only to name a current size instead).
GPU_SIZES: tuple[SizeInfo, ...] = (
    *_gpu_series(
        "standardNCASv3_T4Family", "T4", 16,
        (("Standard_NC4as_T4_v3", 4, 1), ("Standard_NC8as_T4_v3", 8, 1), ("Standard_NC16as_T4_v3", 16, 1),
         ("Standard_NC64as_T4_v3", 64, 4)),
    ),
    *_gpu_series(
        "standardNCADSA100v4Family", "A100", 80,
        (("Standard_NC24ads_A100_v4", 24, 1), ("Standard_NC48ads_A100_v4", 48, 2), ("Standard_NC96ads_A100_v4", 96, 4)),
    ),
    *_gpu_series(
        "standardNCadsH100v5Family", "H100", 94,
        (("Standard_NC40ads_H100_v5", 40, 1), ("Standard_NC80adis_H100_v5", 80, 2)),
    ),
    *_gpu_series("standardNDASv4_A100Family", "A100", 40, (("Standard_ND96asr_v4", 96, 8),), infiniband=True),
    *_gpu_series("standardNDAMSv4_A100Family", "A100", 80, (("Standard_ND96amsr_A100_v4", 96, 8),), infiniband=True),
    *_gpu_series("standardNDSH100v5Family", "H100", 80, (("Standard_ND96isr_H100_v5", 96, 8),), infiniband=True),
    *_gpu_series("standardNDSH200v5Family", "H200", 141, (("Standard_ND96isr_H200_v5", 96, 8),), infiniband=True),
    SizeInfo("Standard_NV6ads_A10_v5", 6, "standardNVADSA10v5Family", Gpu("A10", 1, 4, 1 / 6)),
    SizeInfo("Standard_NV12ads_A10_v5", 12, "standardNVADSA10v5Family", Gpu("A10", 1, 8, 1 / 3)),
    SizeInfo("Standard_NV18ads_A10_v5", 18, "standardNVADSA10v5Family", Gpu("A10", 1, 12, 1 / 2)),
    *_gpu_series(
        "standardNVADSA10v5Family", "A10", 24,
        (("Standard_NV36ads_A10_v5", 36, 1), ("Standard_NV36adms_A10_v5", 36, 1), ("Standard_NV72ads_A10_v5", 72, 2)),
    ),
    # Retired: NCv3 (V100) on 2025-09-30.
    *(
        SizeInfo(name, cores, "standardNCSv3Family", Gpu("V100", count, 16), infiniband=ib, retired="2025-09-30")
        for name, cores, count, ib in (
            ("Standard_NC6s_v3", 6, 1, False), ("Standard_NC12s_v3", 12, 2, False),
            ("Standard_NC24s_v3", 24, 4, False), ("Standard_NC24rs_v3", 24, 4, True),
        )
    ),
)  # fmt: skip

#: Lower-case CPU VM size name -> (vCPUs, quota family), as the Batch service counts cores.
_CPU_SIZES: dict[str, tuple[int, str]] = {
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
}


def _size_table() -> dict[str, SizeInfo]:
    table = {key: SizeInfo(_spelled(key), cores, family) for key, (cores, family) in _CPU_SIZES.items()}
    table["standard_hb120rs_v3"] = SizeInfo("Standard_HB120rs_v3", 120, "standardHBrsv3Family", infiniband=True)
    table.update((size.key, size) for size in GPU_SIZES)
    return table


def _spelled(key: str) -> str:
    """``standard_d4s_v3`` -> ``Standard_D4s_v3``: Azure's spelling of a size (upper-case series letters)."""
    tier, _, rest = key.partition("_")
    match = re.match(r"^([a-z]+)(\d+)(.*)$", rest)
    if not match:
        return key
    return f"{tier.capitalize()}_{match.group(1).upper()}{match.group(2)}{match.group(3)}"


#: Lower-case VM size name -> what batchmagic knows of it.
SIZES: dict[str, SizeInfo] = _size_table()

#: Lower-case VM size name -> (vCPUs, quota family), as the Batch service counts cores.
VM_SIZES: dict[str, tuple[int, str]] = {key: (size.cores, size.family) for key, size in SIZES.items()}

# The series Azure retired: name pattern -> (series, its GPU, the date). NCv3 sizes are in the table too.
_RETIRED: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (re.compile(r"^standard_nc(6|12|24|24r)(_promo)?$"), "NC", "K80", "2023-09-06"),
    (re.compile(r"^standard_nc(6|12|24|24r)s_v2$"), "NCv2", "P100", "2023-09-06"),
    (re.compile(r"^standard_nc(6|12|24|24r)s_v3$"), "NCv3", "V100", "2025-09-30"),
    (re.compile(r"^standard_nd(6|12|24|24r)s$"), "ND", "P40", "2023-09-06"),
    (re.compile(r"^standard_nv(6|12|24)(_promo)?$"), "NV", "M60", "2023-09-06"),
)
# What to use instead, by the retired size's GPU count (its number of vCPUs / 6, as those series were cut).
_INSTEAD = {
    1: "Standard_NC24ads_A100_v4 (1x A100 80 GB) or Standard_NC4as_T4_v3 (1x T4 16 GB)",
    2: "Standard_NC48ads_A100_v4 (2x A100 80 GB)",
    4: "Standard_NC96ads_A100_v4 (4x A100 80 GB) or Standard_NC64as_T4_v3 (4x T4 16 GB)",
}


def size_info(vm_size: str) -> SizeInfo | None:
    """What the table knows of ``vm_size`` (any case), or None."""
    return SIZES.get((vm_size or "").strip().lower())


#: Microsoft's size naming: an ``r`` among the additive features (the letters after the vCPUs) means RDMA
#: capable (InfiniBand), on the HPC (H, HB, HC, HX) and GPU (NC, ND) series: Standard_HB176rs_v4,
#: Standard_HX176rs, Standard_ND96isr_H100_v5, Standard_ND40rs_v2, Standard_NC24rs_v3, Standard_H16mr.
_RDMA_NAME = re.compile(r"^standard_(h|hb|hc|hx|nc|nd)\d+(-\d+)?[a-z]*r[a-z]*(_.*)?$")


def has_infiniband(vm_size: str) -> bool:
    """Whether a node of ``vm_size`` has InfiniBand (RDMA): the table says so, else the size's name (an
    ``r`` among its features, on the H and N series that have them)."""
    info = size_info(vm_size)
    if info is not None:
        return info.infiniband
    return bool(_RDMA_NAME.match((vm_size or "").strip().lower()))


def retirement(vm_size: str) -> str:
    """The one line refusing a retired size, naming current ones; "" for a size that is not retired."""
    key = (vm_size or "").strip().lower()
    for pattern, series, gpu, day in _RETIRED:
        match = pattern.match(key)
        if match:
            count = max(1, int(re.sub(r"\D", "", match.group(1)) or 6) // 6)
            instead = _INSTEAD.get(count, _INSTEAD[4])
            return (
                f"--vm {vm_size}: Azure retired the {series} series ({gpu} GPUs) on {day} and creates no new VM of "
                f"it; use a current size such as {instead}, or --gpu KIND[:COUNT] (e.g. --gpu A100) to have the "
                "cheapest chosen"
            )
    return ""


def check_current(vm_size: str) -> str:
    """``vm_size`` itself when Azure still offers it; ConfigError (one line naming a current size) when retired."""
    line = retirement(vm_size)
    if line:
        raise ConfigError(line)
    return vm_size


def gpu_label(vm_size: str, gpus: int, backend: str = "azure") -> str:
    """What a run's title says of its GPUs: ``"1x A100 80 GB"`` from the table, ``"2 GPUs"`` when only the count
    is known (a size the table lacks, this machine's), "" for none."""
    size = size_info(vm_size) if backend == "azure" else None
    if size is not None and size.gpu is not None:
        return size.gpu.describe()
    return "" if gpus <= 0 else f"{gpus} GPU" + ("s" if gpus > 1 else "") + ("" if backend == "azure" else " here")


def gpus_for(vm_size: str) -> int:
    """How many GPUs a VM of ``vm_size`` shows its tasks: the table's count; 1 for an N-series size the table
    lacks (every one has at least one); 0 for the rest."""
    size = size_info(vm_size)
    if size is not None:
        return size.gpu.count if size.gpu else 0
    return 1 if re.match(r"^standard_n[cdv]", (vm_size or "").strip().lower()) else 0


@dataclass(frozen=True)
class GpuRequest:
    """``--gpu KIND[:COUNT]``: a GPU model (``A100``) and how many on one VM."""

    kind: str
    count: int = 1

    def __str__(self) -> str:
        return f"{self.kind}:{self.count}" if self.count != 1 else self.kind


def _models() -> list[str]:
    return sorted({s.gpu.model for s in GPU_SIZES if s.gpu and not s.retired})


def parse_gpu(text: str) -> GpuRequest:
    """``"A100"``, ``"h100:8"`` -> a :class:`GpuRequest`; ConfigError naming the models when it is not one."""
    kind, _, count = (text or "").strip().partition(":")
    models = {m.lower(): m for m in _models()}
    if kind.strip().lower() not in models:
        retired = {"v100", "k80", "p100", "p40", "m60"}
        why = "Azure retired its sizes" if kind.strip().lower() in retired else "not a GPU of a current size"
        raise ConfigError(f"--gpu {text!r}: {why}; write KIND[:COUNT] with KIND one of {', '.join(_models())}")
    if count and not (count.strip().isdigit() and int(count) >= 1):
        raise ConfigError(f"--gpu {text!r}: COUNT must be a whole number of GPUs, like --gpu H100:8")
    return GpuRequest(models[kind.strip().lower()], int(count) if count else 1)


def fits(size: SizeInfo, request: GpuRequest) -> bool:
    """A current size with at least ``request.count`` whole GPUs of the kind asked for."""
    gpu = size.gpu
    return bool(
        gpu and not size.retired and gpu.share == 1 and gpu.model == request.kind and gpu.count >= request.count
    )


def choose_gpu_size(request: GpuRequest, price: Callable[[str], float | None], *, region: str = "") -> SizeInfo:
    """The cheapest current size that has ``request``'s GPUs: by ``price(size name)`` (per hour, in ``region``;
    None when unknown there), then the fewest GPUs and vCPUs. Sizes priced in the region come first: one the
    price table lacks there may not be offered there.

    Raises
    ------
    ConfigError
        No current size has that many GPUs of that kind on one VM.
    """
    candidates = [s for s in GPU_SIZES if fits(s, request)]
    if not candidates:
        most = max(
            (s.gpu.count for s in GPU_SIZES if s.gpu and s.gpu.model == request.kind and not s.retired), default=0
        )
        raise ConfigError(
            f"--gpu {request}: no Azure VM size has {request.count} {request.kind} GPUs (at most {most} on one VM); "
            f"ask for --gpu {request.kind}:{most} and more --nodes"
        )

    def rank(size: SizeInfo) -> tuple[int, float, int, int]:
        hourly = price(size.name)
        return (0 if hourly is not None else 1, hourly or 0.0, size.gpu.count if size.gpu else 0, size.cores)

    return min(candidates, key=rank)


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


def vm_cores(vm_size: str) -> int:
    """vCPUs of an Azure VM size, from the table or, for sizes it lacks, from the name.

    Raises
    ------
    ConfigError
        The name is not an Azure VM size at all.
    """
    cores = cores_for(vm_size)
    if cores is not None:
        return cores
    match = _VM_SIZE.match(vm_size or "")
    if not match:
        raise ConfigError(
            f"--vm {vm_size!r} is not an Azure VM size: use a name like Standard_D4s_v3 or Standard_E32_v3 "
            "(az vm list-sizes --location <region> lists them)"
        )
    return int(match.group(2))


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
