"""A fake ``nvidia-smi`` for tests on machines without a GPU: the real runner calls it as it would the real one.

:func:`fake_nvidia_smi` writes an executable ``nvidia-smi`` into a directory to put first on ``PATH``.
It answers ``-L`` with one line per GPU and ``--query-gpu=...`` with one CSV line per GPU, the
utilisation stepping through ``utilization`` on each call (a counter file beside the script), the
memory growing by ``memory_step`` MiB a call: so samples over time differ, as a training loop's do.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import Sequence
from pathlib import Path

_SCRIPT = """\
#!{python}
import sys
from pathlib import Path

GPUS = {gpus}
UTIL = {utilization!r}
TOTAL = {total}
STEP = {step}
counter = Path(__file__).with_name("nvidia-smi.calls")
args = sys.argv[1:]
if args == ["-L"]:
    for i in range(GPUS):
        print(f"GPU {{i}}: {model} (UUID: GPU-0000000{{i}}-fake)")
    sys.exit(0)
if args and args[0].startswith("--query-gpu="):
    calls = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(calls + 1))
    for i in range(GPUS):
        util = UTIL[(calls + i) % len(UTIL)]
        print(f"{{i}}, {{util}}, {{min(TOTAL, 500 + STEP * calls + 100 * i)}}, {{TOTAL}}")
    sys.exit(0)
print("fake nvidia-smi: unexpected arguments", args, file=sys.stderr)
sys.exit(9)
"""


def fake_nvidia_smi(
    directory: Path,
    *,
    gpus: int = 1,
    model: str = "NVIDIA A100 80GB PCIe",
    utilization: Sequence[int] = (0, 35, 90, 97, 60),
    total: int = 81920,
    memory_step: int = 1000,
) -> Path:
    """Write the fake into ``directory`` and return the directory (put it first on ``PATH``)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text(
        _SCRIPT.format(
            python=sys.executable,
            gpus=gpus,
            model=model,
            utilization=list(utilization),
            total=total,
            step=memory_step,
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def fake_torch(directory: Path, *, count: int, version: str = "2.5.1+cpu", cuda: str | None = None) -> Path:
    """A stand-in ``torch`` package (for ``PYTHONPATH``) whose ``cuda.device_count()`` says ``count``."""
    package = directory / "torch"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\nfrom torch import cuda, version\n")
    (package / "cuda.py").write_text(f"def device_count():\n    return {count}\n")
    (package / "version.py").write_text(f"cuda = {cuda!r}\n")
    return directory
