"""Time from submit to the first remote line: cold (a run's own auto pool) vs warm (a named pool with an
idle node), on the Batch emulator and Azurite, and batchmagic's own share of the warm figure.

The emulator runs its clock ``SCALE`` times faster (``--time-scale``) with an allocation delay of
``ALLOCATION`` emulated seconds: a pool's node is allocated, boots and pulls the prefetched training
image in that time (Azure takes 3 to 6 minutes for the three). The cold run's poll intervals are divided
by ``SCALE`` as well, so it polls as often in emulated time as it would on Azure; its wait for the
service (from the job's creation to its task running) is scaled back up to emulated seconds, while what
happens on this machine (packaging, upload, the runner starting, the log reaching the client) is counted
as measured. The warm run waits for no service time at all, so it is measured as it is, with the
backend's own poll intervals.

Batchmagic's own share of the warm figure: the submit (packaging, upload, create job, add task, the job
update) and the log's way from the runner's ``print`` to the client (the runner's flush and the
client's poll); the rest is the task starting on the node (process and Python start, bundle download).
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchmagic import pools
from batchmagic.api import Session
from batchmagic.run.state import LogRecord, Phase, RunState
from tests.support.azurite import start_azurite  # run from the repository root: `python -m bench first_line`
from tests.support.emulator import start_emulator
from tests.support.settings import azure_environ

SCALE = 20.0
ALLOCATION = 240.0  # emulated seconds: allocation, boot and image pull of a node
CELL = "import time\nprint(f'{time.time():.6f} first line', flush=True)\ntime.sleep(3)\nx = 1"


@dataclass
class Timed:
    submit_s: float  # Session.submit: packaging, upload, job, task
    service_s: float  # from submit's return to the client seeing the task running
    rest_s: float  # from there to the first line in the client
    printed_to_shown_s: float  # the first line: from the runner's print to the client

    def first_line(self, scale: float) -> float:
        return self.submit_s + self.service_s * scale + self.rest_s


def _timed(session: Session, backend: Any, **options: Any) -> Timed:
    first: list[tuple[float, float]] = []  # (arrived, printed)

    def on_update(state: RunState, records: list[LogRecord]) -> None:
        now = time.time()
        for record in records:
            if not first and "first line" in record.text:
                first.append((now, float(record.text.split()[0])))

    start = time.time()
    run = session.submit(CELL, {}, backend=backend, on_update=on_update, **options)
    launched = time.time()
    run.wait()
    arrived, printed = first[0]
    # The client sees the task running on a poll; the log may bring its first line on that same tick.
    running = next((span.start for span in run.state().phases if span.phase is Phase.RUNNING), arrived)
    return Timed(launched - start, max(0.0, running - launched), arrived - max(running, launched), arrived - printed)


def measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-first-line-") as tmp_name:
        tmp = Path(tmp_name)
        with (
            ExitStack() as stack,
            start_azurite(tmp / "azurite") as azurite,
            start_emulator(tmp / "batch", allocation_delay=ALLOCATION, time_scale=SCALE) as emu,
        ):
            stack.enter_context(azure_environ(emu, azurite, container="bench-first-line", home=tmp / "home"))
            session = Session()
            backend: Any = session.backend("azure")
            backend.check_access()  # once per session, before any run: not part of a submission
            own = type(backend).poll_intervals

            backend.poll_intervals = (own[0] / SCALE, own[1] / SCALE)
            cold = _timed(session, backend, name="cold")

            pools.create_pool("warm", vm_size="Standard_D2s_v3", max_nodes=1, idle="20m", session=session)
            pools.resize_pool("warm", 1, session=session)
            client = emu.client()
            deadline = time.monotonic() + 120
            while not any(str(getattr(n.state, "value", "")) == "idle" for n in client.list_nodes("warm")):
                if time.monotonic() > deadline:
                    raise RuntimeError("the warm pool's node never became idle")
                time.sleep(0.2)
            backend.poll_intervals = own
            _timed(session, backend, pool="warm", name="warm-0")  # the node runs a first task: now it is warm
            warm = _timed(session, backend, pool="warm", name="warm")
            pools.delete_pool("warm", session=session)
            session.teardown()
    return {
        "cold_first_line_s": cold.first_line(SCALE),
        "warm_first_line_s": warm.first_line(1.0),
        "warm_own_share_s": warm.submit_s + warm.printed_to_shown_s,
        "warm_submit_s": warm.submit_s,
        "warm_printed_to_shown_s": warm.printed_to_shown_s,
        "warm_node_start_s": warm.first_line(1.0) - warm.submit_s - warm.printed_to_shown_s,
        "first_line_allocation_delay_s": ALLOCATION,
        "first_line_time_scale": SCALE,
    }


def report(figures: dict[str, float]) -> None:
    print(
        f"emulator: {figures['first_line_allocation_delay_s']:.0f} s (emulated) to allocate, boot and pull a node, "
        f"clock x{figures['first_line_time_scale']:g}"
    )
    print(f"cold (auto pool)              {figures['cold_first_line_s']:7.1f} s to the first remote line")
    print(f"warm (pool with an idle node) {figures['warm_first_line_s']:7.1f} s")
    print(
        f"  batchmagic's own share      {figures['warm_own_share_s']:7.2f} s: submit (packaging, upload, job, "
        f"task) {figures['warm_submit_s']:.2f} s + the line's way from print to client "
        f"{figures['warm_printed_to_shown_s']:.2f} s"
    )
    print(f"  the task starting on the node {figures['warm_node_start_s']:5.2f} s")


def main() -> dict[str, float]:
    figures = measure()
    report(figures)
    return figures


if __name__ == "__main__":
    main()
