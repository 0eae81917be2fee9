"""A blocking %%azbatch run streams its lines and updates its panel on a real kernel of each ipykernel major.

ipykernel 7 is the test environment's own; ipykernel 6 lives in a second virtualenv that `make test` builds
(`make ipykernel6`). Each kernel is started from a kernelspec written to a temporary JUPYTER_PATH, so that
nbclient starts (and shuts down) it the way it starts any named kernel.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.test_notebooks import TimedClient

ROOT = Path(__file__).resolve().parent.parent
IPYKERNEL6_PYTHON = ROOT / ".venv-ipykernel6" / "bin" / "python"

LINES = 6  # printed by the remote cell, 0.5 s apart: 2.5 s from first to last
CELLS = [
    "import ipykernel, sys\nprint(ipykernel.__version__)\nprint(sys.executable)",
    "%load_ext batchmagic",
    "%%azbatch --backend local --vm Standard_E32_v3 --name kernel-check\n"
    "import time\n"
    f"for i in range({LINES}):\n"
    "    print('line', i, flush=True)\n"
    "    time.sleep(0.5)\n"
    "total = i * 10",
    "print(i, total)",
]


class KernelClient(TimedClient):
    """Also notes when each display message (the panel's display_data, its update_display_data) and each
    widget value update (the panel's title, phases, ...) arrived."""

    def __init__(self, nb: nbformat.NotebookNode, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.displays: list[tuple[float, int, str, dict[str, Any]]] = []  # (time, cell index, msg_type, content)
        self.values: list[tuple[float, int, str]] = []  # (time, cell index, new widget value)

    def process_message(self, msg: dict[str, Any], cell: nbformat.NotebookNode, cell_index: int) -> Any:
        now, content = time.monotonic(), msg["content"]
        if msg["msg_type"] in ("display_data", "update_display_data"):
            self.displays.append((now, cell_index, msg["msg_type"], content))
        elif msg["msg_type"] == "comm_msg" and content.get("data", {}).get("method") == "update":
            value = content["data"].get("state", {}).get("value")
            if isinstance(value, str):
                self.values.append((now, cell_index, value))
        return super().process_message(msg, cell, cell_index)


def kernel_python(major: int) -> Path:
    if major == 7:
        return Path(sys.executable)
    if not IPYKERNEL6_PYTHON.exists():
        reason = f"{IPYKERNEL6_PYTHON} is missing: run `make test` (or `make ipykernel6`), which builds it"
        if os.geteuid() == 0:  # CI runs as root, after `make test` built it: missing there is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    return IPYKERNEL6_PYTHON


def text(outputs: list[dict]) -> str:
    return "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")


@pytest.mark.parametrize("major", [7, 6], ids=["ipykernel7", "ipykernel6"])
def test_blocking_run_is_live_on_each_ipykernel(
    major: int, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = kernel_python(major)
    name = f"batchmagic-ipykernel{major}"
    spec_dir = tmp_path / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched first for kernelspecs

    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    client = KernelClient(nb, kernel_name=name, timeout=120, resources={"metadata": {"path": str(work)}})
    started = time.monotonic()
    client.execute()

    version, executable = text(nb.cells[0].outputs).split()
    assert int(version.split(".")[0]) == major, version
    assert Path(executable) == python

    # The lines arrived while the cell ran, spread over its 2.5 s, not all at the end.
    run_index = 2
    arrived: dict[int, float] = {}
    for when, index, chunk in client.arrivals:
        for n in re.findall(r"^line (\d+)$", chunk, re.MULTILINE) if index == run_index else []:
            arrived.setdefault(int(n), when - started)
    assert sorted(arrived) == list(range(LINES)), client.arrivals
    assert arrived[LINES - 1] - arrived[0] >= 1.5, arrived

    # The panel: a widget displayed first, then its display updated at the end with the run's record.
    panel = [(when - started, kind, content) for when, index, kind, content in client.displays if index == run_index]
    assert [kind for _, kind, _ in panel] == ["display_data", "update_display_data"], panel
    (shown_at, _, shown), (updated_at, _, updated) = panel
    assert "application/vnd.jupyter.widget-view+json" in shown["data"]
    assert shown["transient"]["display_id"] == updated["transient"]["display_id"]
    assert shown_at < arrived[0] and updated_at > arrived[LINES - 1], (panel, arrived)
    # ... with the run's static record: its summary line first, then its phases, and the same as HTML.
    summary_line = updated["data"]["text/plain"].splitlines()[0]
    assert re.fullmatch(r"kernel-check \[local, Standard_E32_v3\] done [0-9.hms]+", summary_line), updated
    assert "azbatch-record" in updated["data"]["text/html"] and "running" in updated["data"]["text/html"]
    # ... and the widget itself kept updating while the lines flowed (its title shows the phase and elapsed time).
    running = [when - started for when, index, value in client.values if index == run_index and ">running<" in value]
    assert any(arrived[0] < when < arrived[LINES - 1] for when in running), (running, arrived)
    saved = [o for o in nb.cells[run_index].outputs if o["output_type"] == "display_data"]
    assert saved and saved[0]["data"]["text/plain"] == updated["data"]["text/plain"]

    # The names the cell assigned came back into the kernel's namespace.
    assert text(nb.cells[3].outputs).split() == [str(LINES - 1), str((LINES - 1) * 10)]
    assert (home / "runs").is_dir()  # the kernel used the test's BATCHMAGIC_HOME
    lines = ", ".join(f"{arrived[n]:.2f}s" for n in range(LINES))
    titles = ", ".join(f"{when:.2f}s" for when in running)
    print(f"ipykernel {version}: panel at {shown_at:.2f}s, lines at {lines}, running titles at {titles}", end="")
    print(f", done at {updated_at:.2f}s")
