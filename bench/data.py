"""Data in: download throughput of a 1 GB blob, and bytes uploaded for an unchanged 500 MB variable.

(1) The same 1 GB blob in Azurite, three ways, alternated over a few rounds in one run: the runner's
``--input`` download (parallel ranged requests, 16 at once), azure-storage-blob's
``download_blob(max_concurrency=1)``, and a plain local copy of the same bytes (the physical limit
here). Azurite is CPU-bound on 2 cores, so these are ratios on this machine, not Azure's speeds.

(2) A cell that reads a 500 MB variable, submitted twice on the Azure backend (emulator + Azurite):
bytes of variables uploaded by each submission.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from batchmagic.api import Session
from batchmagic.storage import BlobChannel, BlobStore
from tests.support.azurite import start_azurite  # run from the repository root: `python -m bench data`
from tests.support.emulator import start_emulator
from tests.support.settings import azure_environ

SIZE = 1 << 30
ROUNDS = 3


def throughput(tmp: Path, connection: str) -> dict[str, float]:
    source = tmp / "source.bin"
    with open(source, "wb") as f:
        for _ in range(SIZE // (64 << 20)):
            f.write(os.urandom(64 << 20))
    store = BlobStore.from_connection_string(connection, "bench")
    store.ensure_container()
    store.put_file("big.bin", source)
    url = store.url("big.bin", permissions="r", expiry=datetime.now(UTC) + timedelta(hours=1))
    from azure.storage.blob import BlobServiceClient

    blob = BlobServiceClient.from_connection_string(connection).get_blob_client("bench", "big.bin")
    target = tmp / "target.bin"

    def ranged() -> None:
        BlobChannel(url).download_to(target, size=SIZE, concurrency=16)

    def sdk_single() -> None:
        with open(target, "wb") as f:
            blob.download_blob(max_concurrency=1).readinto(f)

    def local_copy() -> None:
        shutil.copyfile(source, target)

    timings: dict[str, list[float]] = {
        "--input (16 ranges)": [],
        "download_blob(max_concurrency=1)": [],
        "local copy": [],
    }
    for _ in range(ROUNDS):
        for name, fn in zip(timings, (ranged, sdk_single, local_copy), strict=True):
            target.unlink(missing_ok=True)
            started = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - started)
            assert target.stat().st_size == SIZE
    base = statistics.median(timings["download_blob(max_concurrency=1)"])
    print(f"1 GiB blob, median of {ROUNDS} alternated rounds:")
    for name, values in timings.items():
        seconds = statistics.median(values)
        print(
            f"  {name:<36} {seconds:6.2f} s  {SIZE / seconds / 1e6:7.0f} MB/s  x{base / seconds:.2f} vs single stream"
        )
    figures = {}
    for key, name in (("input", "--input (16 ranges)"), ("single_stream", "download_blob(max_concurrency=1)"),
                      ("local_copy", "local copy")):  # fmt: skip
        seconds = statistics.median(timings[name])
        figures[f"data_{key}_1gib_s"] = seconds
        figures[f"data_{key}_mb_per_s"] = SIZE / seconds / 1e6
    return figures


def dedup(tmp: Path, azurite: Any) -> dict[str, float]:
    with (
        start_emulator(tmp / "batch", allocation_delay=0.2) as emu,
        azure_environ(emu, azurite, container="bench-data", home=tmp / "home"),
    ):
        session = Session()
        weights = np.random.default_rng(0).random(500_000_000 // 8)
        figures = {}
        for attempt in ("first", "second"):
            run = session.submit("n = len(weights)", {"weights": weights}, backend="azure")
            run.wait(timeout=600)
            print(f"500 MB variable, {attempt} run: {run.uploaded_object_bytes:,} bytes of variables uploaded")
            figures[f"data_500mb_variable_{attempt}_run_uploaded_bytes"] = float(run.uploaded_object_bytes)
        session.teardown()
    return figures


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with start_azurite(tmp / "azurite") as azurite:
            figures = throughput(tmp, azurite.connection_string)
            figures.update(dedup(tmp, azurite))
    return figures


if __name__ == "__main__":
    main()
