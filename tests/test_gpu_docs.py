"""The GPU guide keeps up with the size table: every current GPU size, its GPUs and its family are in it."""

from __future__ import annotations

from pathlib import Path

from batchmagic.backends.azure.vmsizes import GPU_SIZES

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "gpu.md"


def test_every_current_gpu_size_is_in_the_guide_with_its_family() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    for size in GPU_SIZES:
        if size.retired:
            assert f"`{size.name}`" not in text.split("## InfiniBand")[0], size.name
            continue
        row = next((line for line in text.splitlines() if line.startswith(f"| `{size.name}` |")), "")
        assert size.family in row and str(size.cores) in row, size.name
        assert size.gpu is not None and size.gpu.model in row, size.name
        assert ("| yes |" in row) == size.infiniband, size.name
