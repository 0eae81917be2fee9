"""The size table's GPU facts, --gpu choosing a size, retired sizes refused, and the bad input around them."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from batchmagic.backends.azure.prices import Prices
from batchmagic.backends.azure.vmsizes import (
    GPU_SIZES,
    SIZES,
    GpuRequest,
    choose_gpu_size,
    cores_for,
    family_for,
    gpus_for,
    parse_gpu,
    retirement,
    size_info,
)
from batchmagic.errors import ConfigError
from batchmagic.options import RunOptions

SHIPPED = Prices.shipped()


def eastus(size: str) -> float | None:
    return SHIPPED.hourly(size, "eastus")


def test_the_table_knows_gpu_model_count_memory_infiniband_and_family() -> None:
    a100 = size_info("standard_nc24ads_a100_v4")
    assert a100 is not None and a100.gpu is not None
    assert (a100.gpu.model, a100.gpu.count, a100.gpu.memory_gib, a100.infiniband) == ("A100", 1, 80, False)
    assert a100.family == family_for("Standard_NC24ads_A100_v4") == "standardNCADSA100v4Family"
    h100 = size_info("Standard_ND96isr_H100_v5")
    assert (
        h100 is not None
        and h100.infiniband
        and h100.describe() == ("Standard_ND96isr_H100_v5 (96 vCPUs, 8x H100 80 GB, InfiniBand)")
    )
    assert size_info("Standard_NV6ads_A10_v5").gpu.describe() == "1/6 of an A10 (4 GB)"  # type: ignore[union-attr]
    assert size_info("Standard_D4s_v3").gpu is None and cores_for("Standard_D4s_v3") == 4  # type: ignore[union-attr]
    assert size_info("Standard_HB120rs_v3").infiniband  # type: ignore[union-attr]
    assert gpus_for("Standard_ND96isr_H100_v5") == 8 and gpus_for("Standard_E32_v3") == 0
    assert gpus_for("Standard_NV12s_v3") == 1  # an N-series size the table lacks has at least one
    # Every current GPU size has a price in the shipped regions (for --gpu to choose by).
    for size in GPU_SIZES:
        assert SHIPPED.hourly(size.name, "eastus") and SHIPPED.hourly(size.name, "westeurope"), size.name
    assert all(key == size.key for key, size in SIZES.items())


@pytest.mark.parametrize(
    ("gpu", "chosen"),
    [
        ("T4", "Standard_NC4as_T4_v3"),
        ("a100", "Standard_NC24ads_A100_v4"),
        ("A100:2", "Standard_NC48ads_A100_v4"),
        ("A100:3", "Standard_NC96ads_A100_v4"),  # no 3-GPU size: the cheapest with at least 3
        ("A100:8", "Standard_ND96asr_v4"),  # cheaper than the 80 GB ND96amsr
        ("H100", "Standard_NC40ads_H100_v5"),
        ("H100:8", "Standard_ND96isr_H100_v5"),
        ("A10", "Standard_NV36ads_A10_v5"),  # a whole A10: never a slice of one
    ],
)
def test_gpu_chooses_the_cheapest_current_size_that_has_it(gpu: str, chosen: str) -> None:
    assert choose_gpu_size(parse_gpu(gpu), eastus, region="eastus").name == chosen


def test_a_size_without_a_price_in_the_region_comes_after_the_priced_ones() -> None:
    def only_big(size: str) -> float | None:
        return 10.0 if size == "Standard_NC96ads_A100_v4" else None

    assert choose_gpu_size(GpuRequest("A100"), only_big).name == "Standard_NC96ads_A100_v4"
    assert choose_gpu_size(GpuRequest("A100"), lambda size: None).name == "Standard_NC24ads_A100_v4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("V100", "Azure retired its sizes"),
        ("RTX4090", r"not a GPU of a current size; write KIND\[:COUNT\] with KIND one of A10, A100, H100, H200, T4"),
        ("A100:two", "COUNT must be a whole number"),
        ("A100:0", "COUNT must be a whole number"),
    ],
)
def test_bad_gpu_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        RunOptions(gpu=text)
    assert "\n" not in str(info.value)


def test_too_many_gpus_for_one_vm_says_how_many_fit() -> None:
    with pytest.raises(ConfigError, match=r"no Azure VM size has 16 H100 GPUs \(at most 8 on one VM\)"):
        choose_gpu_size(parse_gpu("H100:16"), eastus)


@pytest.mark.parametrize(
    ("size", "series", "instead"),
    [
        ("Standard_NC6s_v3", "NCv3 series (V100 GPUs) on 2025-09-30", "Standard_NC24ads_A100_v4"),
        ("Standard_NC24s_v3", "NCv3 series", "Standard_NC96ads_A100_v4"),
        ("standard_nc6", "NC series (K80 GPUs) on 2023-09-06", "Standard_NC4as_T4_v3"),
        ("Standard_NC12s_v2", "NCv2 series (P100 GPUs)", "Standard_NC48ads_A100_v4"),
        ("Standard_ND24rs", "ND series (P40 GPUs)", "Standard_NC96ads_A100_v4"),
        ("Standard_NV6", "NV series (M60 GPUs)", "Standard_NC24ads_A100_v4"),
    ],
)
def test_retired_sizes_are_one_line_naming_a_current_size(size: str, series: str, instead: str) -> None:
    line = retirement(size)
    assert series in line and instead in line and "\n" not in line
    with pytest.raises(ConfigError, match="retired"):
        RunOptions(vm_size=size)
    assert retirement("Standard_NC24ads_A100_v4") == "" and retirement("Standard_NV36ads_A10_v5") == ""


def test_gpu_and_vm_agree_or_are_one_line() -> None:
    assert RunOptions(gpu="A100", vm_size="Standard_NC48ads_A100_v4").vm_size == "Standard_NC48ads_A100_v4"
    with pytest.raises(ConfigError, match=r"--gpu A100 and --vm Standard_E32_v3 \(no GPU\) disagree: drop --vm"):
        RunOptions(gpu="A100", vm_size="Standard_E32_v3")
    with pytest.raises(ConfigError, match=r"--gpu H100:8 and --vm Standard_NC40ads_H100_v5 \(1x H100 94 GB\)"):
        RunOptions(gpu="H100:8", vm_size="Standard_NC40ads_H100_v5")
    chosen = RunOptions(gpu="t4", low_priority=True).with_gpu_size(
        lambda size: SHIPPED.hourly(size, "eastus", low_priority=True)
    )
    assert chosen.vm_size == "Standard_NC4as_T4_v3" and chosen.gpu == "T4"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--vm Standard_NC6s_v3", "Azure retired the NCv3 series"),
        ("--gpu V100", "Azure retired its sizes"),
        ("--gpu A100 --vm Standard_D4s_v3", "disagree"),
        ("--gpu H100:16", "at most 8 on one VM"),
    ],
)
def test_bad_gpu_flags_are_usage_errors(shell, line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        shell.run_cell(f"%%azbatch --backend local {line}\nx = 1")
    assert "\n" not in str(info.value) and "x" not in shell.user_ns


def test_gpu_on_a_named_pool_is_one_line(home, tmp_path) -> None:
    from batchmagic.api import Session
    from batchmagic.config import Settings

    settings = Settings(backend="azure", home=home)
    with pytest.raises(ConfigError, match="--gpu does not apply to a run on a named pool: pool gpus decides"):
        Session.check("x = 1", RunOptions(gpu="A100", pool="gpus", backend="azure"), settings)


# --- the node image and the task's container options for a GPU size ---


def _image(offer: str, sku: str, *caps: str) -> object:
    from batchmagic.backends.azure.nodeimages import SupportedImage

    return SupportedImage(
        "microsoft-dsvm", offer, sku, "batch.node.ubuntu 24.04", capabilities=("DockerCompatible", *caps)
    )


def test_a_gpu_size_gets_an_image_whose_capabilities_name_the_driver_it_needs() -> None:
    from datetime import date

    from batchmagic.backends.azure.nodeimages import GRID, TESLA, choose_node_image

    today = date(2026, 12, 6)
    tesla, grid = _image("ubuntu-hpc", "2404", TESLA), _image("ubuntu-grid", "2404", GRID)
    no_driver = _image("ubuntu-hpc", "2404-plain")  # an HPC image without the capability is not taken on trust
    images = [no_driver, tesla, grid]
    assert choose_node_image(images, "Standard_NC24ads_A100_v4", today=today).offer == "ubuntu-hpc"
    assert choose_node_image(images, "Standard_NC24ads_A100_v4", today=today).sku == "2404"
    nv = choose_node_image(images, "Standard_NV36ads_A10_v5", today=today)
    assert nv.offer == "ubuntu-grid" and not nv.driver_extension
    fallback = choose_node_image([no_driver, tesla], "Standard_NV36ads_A10_v5", today=today)
    assert fallback.driver_extension  # no GRID image: Azure's GPU driver extension on the pool
    with pytest.raises(ConfigError, match=r"with the NVIDIA driver \(NvidiaTeslaDriverInstalled\)"):
        choose_node_image([no_driver], "Standard_ND96isr_H100_v5", today=today)


def test_the_pool_adds_the_driver_extension_and_tasks_never_ask_for_gpus() -> None:
    from batchmagic.backends.azure.gpus import container_run_options
    from batchmagic.backends.azure.nodeimages import NodeImage
    from batchmagic.backends.azure.requests import vm_configuration
    from batchmagic.config import Settings

    node = NodeImage("microsoft-dsvm", "ubuntu-hpc", "2404", "latest", "batch.node.ubuntu 24.04", True)
    vmc = vm_configuration(node, ["img:1"], Settings())
    (extension,) = vmc.extensions
    assert (extension.publisher, extension.type) == ("Microsoft.HpcCompute", "NvidiaGpuDriverLinux")
    assert vm_configuration(NodeImage(*[*node.__dict__.values()][:5]), ["img:1"], Settings()).extensions is None
    assert container_run_options(gpus=1, distributed=False, shm_size="8g") == "--shm-size 8g"
    assert container_run_options(gpus=8, distributed=True, shm_size="") == "--network host --shm-size 8g"
    assert container_run_options(gpus=0, distributed=False, shm_size="8g") is None


def test_a_node_image_override_without_the_driver_is_one_line_for_a_gpu_size() -> None:
    from datetime import date

    from batchmagic.backends.azure.nodeimages import TESLA, choose_node_image

    today = date(2026, 12, 6)
    images = [_image("ubuntu-hpc", "2404", TESLA), _image("ubuntu-plain", "2404")]
    plain = "microsoft-dsvm:ubuntu-plain:2404"
    with pytest.raises(ConfigError, match=r"has no NVIDIA driver \(NvidiaTeslaDriverInstalled"):
        choose_node_image(images, "Standard_NC24ads_A100_v4", today=today, override=plain)
    assert choose_node_image(images, "Standard_D4s_v3", today=today, override=plain).offer == "ubuntu-plain"
    assert choose_node_image(images, "Standard_NV36ads_A10_v5", today=today, override=plain).driver_extension
    tesla = choose_node_image(
        images, "Standard_NC24ads_A100_v4", today=today, override="microsoft-dsvm:ubuntu-hpc:2404"
    )
    assert tesla.offer == "ubuntu-hpc" and not tesla.driver_extension


RDMA_SIZES = [
    "Standard_ND96isr_H100_v5",
    "Standard_ND96isr_H200_v5",
    "Standard_ND96asr_v4",
    "Standard_ND96amsr_A100_v4",
    "Standard_HB120rs_v3",
    "standard_hb176rs_v4",
    "Standard_HB176-96rs_v4",
    "Standard_HX176rs",
    "Standard_HC44rs",
    "Standard_ND40rs_v2",
    "Standard_H16r",
    "Standard_H16mr",
    "Standard_NC24rs_v3",
]
NO_RDMA_SIZES = [
    "Standard_NC24ads_A100_v4", "Standard_NC40ads_H100_v5", "Standard_NC80adis_H100_v5", "Standard_NC4as_T4_v3",
    "Standard_NV36adms_A10_v5", "Standard_D4s_v3", "Standard_E32_v3", "Standard_F16s_v2", "Standard_H16",
    "Standard_NC24s_v3", "", "Standard_DR4",
]  # fmt: skip


@pytest.mark.parametrize("vm", RDMA_SIZES)
def test_a_distributed_run_on_an_rdma_size_gets_infiniband_in_its_container(vm: str) -> None:
    from batchmagic.backends.azure.gpus import INFINIBAND_OPTIONS, container_run_options
    from batchmagic.backends.azure.vmsizes import has_infiniband

    assert has_infiniband(vm)
    options = container_run_options(gpus=8, distributed=True, shm_size="16g", vm_size=vm)
    assert options == f"--network host --shm-size 16g {INFINIBAND_OPTIONS}"
    for flag in ("--device /dev/infiniband", "--ulimit memlock=-1", "--cap-add IPC_LOCK"):
        assert flag in INFINIBAND_OPTIONS
    # A run on one node talks to no other: no devices asked for (nor --gpus, ever).
    assert container_run_options(gpus=8, distributed=False, shm_size="16g", vm_size=vm) == "--shm-size 16g"


@pytest.mark.parametrize("vm", NO_RDMA_SIZES)
def test_a_size_without_infiniband_gets_no_rdma_options(vm: str) -> None:
    from batchmagic.backends.azure.gpus import container_run_options
    from batchmagic.backends.azure.vmsizes import has_infiniband

    assert not has_infiniband(vm)
    assert container_run_options(gpus=1, distributed=True, shm_size="", vm_size=vm) == "--network host --shm-size 8g"
