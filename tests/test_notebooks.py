"""Every notebook in notebooks/ executes end to end on a real kernel (nbclient)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, env_cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(env_cwd)}}).execute()
    return nb


def outputs_of(nb: nbformat.NotebookNode, marker: str) -> list[dict]:
    cell = next(c for c in nb.cells if c.cell_type == "code" and marker in c.source)
    return cell.outputs


def text_of(outputs: list[dict]) -> str:
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs)


def test_quickstart(home: Path, tmp_path: Path) -> None:
    nb = execute("quickstart.ipynb", tmp_path)
    run_out = outputs_of(nb, "model = train(df, alpha)")
    assert "trained 49950.0" in text_of(run_out)
    panel = [o for o in run_out if o["output_type"] == "display_data"]
    assert panel and "application/vnd.jupyter.widget-view+json" in panel[0]["data"]
    assert panel[0]["data"]["text/plain"].startswith("first-run [local, Standard_E32_v3] done")
    model_cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.strip() == "model")
    assert "49950.0" in text_of(model_cell.outputs)
    errors = [o for o in outputs_of(nb, "math.log(alpha - 1)") if o["output_type"] == "error"]
    assert errors and errors[0]["ename"] == "RemoteError"
    assert any("math domain error" in line for line in errors[0]["traceback"])
    assert text_of(outputs_of(nb, "'score' in dir()")) == "False"
    assert "first-run" in text_of(outputs_of(nb, "%azbatch_status"))
    assert (home / "runs").is_dir()  # the kernel used the test's BATCHMAGIC_HOME
