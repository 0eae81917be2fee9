"""Packaging overhead: capture() of a cell reading a 200 MB DataFrame and a dict of 100k small
objects, as a ratio to plain ``cloudpickle.dumps`` of the same objects plus writing them to disk.
capture() also hashes every pickle (sha256) so that unchanged big values are never uploaded twice.

Both are timed alternately, several rounds, in one process; the figure is the ratio of medians.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd

from batchmagic.package.capture import capture

ROUNDS = 5


def make_objects() -> dict[str, object]:
    rows = 200 * 1024 * 1024 // (8 * 4)  # four float64 columns: 200 MiB
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.random((rows, 4)), columns=list("abcd"))
    small = {f"key-{i}": {"id": i, "name": f"item {i}", "score": i * 0.5} for i in range(100_000)}
    return {"df": df, "small": small}


def baseline(objects: dict[str, object], tmp: Path) -> None:
    for name, value in objects.items():
        (tmp / f"{name}.pkl").write_bytes(cloudpickle.dumps(value, protocol=5))


def packaged(objects: dict[str, object], tmp: Path) -> int:
    """Bytes written: the bundle, plus the big values it carries as content-addressed objects beside it."""
    captured = capture("result = len(df) + len(small)", objects, tmp / "bundle")
    return captured.size + sum(obj.size for obj in captured.objects.values())


def main() -> dict[str, float]:
    objects = make_objects()
    base_times, cap_times = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            baseline(objects, tmp)
            t1 = time.perf_counter()
            size = packaged(objects, tmp)
            t2 = time.perf_counter()
            base_times.append(t1 - t0)
            cap_times.append(t2 - t1)
    base, cap = statistics.median(base_times), statistics.median(cap_times)
    print(f"bundle + objects       {size / 1e6:8.1f} MB")
    print(f"cloudpickle + write    {base:8.3f} s (median of {ROUNDS})")
    print(f"capture()              {cap:8.3f} s (median of {ROUNDS})")
    print(f"ratio capture/baseline {cap / base:8.2f}")
    return {
        "packaging_capture_s": cap,
        "packaging_cloudpickle_s": base,
        "packaging_ratio": cap / base,
        "packaging_written_mb": size / 1e6,
    }


if __name__ == "__main__":
    main()
