"""The GPUs inside the task: checked before the cell runs, sampled while it runs.

Standard library only (it runs in the training image). Both sides go through ``nvidia-smi``, which
the NVIDIA container runtime mounts into every container that was given the GPUs (on Batch a GPU
node image does so itself; locally Docker's device request does), so a container without the GPUs
has no ``nvidia-smi`` or sees none, and the preflight says so in one line before the cell spends an
hour on the CPU.

- :func:`preflight`: ``nvidia-smi -L`` must list at least the GPUs the VM size has, and, when torch is
  in the image, ``torch.cuda.device_count()`` (in a child process: CUDA initialised in the runner
  would be inherited by the cell's forked data-loader workers) must see them too. Returns the one line
  to fail with, or ``""``.
- :class:`GpuSampler`: every ``interval`` seconds, ``nvidia-smi --query-gpu=...`` for every GPU,
  handed to a callback (the runner writes it to the log as a progress record).

Examples
--------
In [1]: parse_samples("0, 37, 1024, 81920\\n")
Out[1]: [GpuSample(index=0, utilization=37.0, memory_used=1024, memory_total=81920)]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["GpuSample", "GpuSampler", "host_gpus", "parse_samples", "preflight", "QUERY"]

#: The sampling query: one CSV line per GPU, numbers only (utilisation %, memory in MiB).
QUERY = (
    "nvidia-smi",
    "--query-gpu=index,utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader,nounits",
)
_TIMEOUT = 30.0  # seconds: nvidia-smi on a node whose driver is wedged can hang
_TORCH_TIMEOUT = 180.0  # importing torch with its CUDA libraries on a cold node disk is slow
_TORCH_PROBE = "import torch, sys; print(torch.cuda.device_count(), torch.__version__, torch.version.cuda or 'no CUDA')"
WHAT_TO_DO = (
    "the node needs the NVIDIA driver and the container its GPUs (on Azure: a node image with "
    "NvidiaTeslaDriverInstalled, which batchmagic chooses when AzBatch.node_image is empty; locally: "
    "the NVIDIA Container Toolkit in Docker)"
)


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment: utilisation in percent (None when the driver cannot say), memory in MiB."""

    index: int
    utilization: float | None
    memory_used: int
    memory_total: int

    def to_list(self) -> list[float | int | None]:
        """``[index, utilization, memory_used, memory_total]``: how a sample travels in the progress record."""
        return [self.index, self.utilization, self.memory_used, self.memory_total]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]" on some boards
        return None


def parse_samples(text: str) -> list[GpuSample]:
    """``nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits``
    output -> one sample per GPU; lines that are not four fields with an index are skipped."""
    samples = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            continue
        index, util, used, total = (_number(f) for f in fields)
        if index is None:
            continue
        samples.append(GpuSample(int(index), util, int(used or 0), int(total or 0)))
    return samples


def _nvidia_smi(*args: str) -> tuple[str, str]:
    """(stdout, "") or ("", why it could not run): nvidia-smi missing, failing or hanging."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "", "no nvidia-smi in the container"
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return "", f"nvidia-smi failed: {err}"
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        return "", f"nvidia-smi exited {done.returncode}" + (f": {said[0]}" if said else "")
    return done.stdout, ""


def host_gpus() -> int:
    """The GPUs ``nvidia-smi -L`` lists on this machine; 0 without nvidia-smi (no NVIDIA driver)."""
    listed, _why = _nvidia_smi("-L")
    return sum(1 for line in listed.splitlines() if line.strip().startswith("GPU "))


def _torch_count() -> tuple[int, str] | None:
    """(GPUs torch sees, "torch X (CUDA Y)") when torch is installed, else None. Run in a child process."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _TORCH_PROBE],
            capture_output=True,
            text=True,
            timeout=_TORCH_TIMEOUT,
            check=False,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return 0, f"torch (its check failed: {err})"
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) < 2 or not parts[0].isdigit():
        said = done.stderr.strip().splitlines()
        return 0, f"torch (import failed: {said[-1] if said else done.returncode})"
    cuda = " ".join(parts[2:])
    return int(parts[0]), f"torch {parts[1]} ({'CUDA ' + cuda if cuda != 'no CUDA' else 'a build without CUDA'})"


def _plural(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def preflight(expected: int, where: str = "") -> str:
    """Check that the ``expected`` GPUs are visible; ``""`` when they are, else the one line saying what was
    seen and what to do. ``where`` names the machine (``"Standard_NC24ads_A100_v4"``) in the line."""
    if expected <= 0:
        return ""
    machine = f"this {where} node" if where else "this node"
    listed, why = _nvidia_smi("-L")
    gpus = [line for line in listed.splitlines() if line.strip().startswith("GPU ")]
    if len(gpus) < expected:
        seen = why or (f"nvidia-smi lists {len(gpus)}" if gpus else "nvidia-smi lists none")
        return (
            f"GPU preflight: {machine} should have {_plural(expected)}, but {seen}; {WHAT_TO_DO}. The cell did not run"
        )
    torch = _torch_count()
    if torch is not None and torch[0] < len(gpus):
        count, build = torch
        return (
            f"GPU preflight: nvidia-smi lists {_plural(len(gpus))} but {build} sees {count}: the image needs torch's "
            "CUDA build (a build batchmagic makes maps the kernel's torch to it; an --image must have it). "
            "The cell did not run"
        )
    return ""


class GpuSampler:
    """Samples every GPU every ``interval`` seconds in a daemon thread, handing each sample set to ``emit``.

    One sample is taken at :meth:`start` and one at :meth:`stop`, so a short cell still shows its GPUs.
    A query that fails is skipped (a busy driver); three failures in a row end the sampling.
    """

    def __init__(self, emit: Callable[[list[GpuSample]], None], *, interval: float = 5.0) -> None:
        self._emit = emit
        self._interval = max(0.05, interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batchmagic-gpu-sampler", daemon=True)
        self._failures = 0

    def sample(self) -> bool:
        """One query, emitted when it gave samples; False when it failed."""
        text, _why = _nvidia_smi(*QUERY[1:])
        samples = parse_samples(text)
        if samples:
            self._emit(samples)
        return bool(samples)

    def start(self) -> GpuSampler:
        self.sample()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._failures = 0 if self.sample() else self._failures + 1
            if self._failures >= 3:
                return

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=_TIMEOUT)
        if self._failures < 3:
            self.sample()
