"""The GPU panel and record drawn from recorded samples: tests/data/gpu_progress.log holds the progress records
the real runner wrote for a 2-GPU node (a fake nvidia-smi whose utilisation swings between idle and busy, as a
starving data loader's does). They go through the client's log decoding, the tracker, the panel (built without
a kernel) and the static record, as a run's would."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from batchmagic.notebook.record import render
from batchmagic.notebook.widget import StatusPanel, TextPanel, gpu_lines, summary
from batchmagic.protocol import Progress, decode_log_records
from batchmagic.run.state import GPU_WINDOW, GpuTracker, Phase, PhaseSpan, RunState, sparkline

RECORDED = Path(__file__).parent / "data" / "gpu_progress.log"


def tracker_from_log() -> GpuTracker:
    records, _ = decode_log_records(RECORDED.read_bytes(), "task-0")
    tracker = GpuTracker()
    for record in records:
        progress = Progress.from_json(record.text)  # recorded before the version existed: read as version 1
        assert record.stream == "progress" and progress.phase == "gpu" and not progress.transfer
        assert progress.version == 1
        tracker.add(record.task_id, [list(g) for g in progress.gpus])
    return tracker


def gpu_state(phase: Phase = Phase.RUNNING) -> RunState:
    return RunState(
        run_id="r-1", name="train", backend="azure", vm_size="Standard_NC48ads_A100_v4", phase=phase,
        phases=(PhaseSpan(Phase.RUNNING, 100.0, None if not phase.final else 110.0),) + (
            (PhaseSpan(phase, 110.0, 110.0),) if phase.final else ()
        ),
        started=100.0, now=105.0, gpus=tracker_from_log().views(), gpu="2x A100 80 GB",
    )  # fmt: skip


def test_the_tracker_keeps_recent_samples_the_peak_and_the_mean() -> None:
    views = tracker_from_log().views()
    assert [g.index for g in views] == [0, 1] and all(g.task_id == "task-0" for g in views)
    first = views[0]
    assert first.samples == 8 and first.total_mib == 81920
    assert first.peak_mib == max(first.memory_mib) and first.memory_mib[-1] > first.memory_mib[0]
    assert first.mean_utilization is not None and 40 < first.mean_utilization < 60  # busy half the time: starved
    many = GpuTracker()
    for i in range(GPU_WINDOW + 10):
        many.add("t", [[0, float(i % 100), i, 100]])
    (only,) = many.views()
    assert len(only.utilization) == GPU_WINDOW and only.samples == GPU_WINDOW + 10 and only.peak_mib == GPU_WINDOW + 9


def test_sparkline() -> None:
    assert sparkline((0.0, 50.0, 100.0)) == "▁▅█"
    assert sparkline((None, 100.0)) == " █"


def test_the_panel_draws_a_sparkline_per_gpu() -> None:
    panel = StatusPanel()
    state = gpu_state()
    panel.update(state)
    shown = panel.gpus.value
    assert "azbatch-gpus" in shown and "monospace" in shown
    assert shown.count("GPU ") == 2 and "GPU 0 " in shown and "GPU 1 " in shown
    line0 = gpu_lines(state)[0]
    spark = line0.split(" ")[2]
    assert len(spark) == 8 and set(spark) <= set("▁▂▃▄▅▆▇█") and "▁" in spark and "█" in spark
    assert "of 80.0 GB, peak" in line0 and "mean" in line0
    assert "2x A100 80 GB" in panel.title.value
    assert "2x A100 80 GB" in summary(state)


def test_without_samples_the_panel_shows_no_gpu_line() -> None:
    panel = StatusPanel()
    panel.update(dataclasses.replace(gpu_state(), gpus=(), gpu=""))
    assert panel.gpus.value == ""


def test_the_record_keeps_peak_memory_and_mean_utilisation() -> None:
    record = render(gpu_state(Phase.DONE))
    state = gpu_state(Phase.DONE)
    for gpu in state.gpus:
        assert gpu.summary() in record.text and gpu.summary() in record.html
    assert "peak" in record.text and "mean utilisation" in record.text and "(8 samples)" in record.text


def test_the_text_panel_says_which_gpus() -> None:
    import io

    stream = io.StringIO()
    TextPanel(stream).update(gpu_state())
    assert "[azure, Standard_NC48ads_A100_v4, 2x A100 80 GB]" in stream.getvalue()
