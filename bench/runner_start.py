"""What a fresh runner and a distributed node's supervisor spend of their own before a cell runs, in CPU
time (which other work on the machine inflates far less than wall time), side by side in one run with the
interpreter's own start, the floor no Python process goes below. Each figure is the median of ``REPEAT``
fresh processes, with compiled bytecode (as a pool's pip-installed batchmagic has it):

- ``python -P -c pass``: the interpreter and its site (this machine's venv adds its editable install's
  finder, which a pool's does not have);
- a fresh runner, ``python -P -m batchmagic.runner --spec``, of a small cell (one value in, one name out)
  from a store on this machine: start to exit, the cell's result written;
- a node supervisor's imports: ``batchmagic.runner.ranks`` and the runner it forks its ranks from.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from batchmagic.package.capture import capture
from batchmagic.protocol import TaskSpec

REPEAT = 15
CELL = "y = x * 2"


def _cpu_ms(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """CPU milliseconds (user and system) of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000


def _spec(tmp: Path) -> Path:
    """A small cell's bundle and spec in a store under ``tmp``; the spec's path."""
    store = tmp / "store"
    store.mkdir()
    capture(CELL, {"x": 21}, store / "bundle")
    spec = TaskSpec(
        run_id="bench",
        task_id="t0",
        bundle=(store / "bundle").as_uri(),
        log=(store / "output.log").as_uri(),
        result=(store / "result").as_uri(),
    )
    path = store / "spec.json"
    path.write_bytes(spec.to_json())
    return path


def measure() -> dict[str, float]:
    root = str(Path(__file__).resolve().parents[1])  # this checkout's batchmagic
    with tempfile.TemporaryDirectory(prefix="bench-runner-start-") as tmp_name:
        tmp = Path(tmp_name)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env |= {"PYTHONPATH": root, "PYTHONPYCACHEPREFIX": str(tmp / "pycache")}
        spec = _spec(tmp)
        commands = {
            "python": [sys.executable, "-P", "-c", "pass"],
            "runner": [sys.executable, "-P", "-m", "batchmagic.runner", "--spec", str(spec)],
            "supervisor": [sys.executable, "-P", "-c", "import batchmagic.runner.ranks, batchmagic.runner.main"],
        }
        for command in commands.values():
            _cpu_ms(command, tmp, env)  # compiles the bytecode once
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(REPEAT):  # interleaved, so a busy moment of the machine hits every side
            for name, command in commands.items():
                cpu[name].append(_cpu_ms(command, tmp, env))
    python, runner, supervisor = (statistics.median(cpu[name]) for name in commands)
    return {
        "runner_start_python_cpu_ms": python,
        "runner_start_fresh_runner_cpu_ms": runner,
        "runner_start_supervisor_imports_cpu_ms": supervisor,
        "runner_start_runner_over_python_cpu_ms": runner - python,
        "runner_start_supervisor_over_python_cpu_ms": supervisor - python,
    }


def report(figures: dict[str, float]) -> None:
    print(
        f"CPU of a fresh process: the interpreter alone {figures['runner_start_python_cpu_ms']:.0f} ms; a fresh "
        f"runner of a small cell {figures['runner_start_fresh_runner_cpu_ms']:.0f} ms "
        f"({figures['runner_start_runner_over_python_cpu_ms']:.0f} ms its own); a node supervisor's imports "
        f"{figures['runner_start_supervisor_imports_cpu_ms']:.0f} ms "
        f"({figures['runner_start_supervisor_over_python_cpu_ms']:.0f} ms their own)"
    )


def main() -> dict[str, float]:
    figures = measure()
    report(figures)
    return figures


if __name__ == "__main__":
    main()
