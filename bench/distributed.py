"""Distributed runs, as ratios taken side by side in one run.

- **Start**: from submit until every rank runs the cell (the latest rank's first line, timestamped by the
  rank itself), a 4-rank run vs a 1-rank run, both ``--distributed`` on a warm named ``--inter-node`` pool
  of the Batch emulator (4 idle nodes, process executor) and Azurite. Goal: at most 1.3x. The emulated
  nodes share this machine's 2 cores, so 4 ranks do 4 times the start's CPU on 2 cores where a pool's
  nodes each have their own: a 2-rank run (one core per rank here) is measured beside them, and so is each
  node's own start, from its coordination command's start (``NodeState.launched``) to its ranks' first
  line (the slowest node of the run). The nodes' Python keeps compiled bytecode (a pool's batchmagic is
  installed by pip, which compiles it), whatever ``PYTHONDONTWRITEBYTECODE`` this machine sets.
- **All-reduce bus bandwidth** (gloo, CPU) measured inside a batchmagic run (``--backend local --nodes 2
  --distributed``) vs the same script under ``torchrun --standalone --nproc-per-node 2`` on the same
  machine. Bus bandwidth is the NCCL-tests convention: ``size * 2 * (n - 1) / n / time``. Goal: at least 0.9x.

Both are small (2 cores): one timing per side is the median of a few runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from batchmagic import pools
from batchmagic.api import Session
from batchmagic.protocol import Layout, NodeState
from tests.support.azurite import start_azurite  # run from the repository root: `python -m bench distributed`
from tests.support.emulator import start_emulator
from tests.support.settings import azure_environ

NODES = 4
RANKS = (1, 2, NODES)
REPEATS = 7
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


class MachineCpu:
    """The CPU seconds this whole machine has spent (every core, every process: the emulated nodes, the
    emulator, Azurite, this client), sampled from ``/proc/stat`` every 10 ms in a thread, so that the CPU
    spent between two moments known only afterwards (a rank's first line) can be read back."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="machine-cpu", daemon=True)

    def __enter__(self) -> MachineCpu:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def busy() -> float:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.samples.append((time.time(), self.busy()))

    def between(self, start: float, end: float) -> float:
        """CPU seconds spent from ``start`` to ``end`` (``time.time()``), to the nearest sample."""

        def at(moment: float) -> float:
            return min(self.samples, key=lambda sample: abs(sample[0] - moment))[1]

        return at(end) - at(start)


def _start_seconds(session: Session, backend: Any, nodes: int, cpu: MachineCpu | None = None) -> tuple[float, ...]:
    """Submit to the moment the latest rank printed its first line; the slowest node's own start (its
    coordination command's start to its ranks' latest first line); and the machine's CPU seconds between
    submit and that first line (0 without ``cpu``)."""
    started = time.time()
    run = session.submit(START_CELL, {}, backend=backend, pool="dist", nodes=nodes, distributed=True)
    run.wait()
    printed = {tid: float(run.logs(tid).split()[0]) for tid in run.task_ids}
    paths = []
    for node in range(nodes):
        state = NodeState.from_json(run.store.get_bytes(Layout.node_state(run.id, node)))
        paths.append(max(printed[f"rank-{r.rank}"] for r in state.ranks) - state.launched)
    latest = max(printed.values())
    return latest - started, max(paths), cpu.between(started, latest) if cpu is not None else 0.0


@contextmanager
def _compiled_nodes(cache: Path) -> Iterator[None]:
    """The emulated nodes keep compiled bytecode in ``cache``, as a pool's pip-installed batchmagic has it:
    without, each node's interpreter compiled batchmagic's modules from source at every start (about 55 ms
    of CPU a node here, where the environment sets PYTHONDONTWRITEBYTECODE)."""
    saved = {k: os.environ.get(k) for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _warm_pool(session: Session, emu: Any) -> Any:
    """The named pool ``dist`` with NODES idle nodes, each of which has run a rank once; its backend."""
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
    return backend


def measure_start() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp_name:
        tmp = Path(tmp_name)
        with (
            ExitStack() as stack,
            _compiled_nodes(tmp / "pycache"),
            start_azurite(tmp / "azurite") as azurite,
            start_emulator(tmp / "batch", allocation_delay=0.2) as emu,
        ):
            stack.enter_context(azure_environ(emu, azurite, container="bench-distributed", home=tmp / "home"))
            session = Session()
            backend = _warm_pool(session, emu)
            walls: dict[int, list[float]] = {n: [] for n in RANKS}
            nodes: dict[int, list[float]] = {n: [] for n in RANKS}
            cpus: dict[int, list[float]] = {n: [] for n in RANKS}
            with MachineCpu() as cpu:
                for _ in range(REPEATS):  # interleaved, so a slow moment of the machine hits every side
                    for n in RANKS:
                        figures = _start_seconds(session, backend, n, cpu)
                        for into, figure in zip((walls, nodes, cpus), figures, strict=True):
                            into[n].append(figure)
            pools.delete_pool("dist", session=session)
            session.teardown()
    wall, node, used = ({n: statistics.median(v[n]) for n in RANKS} for v in (walls, nodes, cpus))
    cores = os.cpu_count() or 1
    return {
        "distributed_start_cpu_1_rank_s": used[1],
        "distributed_start_cpu_4_ranks_s": used[NODES],
        "distributed_start_cpu_floor_ratio": max(wall[1], used[NODES] / cores) / wall[1],
        "distributed_start_1_rank_s": wall[1],
        "distributed_start_2_ranks_s": wall[2],
        "distributed_start_4_ranks_s": wall[NODES],
        "distributed_start_ratio": wall[NODES] / wall[1],
        "distributed_start_ratio_2_ranks": wall[2] / wall[1],
        "distributed_node_start_1_rank_s": node[1],
        "distributed_node_start_4_ranks_s": node[NODES],
        "distributed_node_start_ratio": node[NODES] / node[1],
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
        f"start, warm inter-node pool: 1 rank {figures['distributed_start_1_rank_s']:.2f} s, 2 ranks "
        f"{figures['distributed_start_2_ranks_s']:.2f} s, {NODES} ranks "
        f"{figures['distributed_start_4_ranks_s']:.2f} s: ratio {figures['distributed_start_ratio']:.2f} "
        "(goal <= 1.3), 2 vs 1 "
        f"{figures['distributed_start_ratio_2_ranks']:.2f}; the slowest node's own start: 1 rank "
        f"{figures['distributed_node_start_1_rank_s']:.2f} s, {NODES} ranks "
        f"{figures['distributed_node_start_4_ranks_s']:.2f} s (ratio {figures['distributed_node_start_ratio']:.2f})"
    )
    print(
        f"the machine's CPU in the start: 1 rank {figures['distributed_start_cpu_1_rank_s']:.2f} s, {NODES} ranks "
        f"{figures['distributed_start_cpu_4_ranks_s']:.2f} s: on {os.cpu_count()} cores the {NODES}-rank start "
        f"takes at least {figures['distributed_start_cpu_floor_ratio']:.2f} times the 1-rank start's wall time"
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
