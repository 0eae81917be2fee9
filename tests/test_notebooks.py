"""Every notebook in notebooks/ executes end to end on a real kernel (nbclient)."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.support.azurite import RunningAzurite
from tests.support.emulator import RunningEmulator, emulator_fixture, wait_for
from tests.support.settings import use_azure

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, env_cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(env_cwd)}}).execute()
    return nb


def outputs_of(nb: nbformat.NotebookNode, marker: str) -> list[dict]:
    cell = next(c for c in nb.cells if c.cell_type == "code" and marker in c.source)
    return cell.outputs


def plots_cell_count(nb: nbformat.NotebookNode) -> int:
    return next(c.execution_count for c in nb.cells if c.cell_type == "code" and "--name plots" in c.source)


def text_of(outputs: list[dict]) -> str:
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs)


def test_quickstart(home: Path, tmp_path: Path) -> None:
    nb = execute("quickstart.ipynb", tmp_path)
    run_out = outputs_of(nb, "model = train(df, alpha)")
    assert "trained 49950.0" in text_of(run_out)
    panel = [o for o in run_out if o["output_type"] == "display_data"]
    # The panel's display holds the run's record once it has ended: HTML and text, no widget.
    assert panel and "azbatch-record" in panel[0]["data"]["text/html"]
    assert panel[0]["data"]["text/plain"].startswith("first-run [local, Standard_E32_v3] done")
    model_cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.strip() == "model")
    assert "49950.0" in text_of(model_cell.outputs)
    errors = [o for o in outputs_of(nb, "math.log(alpha - 1)") if o["output_type"] == "error"]
    assert errors and errors[0]["ename"] == "RemoteError"
    assert any("math domain error" in line for line in errors[0]["traceback"])
    assert text_of(outputs_of(nb, "'score' in dir()")) == "False"
    # What the remote cell displayed: a matplotlib figure, a DataFrame (display()), then the last expression's
    # DataFrame as the cell's Out, formatted by this kernel, as a plain run shows it
    plots = outputs_of(nb, "--name plots")
    shown = [o for o in plots if o["output_type"] == "display_data"][1:]  # after the panel
    assert [sorted(o["data"]) for o in shown] == [["image/png", "text/plain"], ["text/html", "text/plain"]]
    assert base64.b64decode(shown[0]["data"]["image/png"]).startswith(b"\x89PNG")
    assert "<table" in shown[1]["data"]["text/html"] and "mean" in shown[1]["data"]["text/plain"]
    (out,) = [o for o in plots if o["output_type"] == "execute_result"]
    assert out["execution_count"] == plots_cell_count(nb) and "<table" in out["data"]["text/html"]
    (record,) = (home / "runs").glob("plots-*/outputs.ipynb")
    kinds = [o.output_type for o in nbformat.read(record, as_version=4).cells[0].outputs]
    assert kinds == ["display_data", "display_data", "execute_result"]
    assert "first-run" in text_of(outputs_of(nb, "%azbatch_status"))
    assert (home / "runs").is_dir()  # the kernel used the test's BATCHMAGIC_HOME


class TimedClient(NotebookClient):
    """Notes when each stream output of the kernel arrived, to tell live logs from logs at the end."""

    def __init__(self, nb: nbformat.NotebookNode, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.arrivals: list[tuple[float, int, str]] = []  # (monotonic time, cell index, text)

    def process_message(self, msg: dict[str, Any], cell: nbformat.NotebookNode, cell_index: int) -> Any:
        if msg["msg_type"] == "stream":
            self.arrivals.append((time.monotonic(), cell_index, msg["content"]["text"]))
        return super().process_message(msg, cell, cell_index)


emulator = emulator_fixture(allocation_delay=0.3)


def test_azure_walkthrough(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator, azurite: RunningAzurite
) -> None:
    # The kernel inherits this process's environment: the settings a user exports before starting Jupyter.
    use_azure(monkeypatch, emulator, azurite, prefix="walkthrough")  # a given image: nothing to build
    nb = nbformat.read(NOTEBOOKS / "azure.ipynb", as_version=4)
    client = TimedClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    settings = text_of(outputs_of(nb, "for name in ["))
    for name in ("AZURE_BATCH_ENDPOINT", "AZURE_BATCH_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING"):
        assert re.search(rf"^{name} +set$", settings, re.MULTILINE)
    assert emulator.key not in settings and azurite.connection_string not in settings

    run_index = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "%%azbatch" in c.source)
    run_out = nb.cells[run_index].outputs
    printed = text_of([o for o in run_out if o["output_type"] == "stream" and o["name"] == "stdout"])
    epochs = re.findall(r"^epoch (\d+)/10: loss \d+\.\d+$", printed, re.MULTILINE)
    assert epochs == [str(i) for i in range(1, 11)]
    assert "trained: final loss 0.01" in printed
    # Live: the lines reached the notebook while the cell ran. They are 1.5 s apart, 13.5 s from first to last;
    # a quiet run is polled every 10 s at most, and every second again once output flows.
    arrived = {}
    for when, index, text in client.arrivals:
        for epoch in re.findall(r"^epoch (\d+)/10", text, re.MULTILINE) if index == run_index else []:
            arrived.setdefault(epoch, when)
    assert arrived["10"] - arrived["1"] >= 1.0, arrived
    panel = [o for o in run_out if o["output_type"] == "display_data"]
    assert panel and "azbatch-record" in panel[0]["data"]["text/html"]  # the record took the panel's place
    summary = panel[0]["data"]["text/plain"].splitlines()[0]
    assert re.match(r"walkthrough \[azure, Standard_E32_v3\] done [0-9.hms]+", summary), summary

    assert text_of(outputs_of(nb, "weights.round(2)")).split() == [
        "a",
        "3.0",
        "b",
        "-2.0",
        "c",
        "0.5",
        "bias",
        "1.0",
        "dtype:",
        "float64",
    ]
    assert text_of(outputs_of(nb, "round(loss, 4) for loss in history")).startswith("[")
    assert text_of(outputs_of(nb, "_azbatch.status")) == "'done'"
    assert "epoch 10/10" in text_of(outputs_of(nb, "_azbatch.logs()"))
    status = text_of(outputs_of(nb, "%azbatch_status"))
    assert re.search(r"^walkthrough +azure +Standard_E32_v3 +done ", status, re.MULTILINE), status
    teardown = text_of(outputs_of(nb, "%azbatch_teardown"))
    assert teardown.startswith(("nothing to tear down", "removed Azure Batch job walkthrough-")), teardown

    batch = emulator.client()
    wait_for(lambda: not list(batch.list_pools()), timeout=20)
    assert [j.id for j in batch.list_jobs() if str(getattr(j.state, "value", j.state)) == "active"] == []
    (job,) = [r["body"] for r in emulator.requests() if r["method"] == "POST" and r["path"] == "/jobs"]
    assert job["poolInfo"]["autoPoolSpecification"]["pool"]["vmSize"] == "Standard_E32_v3"


def test_sweep_walkthrough(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator, azurite: RunningAzurite
) -> None:
    use_azure(monkeypatch, emulator, azurite, prefix="sweep")
    nb = execute("sweep.ipynb", tmp_path)

    grid_out = outputs_of(nb, "--name grid")
    panel = [o for o in grid_out if o["output_type"] == "display_data"]
    summary = panel[0]["data"]["text/plain"].splitlines()[0]
    assert re.match(r"grid \[azure, Standard_D2s_v3\] done \S+ 12/12 tasks, 3 failed", summary), summary
    assert "done, 3 of 12 failed" in panel[0]["data"]["text/html"]  # amber, with the count
    table = text_of(outputs_of(nb, "grid.results[["))
    assert table.count("succeeded") == 9 and table.count("failed") == 3
    errors = text_of(outputs_of(nb, "grid.errors.items()")).splitlines()
    assert errors == [f"task-{i:05d} ValueError: diverged at lr=1.5" for i in (9, 10, 11)]
    assert "2/2 tasks" in text_of(outputs_of(nb, "--sweep-from trials"))
    assert text_of(outputs_of(nb, "long_run.wait(")).strip() == "done"
    assert "fetched w_final from background" in text_of(outputs_of(nb, "%azbatch_fetch long_run"))
    assert text_of(outputs_of(nb, "round(w_final, 2)")).endswith("2.99)")
    batch = emulator.client()
    wait_for(lambda: not list(batch.list_pools()), timeout=20)
    assert [j.id for j in batch.list_jobs() if str(getattr(j.state, "value", j.state)) == "active"] == []
