"""Log latency: from a ``print`` in the remote cell to its arrival in the client, over 200 lines, on the
local backend and on the Azure path (the Batch emulator and Azurite), side by side in one run.

Both go through the path Blob Storage uses: the runner appends records to the run's log; the client
tails it by byte offset (on Azure, with ranged reads of the log blob between its Batch polls). Each line
carries the time it was printed; the client notes when it arrived. Same machine, same clock. The lines
come in bursts with quiet spells between them, as a training loop's do, and steadily.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from batchmagic.api import Session
from tests.support.azurite import start_azurite  # run from the repository root: `python -m bench log_latency`
from tests.support.emulator import start_emulator
from tests.support.settings import azure_environ

LINES = 200
CELL = f"""
import time
for i in range({LINES}):
    print(f"{{time.time():.6f}} line {{i}}")
    time.sleep(0.02 if i % 40 < 30 else 0.3)
"""


def _latencies(session: Session, backend: Any) -> list[float]:
    latencies: list[float] = []
    buffer = ""

    def on_update(state, records) -> None:  # type: ignore[no-untyped-def]
        nonlocal buffer
        now = time.time()
        for record in records:
            buffer += record.text
            *lines, buffer = buffer.split("\n")
            latencies.extend(now - float(line.split()[0]) for line in lines if line.strip())

    session.submit(CELL, {}, backend=backend, on_update=on_update, folder="").wait()
    return sorted(latencies)


def _local() -> list[float]:
    with tempfile.TemporaryDirectory() as home:
        os.environ["BATCHMAGIC_HOME"] = home
        return _latencies(Session(), "local")


def _azure() -> tuple[list[float], int]:
    """The latencies through the emulator and Azurite, and the log reads the client made."""
    with tempfile.TemporaryDirectory(prefix="bench-log-latency-") as tmp_name:
        tmp = Path(tmp_name)
        with (
            ExitStack() as stack,
            start_azurite(tmp / "azurite") as azurite,
            start_emulator(tmp / "batch", allocation_delay=0.2) as emu,
        ):
            stack.enter_context(azure_environ(emu, azurite, container="bench-log-latency", home=tmp / "home"))
            session = Session()
            backend: Any = session.backend("azure")
            backend.check_access()
            reads = _count_reads(backend.store)
            latencies = _latencies(session, backend)
            session.teardown()
            return latencies, reads[0]


def _count_reads(store: Any) -> list[int]:
    """Count the store's ranged log reads (a list holding the count, kept current)."""
    count = [0]
    read_from = store.read_from

    def counted(key: str, offset: int, limit: int | None = None) -> bytes:
        if key.endswith("output.log"):
            count[0] += 1
        return bytes(read_from(key, offset, limit))

    store.read_from = counted
    return count


def _p95(values: list[float]) -> float:
    return values[int(len(values) * 0.95) - 1]


def main() -> dict[str, float]:
    local = _local()
    azure, reads = _azure()
    figures = {
        "log_latency_p50_ms": statistics.median(local) * 1000,
        "log_latency_p95_ms": _p95(local) * 1000,
        "log_latency_azure_p50_ms": statistics.median(azure) * 1000,
        "log_latency_azure_p95_ms": _p95(azure) * 1000,
        "log_latency_azure_reads": float(reads),
    }
    print(f"lines received         {len(local):8d} local, {len(azure)} on the Azure path")
    for q in ("p50", "p95"):
        here, there = figures[f"log_latency_{q}_ms"], figures[f"log_latency_azure_{q}_ms"]
        print(f"latency {q}            {here:8.0f} ms local, {there:.0f} ms Azure path")
    print(f"log reads (Azure path) {reads:8d}")
    return figures


if __name__ == "__main__":
    main()
