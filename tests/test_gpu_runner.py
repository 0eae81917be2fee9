"""The GPU preflight and sampling through the real runner (``python -m batchmagic.runner``), on a machine
without a GPU: a fake ``nvidia-smi`` (tests/support/gpu.py) first on ``PATH`` stands in for the driver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchmagic.protocol import PROGRESS_VERSION, Progress
from batchmagic.runner import EXIT_OK, EXIT_PREFLIGHT
from batchmagic.runner.gpu import GpuSample, parse_samples
from tests.support.gpu import fake_nvidia_smi, fake_torch
from tests.test_runner import Task, _prepare

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")

CELL = "open('cell-ran', 'w').write('yes')\nimport time\nfor i in range(4):\n    time.sleep(0.15)\nprint('trained')\n"


def _run(task: Task, path_first: Path | None, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = task.env()
    env["PATH"] = os.pathsep.join(([str(path_first)] if path_first else []) + ["/usr/bin", "/bin"])
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env["PYTHONPATH"]])
    return subprocess.run(task.command(), cwd=task.workdir, env=env, capture_output=True, text=True, timeout=60)


def _gpu_records(task: Task) -> list[list[list[float]]]:
    """The GPU samples in the task's log, read as the client reads progress records (versioned)."""
    found = []
    for record in task.records():
        if record["s"] == "p":
            progress = Progress.from_json(record["d"])
            assert progress.version == PROGRESS_VERSION
            if progress.phase == "gpu":
                found.append([list(g) for g in progress.gpus])
    return found


def test_no_gpu_visible_fails_the_preflight_in_one_line_and_the_cell_never_runs(tmp_path: Path) -> None:
    task = _prepare(tmp_path, CELL, {}, gpus=1, machine="Standard_NC24ads_A100_v4")
    done = _run(task, path_first=tmp_path / "empty-bin")  # no nvidia-smi anywhere on PATH
    assert done.returncode == EXIT_PREFLIGHT, done.stderr
    outcome = task.outcome()
    assert outcome.ok is False and outcome.phase == "preflight"
    assert outcome.error is not None and outcome.error.type == "GpuPreflight"
    message = outcome.error.message
    assert "\n" not in message
    assert "Standard_NC24ads_A100_v4 node should have 1 GPU" in message
    assert "no nvidia-smi in the container" in message
    assert "NvidiaTeslaDriverInstalled" in message and "The cell did not run" in message
    assert not (task.workdir / "cell-ran").exists()
    assert ("e", f"[batchmagic] {message}\n") in task.streams()  # the log says it too
    assert _gpu_records(task) == []


def test_fewer_gpus_than_the_size_has_fail_the_preflight(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", gpus=4, model="NVIDIA H100 80GB HBM3")
    task = _prepare(tmp_path, CELL, {}, gpus=8, machine="Standard_ND96isr_H100_v5")
    done = _run(task, bin_dir)
    assert done.returncode == EXIT_PREFLIGHT
    message = task.outcome().error.message  # type: ignore[union-attr]
    assert "should have 8 GPUs, but nvidia-smi lists 4" in message
    assert not (task.workdir / "cell-ran").exists()


def test_a_cpu_torch_fails_the_preflight_although_nvidia_smi_sees_the_gpu(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", gpus=1)
    torch_dir = fake_torch(tmp_path / "site", count=0, version="2.5.1+cpu")
    task = _prepare(tmp_path, CELL, {}, gpus=1)
    done = _run(task, bin_dir, pythonpath=torch_dir)
    assert done.returncode == EXIT_PREFLIGHT, done.stderr
    message = task.outcome().error.message  # type: ignore[union-attr]
    assert "nvidia-smi lists 1 GPU but torch 2.5.1+cpu (a build without CUDA) sees 0" in message
    assert "CUDA build" in message
    assert not (task.workdir / "cell-ran").exists()


def test_visible_gpus_pass_and_are_sampled_while_the_cell_runs(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", gpus=2)
    torch_dir = fake_torch(tmp_path / "site", count=2, version="2.5.1+cu124", cuda="12.4")
    task = _prepare(tmp_path, CELL, {}, gpus=2, gpu_interval=0.1, machine="Standard_NC48ads_A100_v4")
    done = _run(task, bin_dir, pythonpath=torch_dir)
    assert done.returncode == EXIT_OK, done.stderr
    assert (task.workdir / "cell-ran").exists()
    samples = _gpu_records(task)
    assert len(samples) >= 3  # one at the start, some while it ran, one at the end
    assert all(len(s) == 2 and [g[0] for g in s] == [0, 1] for s in samples)
    assert samples[0][0][3] == 81920
    assert samples[-1][0][2] > samples[0][0][2]  # memory grew between the first and the last
    assert len({s[0][1] for s in samples}) > 1  # utilisation changed


def test_a_cpu_run_never_calls_nvidia_smi(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", gpus=1)
    task = _prepare(tmp_path, CELL, {})
    done = _run(task, bin_dir)
    assert done.returncode == EXIT_OK, done.stderr
    assert not (bin_dir / "nvidia-smi.calls").exists()
    assert _gpu_records(task) == []


def test_parse_samples_takes_numbers_and_not_supported() -> None:
    text = "0, 37, 1024, 81920\n1, [N/A], 0, 15360\ngarbage\n"
    assert parse_samples(text) == [GpuSample(0, 37.0, 1024, 81920), GpuSample(1, None, 0, 15360)]


def test_only_the_first_rank_on_a_node_samples_its_gpus(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", gpus=2)
    torch_dir = fake_torch(tmp_path / "site", count=2, version="2.5.1+cu124", cuda="12.4")
    second = _prepare(tmp_path / "rank1", CELL, {}, gpus=2, gpu_interval=0.1, env={"LOCAL_RANK": "1"})
    env = second.env()
    env["LOCAL_RANK"] = "1"  # what a distributed run's backend sets for the node's second rank
    env["PATH"] = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    env["PYTHONPATH"] = os.pathsep.join([str(torch_dir), env["PYTHONPATH"]])
    done = subprocess.run(second.command(), cwd=second.workdir, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_OK, done.stderr  # its preflight passed: it sees the node's GPUs too
    assert _gpu_records(second) == []
