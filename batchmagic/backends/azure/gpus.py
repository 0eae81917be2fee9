"""What a GPU run asks of Batch, decided from plain data: the task's container options, the pool's driver
extension, and the line that says a GPU family's quota is too small.

- The GPUs: a node image with the NVIDIA driver (:mod:`~batchmagic.backends.azure.nodeimages`) and Batch
  gives a container task the node's GPUs itself. ``--gpus`` in ``containerRunOptions`` is refused by the
  service (the task fails with ``ContainerInvalidSettings``), so :func:`container_run_options` never adds it.
- ``/dev/shm``: Docker's 64 MB fails PyTorch DataLoader workers ("Bus error") and NCCL; a GPU or distributed
  run's container gets ``--shm-size`` (``AzBatch.shm_size``), a distributed one the host's network too.
- InfiniBand: on an RDMA-capable size (ND, HB/HC/HX, the ``r`` sizes) a distributed run's container gets the
  node's InfiniBand devices (``--device /dev/infiniband``), unlimited locked memory (``--ulimit memlock=-1``:
  RDMA registers, that is pins, its buffers) and ``--cap-add IPC_LOCK``, as NVIDIA documents for NCCL in a
  container and Batch Shipyard gives its RDMA tasks; without them NCCL finds no IB device and falls back to
  TCP over the node's Ethernet. The node image must have the InfiniBand drivers (``microsoft-dsvm``
  ``ubuntu-hpc``, the default for GPU sizes, has them), the training image the user-space verbs library.
- NV sizes on an image without the GRID driver: Azure's NVIDIA GPU driver extension on the pool.
- Quota: a Batch account counts dedicated cores per VM family as well as in all (``dedicatedCoreQuotaPerVMFamily``);
  GPU families often start at zero. The service reports it as a pool resize error.

Examples
--------
In [1]: container_run_options(gpus=1, distributed=False, shm_size="8g")
Out[1]: '--shm-size 8g'
"""

from __future__ import annotations

from typing import Any

from batchmagic.backends.azure.vmsizes import family_for, has_infiniband, size_info
from batchmagic.distributed import DEFAULT_SHM_SIZE

__all__ = [
    "DRIVER_EXTENSION",
    "INFINIBAND_OPTIONS",
    "QUOTA_HELP",
    "container_run_options",
    "driver_extension",
    "quota_line",
]

#: Azure's NVIDIA GPU driver VM extension for Linux (it installs GRID on NV sizes, CUDA on NC/ND).
DRIVER_EXTENSION = {
    "name": "nvidia-gpu-driver",
    "publisher": "Microsoft.HpcCompute",
    "type": "NvidiaGpuDriverLinux",
    "type_handler_version": "1.9",
}
#: Where a Batch account's quotas are raised (Microsoft's "Batch service quotas and limits").
QUOTA_HELP = (
    "request more in the Azure portal: your Batch account > Quotas > Request quota increase "
    "(quota type Batch, then the VM series)"
)


#: What a distributed run's container on an RDMA-capable node gets: the InfiniBand devices (the directory:
#: every HCA's verbs, umad and rdma_cm device, 8 HCAs on an ND H100 v5), locked memory without limit, and
#: the capability to lock it.
INFINIBAND_OPTIONS = "--device /dev/infiniband --ulimit memlock=-1 --cap-add IPC_LOCK"


def container_run_options(*, gpus: int, distributed: bool, shm_size: str, vm_size: str = "") -> str | None:
    """The task's ``containerRunOptions``: ``--shm-size`` for a GPU or distributed run, the host's network for a
    distributed one (NCCL does not cross Docker's bridge) and, on a ``vm_size`` with InfiniBand, its devices
    (:data:`INFINIBAND_OPTIONS`); None for any other run. Never ``--gpus``."""
    shm = f"--shm-size {shm_size or DEFAULT_SHM_SIZE}"
    if distributed:
        rdma = f" {INFINIBAND_OPTIONS}" if has_infiniband(vm_size) else ""
        return f"--network host {shm}{rdma}"
    return shm if gpus > 0 else None


def driver_extension(m: Any) -> Any:
    """The pool's ``VMExtension`` (of the SDK's models ``m``) that installs the NVIDIA driver."""
    spec = DRIVER_EXTENSION
    return m.VMExtension(
        name=spec["name"],
        publisher=spec["publisher"],
        type=spec["type"],
        type_handler_version=spec["type_handler_version"],
        auto_upgrade_minor_version=True,
    )


def quota_line(code: str, message: str, *, vm_size: str, nodes: int, low_priority: bool, cores: int) -> str:
    """The one line for a quota resize error: the family, the cores asked for, where to ask for more."""
    total = cores * nodes
    kind = "low-priority" if low_priority else "dedicated"
    family = family_for(vm_size) or "its VM family"
    size = size_info(vm_size)
    gpus = f" ({size.gpu.describe()})" if size is not None and size.gpu else ""
    if code == "AccountVMFamilyCoreQuotaReached":
        return (
            f"{code}: {nodes} x {vm_size}{gpus} needs {total} {kind} cores of family {family}, over the Batch "
            f"account's quota for it ({message}); {QUOTA_HELP}, or pick a size of another family"
        )
    smaller = "" if gpus else ", pick a smaller --vm"
    return (
        f"{code}: {nodes} x {vm_size}{gpus} needs {total} {kind} cores ({family}), over the account's quota "
        f"({message}). Ask for a quota increase ({QUOTA_HELP}){smaller}, or use --low-priority"
    )
