"""A distributed run's poll tick as its ranks grow: reads of the run's store (each one GET on Blob Storage)
and the tick's wall time, now and as it was, side by side on the same running runs.

Each run is a real multi-instance task on the Batch emulator (process executor) with Azurite: ``nodes x
procs`` ranks that each print a line a second. Its :class:`~batchmagic.run.run.Run` is polled here, one
tick after another (what the notebook's main thread does), and each tick's store reads are counted on the
run's store. **Now**: the first :data:`~batchmagic.run.monitor.LIVE_RANKS` ranks' logs stream, read at once,
:data:`~batchmagic.run.monitor.GLIMPSES` other ranks' last lines a tick, the nodes' states read at once.
**As it was**: the same run made to stream every rank's log (``Run.follow``) with one read at a time
(``storage.READERS`` 1), which is what every tick did before: every node's state, then every rank's log,
one after another. Azurite answers on loopback in a few milliseconds, where Blob Storage from a notebook is
tens of milliseconds a round trip: every other tick adds :data:`ROUND_TRIP` to each read. The machine's 2
cores run the ranks, the emulator and Azurite too, so the walls are noisy; the reads are the figure that
carries.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from batchmagic import storage
from batchmagic.api import Session
from tests.support.azurite import start_azurite  # run from the repository root: `python -m bench rank_polling`
from tests.support.emulator import start_emulator
from tests.support.settings import azure_environ

SHAPES = ((2, 2), (4, 4), (8, 8))  # (nodes, procs per node)
TICKS = 5
ROUND_TRIP = 0.02  # seconds: a notebook's round trip to Blob Storage in its region (Azurite's is ~1 ms)
CELL = """
import os, time
for i in range(600):
    print("rank", os.environ["RANK"], "step", i, flush=True)
    time.sleep(1.0)
"""


@contextmanager
def counted(store: Any, *, round_trip: float = 0.0) -> Iterator[list[int]]:
    """Count the store's reads (``get_bytes``, ``read_from``) while inside: ``[reads]``; each takes
    ``round_trip`` seconds more (a notebook's distance to Blob Storage, where Azurite is on loopback)."""
    count = [0]
    lock = threading.Lock()
    real = {name: getattr(store, name) for name in ("get_bytes", "read_from")}

    def wrap(name: str) -> Any:
        def read(*args: Any, **kwargs: Any) -> Any:
            with lock:
                count[0] += 1
            time.sleep(round_trip)
            return real[name](*args, **kwargs)

        return read

    for name in real:
        setattr(store, name, wrap(name))
    try:
        yield count
    finally:
        for name in real:
            delattr(store, name)


def _ticks(run: Any) -> tuple[float, float, float]:
    """The median store reads and wall milliseconds of TICKS ticks of ``run`` (read on from where it was),
    and the median wall milliseconds with each read :data:`ROUND_TRIP` longer."""
    reads, walls, far = [], [], []
    for tick in range(2 * TICKS):
        with counted(run.store, round_trip=ROUND_TRIP if tick % 2 else 0.0) as count:
            start = time.perf_counter()
            run.poll()
            (far if tick % 2 else walls).append((time.perf_counter() - start) * 1000)
        reads.append(count[0])
        time.sleep(0.3)
    return statistics.median(reads), statistics.median(walls), statistics.median(far)


def _running(session: Session, nodes: int, procs: int) -> Any:
    run = session.submit(CELL, {}, backend="azure", nodes=nodes, procs_per_node=procs, distributed=True)
    deadline = time.monotonic() + 240
    while not all(row.state == "running" for row in run.state().ranks):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {nodes * procs} ranks never all ran")
        run.poll()
        time.sleep(0.5)
    return run


def measure() -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rank-polling-") as tmp_name:
        tmp = Path(tmp_name)
        with (
            ExitStack() as stack,
            start_azurite(tmp / "azurite") as azurite,
            start_emulator(tmp / "batch", allocation_delay=0.2) as emu,
        ):
            stack.enter_context(azure_environ(emu, azurite, container="bench-ranks", home=tmp / "home"))
            session = Session()
            for nodes, procs in SHAPES:
                run = _running(session, nodes, procs)
                now = _ticks(run)
                for tid in run.task_ids:  # as it was: every rank's log streams, one read at a time
                    run.follow(tid)
                saved, storage.READERS = storage.READERS, 1
                try:
                    before = _ticks(run)
                finally:
                    storage.READERS = saved
                run.cancel()
                for when, got in (("", now), ("before_", before)):
                    for what, figure in zip(("reads", "ms", "far_ms"), got, strict=True):
                        figures[f"rank_poll_{what}_{when}{nodes * procs}_ranks"] = figure
            session.teardown()
    return figures


def report(figures: dict[str, float]) -> None:
    for nodes, procs in SHAPES:
        n = nodes * procs
        now, was = (
            tuple(figures[f"rank_poll_{what}_{when}{n}_ranks"] for what in ("reads", "ms", "far_ms"))
            for when in ("", "before_")
        )
        print(
            f"{n} ranks ({nodes} nodes x {procs}): store reads a tick {now[0]:.0f} (was {was[0]:.0f}); tick "
            f"{now[1]:.0f} ms (was {was[1]:.0f} ms), with a {ROUND_TRIP * 1000:.0f} ms round trip {now[2]:.0f} ms "
            f"(was {was[2]:.0f} ms)"
        )


def main() -> dict[str, float]:
    figures = measure()
    report(figures)
    return figures


if __name__ == "__main__":
    main()
