"""Distributed runs, as ratios taken side by side in one run.

- **Start**: from submit until every rank runs the cell (the latest rank's first line, timestamped by the
  rank itself), a 4-rank run vs a 1-rank run, both ``--distributed`` on a warm named ``--inter-node`` pool
  of the Batch emulator (4 idle nodes, process executor) and Azurite. Goal: at most 1.3x.
- **All-reduce bus bandwidth** (gloo, CPU) measured inside a batchmagic run (``--backend local --nodes 2
  --distributed``) vs the same script under ``torchrun --standalone --nproc-per-node 2`` on the same
  machine. Bus bandwidth is the NCCL-tests convention: ``size * 2 * (n - 1) / n / time``. Goal: at least 0.9x.

Both are small (2 cores): one timing per side is the median of a few runs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from batchmagic import pools
from batchmagic.api import Session
from tests.support.azurite import start_azurite  # run from the repository root: `python -m bench distributed`
from tests.support.emulator import start_emulator
from tests.support.settings import azure_environ

NODES = 4
REPEATS = 5
START_CELL = "import time\nprint(f'{time.time():.6f} up', flush=True)"

ALLREDUCE = """
import os, time
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
n = dist.get_world_size()
tensor = torch.ones(MEGABYTES * 262144)  # float32: 4 bytes each
for _ in range(3):
    dist.all_reduce(tensor)
dist.barrier()
start = time.perf_counter()
for _ in range(ITERATIONS):
    dist.all_reduce(tensor)
elapsed = (time.perf_counter() - start) / ITERATIONS
busbw = tensor.numel() * 4 * 2 * (n - 1) / n / elapsed / 1e9
if dist.get_rank() == 0:
    print(f"busbw {busbw:.4f} GB/s")
dist.destroy_process_group()
"""
MEGABYTES, ITERATIONS = 16, 20


def _start_seconds(session: Session, backend: Any, nodes: int) -> float:
    """Submit to the moment the latest rank printed its first line."""
    started = time.time()
    run = session.submit(START_CELL, {}, backend=backend, pool="dist", nodes=nodes, distributed=True)
    run.wait()
    printed = [float(run.logs(tid).split()[0]) for tid in run.task_ids]
    return max(printed) - started


def measure_start() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp_name:
        tmp = Path(tmp_name)
        with (
            ExitStack() as stack,
            start_azurite(tmp / "azurite") as azurite,
            start_emulator(tmp / "batch", allocation_delay=0.2) as emu,
        ):
            stack.enter_context(azure_environ(emu, azurite, container="bench-distributed", home=tmp / "home"))
            session = Session()
            backend: Any = session.backend("azure")
            backend.check_access()
            pools.create_pool("dist", vm_size="Standard_D2s_v3", max_nodes=NODES, inter_node=True, session=session)
            pools.resize_pool("dist", NODES, session=session)
            client = emu.client()
            deadline = time.monotonic() + 120
            while sum(str(getattr(n.state, "value", "")) == "idle" for n in client.list_nodes("dist")) < NODES:
                if time.monotonic() > deadline:
                    raise RuntimeError("the pool's nodes never became idle")
                time.sleep(0.2)
            _start_seconds(session, backend, NODES)  # every node has run a rank once: warm
            one, four = [], []
            for _ in range(REPEATS):  # interleaved, so a slow moment of the machine hits both sides
                one.append(_start_seconds(session, backend, 1))
                four.append(_start_seconds(session, backend, NODES))
            pools.delete_pool("dist", session=session)
            session.teardown()
    return {
        "distributed_start_1_rank_s": statistics.median(one),
        "distributed_start_4_ranks_s": statistics.median(four),
        "distributed_start_ratio": statistics.median(four) / statistics.median(one),
    }


def _busbw(text: str) -> float:
    return float(next(line for line in text.splitlines() if "busbw" in line).split()[-2])


def measure_allreduce() -> dict[str, float]:
    script = ALLREDUCE.replace("MEGABYTES", str(MEGABYTES)).replace("ITERATIONS", str(ITERATIONS))
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-allreduce-") as tmp_name:
        path = Path(tmp_name) / "allreduce.py"
        path.write_text(script, encoding="utf-8")
        session = Session(Path(tmp_name) / "home")
        for _ in range(REPEATS):
            run = session.submit(script, {}, backend="local", nodes=2, distributed=True)
            run.wait()
            ours.append(_busbw(run.logs("rank-0")))
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
            done = subprocess.run([*torchrun, str(path)], capture_output=True, text=True, check=True, timeout=300)
            theirs.append(_busbw(done.stdout))
    return {
        "allreduce_busbw_batchmagic_gb_s": statistics.median(ours),
        "allreduce_busbw_torchrun_gb_s": statistics.median(theirs),
        "allreduce_busbw_ratio": statistics.median(ours) / statistics.median(theirs),
        "allreduce_megabytes": MEGABYTES,
    }


def report(figures: dict[str, float]) -> None:
    print(
        f"start, warm inter-node pool: 1 rank {figures['distributed_start_1_rank_s']:.2f} s, {NODES} ranks "
        f"{figures['distributed_start_4_ranks_s']:.2f} s: ratio {figures['distributed_start_ratio']:.2f} (goal <= 1.3)"
    )
    print(
        f"all-reduce bus bandwidth ({figures['allreduce_megabytes']:.0f} MB, gloo, 2 ranks): batchmagic "
        f"{figures['allreduce_busbw_batchmagic_gb_s']:.2f} GB/s, torchrun "
        f"{figures['allreduce_busbw_torchrun_gb_s']:.2f} GB/s: ratio {figures['allreduce_busbw_ratio']:.2f} "
        "(goal >= 0.9)"
    )


def main() -> dict[str, float]:
    figures = {**measure_start(), **measure_allreduce()}
    report(figures)
    return figures


if __name__ == "__main__":
    main()
