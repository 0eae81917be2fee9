"""Log latency: from a ``print`` in the remote cell to its arrival in the client, over 200 lines.

Runs on the local backend, through the same path Blob Storage uses (the runner appends records
to the run's log; the client tails it by byte offset). Each line carries the time it was printed;
the client notes when it arrived. Same machine, same clock.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from batchmagic.api import Session

LINES = 200
CELL = f"""
import time
for i in range({LINES}):
    print(f"{{time.time():.6f}} line {{i}}")
    time.sleep(0.02)
"""


def main() -> dict[str, float]:
    latencies: list[float] = []
    buffer = ""

    def on_update(state, records) -> None:  # type: ignore[no-untyped-def]
        nonlocal buffer
        now = time.time()
        for record in records:
            buffer += record.text
            *lines, buffer = buffer.split("\n")
            latencies.extend(now - float(line.split()[0]) for line in lines if line.strip())

    with tempfile.TemporaryDirectory() as home:
        os.environ["BATCHMAGIC_HOME"] = home
        session = Session()
        session.submit(CELL, {}, backend="local", on_update=on_update).wait()
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    print(f"lines received         {len(latencies):8d}")
    print(f"latency p50            {p50 * 1000:8.0f} ms")
    print(f"latency p95            {p95 * 1000:8.0f} ms")
    return {"log_latency_p50_ms": p50 * 1000, "log_latency_p95_ms": p95 * 1000}


if __name__ == "__main__":
    main()
