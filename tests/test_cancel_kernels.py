"""The panel's Cancel button ends a blocking run on a real kernel of each ipykernel major.

A click is a comm message from the front end to the button's widget; while the cell blocks in its wait,
only the wait loop's pump lets the kernel handle it. The test sends the very message JupyterLab sends on
a click (as tests/browser does with a real click), after the cell has printed a few lines.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.test_kernels import kernel_python

pytestmark = pytest.mark.slow  # each test starts a kernel

CELLS = [
    "%load_ext batchmagic",
    "%%azbatch --backend local --name stopme\n"
    "import time\n"
    "for i in range(120):\n"
    "    print('tick', i, flush=True)\n"
    "    time.sleep(0.5)\n"
    "left = 1",
    "print('left' in globals())",
]


class ClickingClient(NotebookClient):
    """Clicks the panel's Cancel button once the run has printed ``tick 2``; notes what followed when."""

    def __init__(self, nb: nbformat.NotebookNode, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.cancel_comm = ""
        self.clicked_at: float | None = None
        self.finished_at: float | None = None

    def process_message(self, msg: dict[str, Any], cell: nbformat.NotebookNode, cell_index: int) -> Any:
        kind, content = msg["msg_type"], msg["content"]
        state = content.get("data", {}).get("state", {}) if kind in ("comm_open", "comm_msg") else {}
        if kind == "comm_open" and state.get("_model_name") == "ButtonModel" and state.get("description") == "Cancel":
            self.cancel_comm = content["comm_id"]
        elif kind == "stream" and cell_index == 1 and "tick 2" in content["text"] and self.clicked_at is None:
            assert self.cancel_comm, "no Cancel button was displayed"
            click = {"comm_id": self.cancel_comm, "data": {"method": "custom", "content": {"event": "click"}}}
            assert self.kc is not None
            self.kc.shell_channel.send(self.kc.session.msg("comm_msg", click))
            self.clicked_at = time.monotonic()
        elif kind == "error" and cell_index == 1:
            self.finished_at = time.monotonic()
        return super().process_message(msg, cell, cell_index)


@pytest.mark.parametrize("major", [7, 6], ids=["ipykernel7", "ipykernel6"])
def test_cancel_button_ends_a_blocking_run(
    major: int, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = kernel_python(major)
    name = f"batchmagic-cancel-ipykernel{major}"
    spec_dir = tmp_path / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    searched = [str(tmp_path / "jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(searched))  # ours first for kernelspecs
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    client = ClickingClient(
        nb, kernel_name=name, timeout=120, allow_errors=True, resources={"metadata": {"path": str(work)}}
    )
    client.execute()

    assert client.clicked_at is not None
    # The cell ended seconds after the click, not after its minute of ticks. (The button's "Cancelling"
    # goes out with the click's own parent, which nbclient does not follow: tests/browser sees it.)
    assert client.finished_at is not None and client.finished_at - client.clicked_at < 10
    run_outputs = nb.cells[1].outputs
    error = next(o for o in run_outputs if o["output_type"] == "error")
    assert error["ename"] == "RunCancelled", error
    ticks = "".join(o.get("text", "") for o in run_outputs if o["output_type"] == "stream")
    assert "tick 2" in ticks and "tick 60" not in ticks
    record = [o for o in run_outputs if o["output_type"] == "display_data" and "text/html" in o["data"]]
    assert record and ">cancelled<" in record[-1]["data"]["text/html"]  # the record took the panel's place
    assert "".join(o.get("text", "") for o in nb.cells[2].outputs).strip() == "False"  # no names written

    # nbconvert's HTML of the executed notebook shows the record, with no kernel and no widget state.
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_notebook_node(nb)  # type: ignore[no-untyped-call]
    assert "azbatch-record" in page and "stopme" in page and "cancelled" in page


BACKGROUND = [
    "%load_ext batchmagic",
    "%%azbatch --backend local --no-wait --name bg\nimport time\nfor i in range(4):\n"
    "    print('bg', i, flush=True)\n    time.sleep(0.25)\nz = 1",
    "import time\nfor _ in range(600):\n    if _azbatch.done:\n        break\n    time.sleep(0.1)\n"
    "print(_azbatch.status)",
]


@pytest.mark.parametrize("major", [7, 6], ids=["ipykernel7", "ipykernel6"])
def test_background_run_record_reaches_the_saved_notebook(
    major: int, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --no-wait run ends while another cell runs: its record replaces its panel, by display id, from the
    monitor thread, and is in the notebook as saved, with the lines the run printed."""
    python = kernel_python(major)
    name = f"batchmagic-bg-ipykernel{major}"
    spec_dir = tmp_path / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    searched = [str(tmp_path / "jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(searched))
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in BACKGROUND])
    NotebookClient(nb, kernel_name=name, timeout=120, resources={"metadata": {"path": str(work)}}).execute()
    assert "done" in "".join(o.get("text", "") for o in nb.cells[2].outputs)  # it ended while cell 2 ran
    shown = [o for o in nb.cells[1].outputs if o["output_type"] == "display_data"]
    assert len(shown) == 1, (shown, nb.cells[2].outputs)  # the panel's display, updated in place
    data = shown[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" not in data, data  # no longer the widget
    assert ">done<" in data["text/html"] and "bg 3" in data["text/html"] and "bg 3" in data["text/plain"]


@pytest.mark.parametrize("major", [7, 6], ids=["ipykernel7", "ipykernel6"])
def test_cells_queued_behind_a_blocking_run_run_after_it_in_order(
    major: int, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a cell blocks, the pump handles widget messages only: cells sent meanwhile run after it, in
    the order they were sent, each with its own output."""
    from jupyter_client.manager import start_new_kernel

    name = _kernelspec(major, tmp_path, monkeypatch)
    manager, client = start_new_kernel(kernel_name=name, cwd=str(tmp_path))
    try:
        client.execute_interactive("%load_ext batchmagic", timeout=60)
        blocking = client.execute("%%azbatch --backend local --name held\nimport time\ntime.sleep(3)\nx = 1")
        time.sleep(1.0)  # the run is under way: these two wait in the kernel's queue
        second = client.execute("print('second saw x =', x)")
        third = client.execute("print('third')")
        replies: dict[str, dict[str, Any]] = {}
        while len(replies) < 3:
            reply = client.get_shell_msg(timeout=120)
            replies[reply["parent_header"]["msg_id"]] = reply
        assert list(replies) == [blocking, second, third]
        assert all(r["content"]["status"] == "ok" for r in replies.values()), replies
        texts: dict[str, str] = {}
        while True:
            try:
                msg = client.get_iopub_msg(timeout=2)
            except Exception:  # queue.Empty: every output has arrived
                break
            if msg["msg_type"] == "stream":
                parent = msg["parent_header"].get("msg_id", "")
                texts[parent] = texts.get(parent, "") + msg["content"]["text"]
        assert "second saw x = 1" in texts.get(second, ""), texts
        assert texts.get(third, "").strip() == "third", texts
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _kernelspec(major: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec for the ipykernel major's Python, found first through JUPYTER_PATH; its name."""
    name = f"batchmagic-queue-ipykernel{major}"
    spec_dir = tmp_path / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    argv = [str(kernel_python(major)), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    searched = [str(tmp_path / "jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(searched))
    return name
