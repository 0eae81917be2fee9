"""Rich output: the runner's display protocol, and what a %%azbatch cell displays replayed in the notebook."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import matplotlib
import nbformat
import pandas as pd
import pytest
from IPython.core.displaypub import DisplayPublisher

from batchmagic import RemoteError
from batchmagic.run.ipynb import outputs_of
from batchmagic.run.monitor import LogRecord
from batchmagic.runner.display import Capture, compile_cell, mime_bundle

PNG = b"\x89PNG\r\n\x1a\n"


class Rich:
    def _repr_html_(self) -> str:
        return "<b>rich</b>"

    def _repr_png_(self) -> bytes:
        return PNG + b"pixels"

    def _repr_json_(self) -> dict[str, Any]:
        return {"a": [1, 2]}

    def _repr_latex_(self) -> str:
        raise ValueError("no latex today")

    def __repr__(self) -> str:
        return "Rich()"


class Bundled:
    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"text/markdown": "**md**", "image/png": base64.b64encode(PNG).decode()}, {"image/png": {"width": 3}}

    def _repr_html_(self) -> str:
        return "<i>also</i>"


def test_mime_bundle_from_repr_methods() -> None:
    data, metadata = mime_bundle(Rich())
    assert data["text/plain"] == "Rich()"
    assert data["text/html"] == "<b>rich</b>"
    assert base64.b64decode(data["image/png"]) == PNG + b"pixels"
    assert data["application/json"] == {"a": [1, 2]}
    assert "text/latex" not in data  # a method that raises is skipped, as IPython does
    assert metadata == {}


def test_mime_bundle_from_repr_mimebundle_with_metadata() -> None:
    data, metadata = mime_bundle(Bundled())
    assert data["text/markdown"] == "**md**" and data["text/html"] == "<i>also</i>"
    assert base64.b64decode(data["image/png"]) == PNG
    assert metadata == {"image/png": {"width": 3}}
    assert set(mime_bundle(Rich(), include={"text/html"})[0]) == {"text/html", "text/plain"}


def test_dataframe_and_class_and_plain_values() -> None:
    data, _ = mime_bundle(pd.DataFrame({"x": [1, 2]}))
    assert "<table" in data["text/html"] and data["text/plain"].split() == ["x", "0", "1", "1", "2"]
    assert set(mime_bundle(Rich)[0]) == {"text/plain"}  # the class itself has no representation but its repr
    assert mime_bundle(42) == ({"text/plain": "42"}, {})


def run_cell(source: str) -> tuple[Capture, list[tuple[str, Any]]]:
    """Run ``source`` as the runner does; return the capture and the events: ("o", text) and ("d", output)."""
    events: list[tuple[str, Any]] = []

    class Out(io.StringIO):
        def write(self, text: str) -> int:
            events.append(("o", text))
            return len(text)

    capture = Capture(lambda output: events.append(("d", output)))
    namespace: dict[str, Any] = {"__name__": "__main__", "display": capture.display, "Rich": Rich}
    with redirect_stdout(Out()), capture.active():
        try:
            for code in compile_cell(source, "<azbatch-cell>"):
                exec(code, namespace)
        finally:
            capture.show_figures(only_new=True)
    return capture, [e for e in events if e != ("o", "\n")]


def test_last_expression_is_an_execute_result_in_order_with_prints() -> None:
    capture, events = run_cell("print('a')\ndisplay(Rich())\nprint('b')\nx = 6\nx * 7\n")
    assert [kind for kind, _ in events] == ["o", "d", "o", "d"]
    assert events[0] == ("o", "a") and events[2] == ("o", "b")
    assert events[1][1]["output_type"] == "display_data" and events[1][1]["data"]["text/html"] == "<b>rich</b>"
    assert events[3][1] == {
        "output_type": "execute_result",
        "execution_count": None,
        "data": {"text/plain": "42"},
        "metadata": {},
    }
    assert capture.outputs == [e[1] for e in events if e[0] == "d"]


@pytest.mark.parametrize(
    "source",
    ["x = 1\nx;\n", "x = 1\nx;  # quiet\n", "None\n", "x = 1\nif x:\n    x\n", "def f():\n    return 1\n"],
)
def test_no_execute_result(source: str) -> None:
    capture, _ = run_cell(source)
    assert capture.outputs == []


@pytest.mark.parametrize("source", ["x = 6\nx * 7\n", "x = 6; y = ';'\nx * 7  # ;\n"])
def test_an_execute_result_whatever_semicolons_come_before_or_in_a_comment(source: str) -> None:
    capture, _ = run_cell(source)
    assert [output["data"]["text/plain"] for output in capture.outputs] == ["42"]


def test_future_import_and_error_lines_point_at_the_cell() -> None:
    capture, _ = run_cell("from __future__ import annotations\ndef f(a: Undefined) -> int:\n    return 1\nf(0)\n")
    assert capture.outputs[0]["data"] == {"text/plain": "1"}
    with pytest.raises(ZeroDivisionError) as info:
        run_cell("x = 1\n1 / 0\n")
    assert info.traceback[-1].lineno == 1  # 0-based: the cell's second line


@pytest.fixture
def mpl_backend() -> Iterator[None]:
    previous = matplotlib.get_backend()
    matplotlib.use("module://batchmagic.runner.mpl_backend")
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
    matplotlib.use(previous)


def test_figures_show_close_and_flush_at_the_end(mpl_backend: None) -> None:
    source = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3])\n"
        "plt.show()\n"
        "print('shown')\n"
        "fig, ax = plt.subplots()\n"
        "ax.plot([3, 1])\n"
        "fig.show()\n"
        "plt.figure()\n"
        "plt.plot([0, 1])\n"
        "fig\n"
    )
    capture, events = run_cell(source)
    kinds = [(kind, e["output_type"] if kind == "d" else e) for kind, e in events]
    # plt.show(), the text, fig.show(), the last expression, then the figure left open (not fig again)
    assert kinds == [
        ("d", "display_data"),
        ("o", "shown"),
        ("d", "display_data"),
        ("d", "execute_result"),
        ("d", "display_data"),
    ]
    for output in capture.outputs:
        assert base64.b64decode(output["data"]["image/png"]).startswith(PNG)
        assert output["data"]["text/plain"].startswith("<Figure size")
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # closed, as the inline backend leaves them


def test_prepare_does_not_import_ipython() -> None:
    # The training image has no IPython: the runner must not need it, nor import it for a cell that doesn't.
    code = (
        "import sys, os\n"
        "from batchmagic.runner import display as rich\n"
        "rich.prepare()\n"
        "assert 'IPython' not in sys.modules, 'IPython imported'\n"
        "assert os.environ['MPLBACKEND'] == rich.MPL_BACKEND\n"
        "from IPython.display import display\n"
        "assert display is rich._display\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_record_outputs_join_streams_and_end_with_the_error() -> None:
    shown = {"output_type": "display_data", "data": {"text/plain": "x"}, "metadata": {}}
    records = [
        LogRecord(1, "stdout", "a\n"),
        LogRecord(2, "stdout", "b\n"),
        LogRecord(3, "display", "", output=shown),
        LogRecord(4, "stderr", "warn\n"),
        LogRecord(5, "progress", "{}"),
    ]
    error = {"type": "ValueError", "message": "bad", "traceback": ["Traceback\n", "ValueError: bad\n"]}
    assert outputs_of(records, error) == [
        {"output_type": "stream", "name": "stdout", "text": "a\nb\n"},
        shown,
        {"output_type": "stream", "name": "stderr", "text": "warn\n"},
        {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": ["Traceback", "ValueError: bad"]},
    ]


# --- through the magic: a real InteractiveShell, the local backend's subprocess runner ---


class Recorder(DisplayPublisher):
    """The shell's display publisher: notes each display after the text printed before it."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        super().__init__()
        self.capsys = capsys
        self.events: list[tuple[str, Any]] = []

    def printed(self) -> None:
        out = self.capsys.readouterr().out
        if out:
            self.events.append(("o", out))

    def publish(self, data: dict[str, Any], metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.printed()
        self.events.append(("d", data))


CELL = """\
%%azbatch --backend local
import matplotlib.pyplot as plt
from IPython.display import HTML, display as ipython_display

print("first")
display(df)
plt.plot([1, 2, 3])
plt.show()
print("second")
ipython_display(HTML("<b>bold</b>"))
plt.figure()
plt.plot([3, 2, 1])
total = int(df.x.sum())
df.x * 2
"""


def test_magic_replays_displays_in_order_and_writes_the_record(shell: Any, capsys: Any) -> None:
    shell.run_cell("import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3]})")
    recorder = Recorder(capsys)
    shell.display_pub = recorder
    shell.run_cell(CELL)
    recorder.printed()
    assert shell.user_ns["total"] == 6  # names come back as before
    events = [(kind, value if kind == "o" else sorted(value)) for kind, value in recorder.events]
    out = events[5][1]  # the last expression: the cell's Out, which the testing shell prints
    assert events == [
        ("o", "first\n"),
        ("d", ["text/html", "text/plain"]),  # display(df)
        ("d", ["image/png", "text/plain"]),  # plt.show()
        ("o", "second\n"),
        ("d", ["text/html", "text/plain"]),  # IPython's display, routed to the capture
        ("o", out),
        ("d", ["image/png", "text/plain"]),  # the figure left open, after the Out as in a notebook
    ]
    assert out.startswith("Out[")
    assert out.split()[1:] == ["0", "2", "1", "4", "2", "6", "Name:", "x,", "dtype:", "int64"]
    shown = [value for kind, value in recorder.events if kind == "d"]
    assert "<table" in shown[0]["text/html"] and shown[2]["text/html"] == "<b>bold</b>"
    assert base64.b64decode(shown[1]["image/png"]).startswith(PNG)
    assert shell.user_ns["_"].tolist() == [2, 4, 6]

    run = shell.user_ns["_azbatch"]
    assert [o["data"] for i, o in enumerate(run.displays) if i != 3] == shown  # the record keeps the Out too
    nb = nbformat.reads(run.store.get_bytes(run.record_key).decode(), as_version=4)
    nbformat.validate(nb)
    (cell,) = nb.cells
    assert cell.source == CELL.split("\n", 1)[1]
    kinds = [(o.output_type, o.get("name")) for o in cell.outputs]
    assert kinds == [
        ("stream", "stdout"),
        ("display_data", None),
        ("display_data", None),
        ("stream", "stdout"),
        ("display_data", None),
        ("execute_result", None),
        ("display_data", None),
    ]
    assert cell.outputs[1].data["text/html"] == shown[0]["text/html"]
    assert nb.metadata.batchmagic.run_id == run.id


def test_failed_cell_still_shows_what_it_displayed(shell: Any, capsys: Any) -> None:
    recorder = Recorder(capsys)
    shell.display_pub = recorder
    with pytest.raises(RemoteError):
        shell.run_cell("%%azbatch --backend local\ndisplay({'step': 1})\nraise ValueError('late')\n")
    assert ("d", {"text/plain": "{'step': 1}"}) in recorder.events
    run = shell.user_ns["_azbatch"]
    nb = nbformat.reads(run.store.get_bytes(run.record_key).decode(), as_version=4)
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data", "error"]
    assert outputs[1].ename == "ValueError" and outputs[1].evalue == "late"


def test_background_panel_shows_displays_in_its_output(capsys: Any) -> None:
    from batchmagic.backends.base import Phase
    from batchmagic.notebook.widget import StatusPanel
    from tests.test_widget import state

    panel = StatusPanel(background=True)
    shown = {"output_type": "execute_result", "execution_count": None, "data": {"text/plain": "42"}, "metadata": {}}
    panel.update(state(Phase.RUNNING), [LogRecord(1, "stdout", "hi\n"), LogRecord(2, "display", "", output=shown)])
    assert [o["output_type"] for o in panel.log.outputs] == ["stream", "display_data"]
    assert panel.log.outputs[1]["data"] == {"text/plain": "42"}
    assert capsys.readouterr().out == ""
