"""A public teaching notebook runs the same with ``%%azbatch`` as without it.

tests/data/public/scipy2017_cv_gridsearch.ipynb is an excerpt of the SciPy 2017 scikit-learn tutorial (CC0,
origin in its first cell): a manual k-fold loop that fits a classifier in place, ``cross_val_score`` with
unseeded ``ShuffleSplit``/``KFold(shuffle=True)`` (numpy's global generator), ``plt.matshow`` and a
``validation_curve`` plot, ``GridSearchCV(verbose=3).fit`` on the last line. It runs twice on real kernels:
plainly, then with its cells tagged ``azbatch`` under ``%%azbatch --backend local``; each cell's outputs (what
it printed, its figures, its ``Out[n]`` and the count on it), then the namespace and numpy's and Python's
generators afterwards, must be the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from batchmagic.package.plots import static_figures_note
from tests.support.azurite import RunningAzurite
from tests.support.emulator import RunningEmulator, emulator_fixture
from tests.support.settings import use_azure

EXCERPT = Path(__file__).resolve().parent / "data" / "public" / "scipy2017_cv_gridsearch.ipynb"

#: The last cell of both runs: every name the notebook holds, as something two processes can compare (arrays
#: and fitted estimators by the hash of their bytes, estimators attribute by attribute), and the generators.
SUMMARY = r"""
import hashlib as _hl, json as _js, pickle as _pk, random as _rd, types as _ty
def _summary(value, depth=0):
    if isinstance(value, (bool, int, str, type(None))):
        return repr(value)
    if isinstance(value, float):
        return repr(round(value, 12))
    if isinstance(value, np.generic):
        return repr(value.item())
    if isinstance(value, np.ndarray):
        return f"ndarray{value.shape}{value.dtype}:" + _hl.sha1(np.ascontiguousarray(value).tobytes()).hexdigest()
    if isinstance(value, np.random.RandomState):
        return "RandomState:" + _hl.sha1(repr(value.get_state()).encode()).hexdigest()
    if isinstance(value, (_ty.FunctionType, type, _ty.ModuleType, _ty.BuiltinFunctionType)):
        return f"{type(value).__name__}:{value.__name__}"
    if depth > 6:
        return type(value).__name__
    if isinstance(value, (list, tuple)):
        return [type(value).__name__] + [_summary(item, depth + 1) for item in value]
    if isinstance(value, dict):  # cv_results_ and the like: their timings differ from run to run
        return {str(k): _summary(v, depth + 1) for k, v in value.items() if "time" not in str(k)}
    if hasattr(value, "__dict__"):
        attributes = {k: _summary(v, depth + 1) for k, v in vars(value).items() if "time" not in k}
        return {"__type__": type(value).__name__, **attributes}
    return type(value).__name__ + ":" + _hl.sha1(_pk.dumps(value)).hexdigest()
_names = {
    name: _summary(value) for name, value in dict(globals()).items()
    if not name.startswith("_") and name not in ("In", "Out", "exit", "quit", "get_ipython")
}
_names["<np.random>"] = _hl.sha1(repr(np.random.get_state()).encode()).hexdigest()
_names["<random>"] = _hl.sha1(repr(_rd.getstate()).encode()).hexdigest()
print(_js.dumps(_names, sort_keys=True))
"""


def prepared(flags: str | None) -> nbformat.NotebookNode:
    """The excerpt, its ``azbatch`` cells under ``%%azbatch FLAGS`` (none when ``flags`` is None), and the
    summary cell at the end. ``%load_ext`` shares the first cell, so that both runs count their cells alike."""
    nb = nbformat.read(EXCERPT, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell in code:
        if flags is not None and "azbatch" in cell.metadata.get("tags", []):
            cell.source = f"%%azbatch {flags}\n" + cell.source
    if flags is not None:
        code[0].source = "%load_ext batchmagic\n" + code[0].source
    nb.cells = [*code, nbformat.v4.new_code_cell(SUMMARY)]
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _timeless(text: str) -> str:
    """GridSearchCV's verbose lines end with each fit's time (``total time=   0.0s``); an object's repr holds
    its address (``<matplotlib.image.AxesImage at 0x7f...>``)."""
    return re.sub(r"0x[0-9a-f]+", "0x?", re.sub(r"total time=\s*[0-9.]+s", "total time=?", text))


def outputs(cell: nbformat.NotebookNode) -> list[Any]:
    """A cell's outputs as they read in the notebook: streams merged by name and timings blanked, figures as
    their formats (a PNG's bytes differ with the font cache), the record that replaced a run's panel left out."""
    shown: list[Any] = []
    for output in cell.outputs:
        kind = output["output_type"]
        if kind == "stream":
            text = _timeless(output["text"])
            if shown and shown[-1][:2] == ["stream", output["name"]]:
                shown[-1][2] += text
            else:
                shown.append(["stream", output["name"], text])
            continue
        data = output.get("data", {})
        if "azbatch-record" in data.get("text/html", ""):
            continue
        if kind == "error":
            shown.append(["error", output["ename"], output["evalue"]])
        elif any(mime.startswith("image/") for mime in data):
            shown.append([kind, output.get("execution_count"), sorted(data), re.sub(r"\d+", "N", data["text/plain"])])
        else:
            shown.append([kind, output.get("execution_count"), sorted(data), _timeless(data.get("text/plain", ""))])
    return shown


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> nbformat.NotebookNode:
    """The excerpt run plainly, once for the module's tests."""
    return execute(prepared(None), tmp_path_factory.mktemp("plain"))


def assert_ran_the_same(plain: nbformat.NotebookNode, remote: nbformat.NotebookNode) -> None:
    ran_remotely = [cell for cell in remote.cells if cell.source.startswith("%%azbatch")]
    assert len(ran_remotely) == 11
    for index, (here, there) in enumerate(zip(plain.cells[:-1], remote.cells[:-1], strict=True)):
        assert there.execution_count == here.execution_count
        assert outputs(there) == outputs(here), f"cell {index}:\n{there.source}"
    # What the excerpt shows, so that equal outputs are not two empty lists: the figures, the Out of a
    # cross_val_score and of GridSearchCV.fit (its HTML repr), the grid search's verbose lines.
    shown = [output for cell in ran_remotely for output in outputs(cell)]
    assert sum(1 for output in shown if output[0] == "display_data" and "image/png" in output[2]) >= 2
    assert any(o[0] == "execute_result" and "GridSearchCV" in o[3] and "text/html" in o[2] for o in shown)
    assert any(o[0] == "stream" and "[CV 5/5] END" in o[2] for o in shown)

    names_here, names_there = (json.loads(nb.cells[-1].outputs[0]["text"]) for nb in (plain, remote))
    assert {"classifier", "grid", "masks", "scores", "cv", "<np.random>", "<random>"} <= set(names_here)
    assert names_there == names_here


def test_a_public_tutorial_runs_the_same_under_azbatch(
    home: Path, tmp_path: Path, plain_run: nbformat.NotebookNode
) -> None:
    assert_ran_the_same(plain_run, execute(prepared("--backend local"), tmp_path))
    assert len(list((home / "runs").iterdir())) >= 11  # each tagged cell was a run of its own


emulator = emulator_fixture(allocation_delay=0.2)


@pytest.mark.slow
def test_a_public_tutorial_runs_the_same_on_the_azure_path(
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: RunningEmulator,
    azurite: RunningAzurite,
    plain_run: nbformat.NotebookNode,
) -> None:
    """The same cells as Batch jobs (the project's emulator) with their bundles and results in Blob Storage
    (Azurite), on a named pool as a notebook of many remote cells would use one: the first cell grows it to a
    node, the later ones start on that node at once."""
    use_azure(monkeypatch, emulator, azurite, prefix="public")
    nb = prepared("--pool tutorial")
    nb.cells[0].source += "\n%azbatch_pool create tutorial --vm Standard_D2s_v3 --idle 5m"
    remote = execute(nb, tmp_path)
    for cell in remote.cells:  # the tests' placeholder image has no registry to be checked against: said once
        cell.outputs = [o for o in cell.outputs if not o.get("text", "").startswith("warning: could not check")]
    remote.cells[0].outputs = []  # what %azbatch_pool create said
    assert_ran_the_same(plain_run, remote)
    jobs = [r["body"] for r in emulator.requests() if r["method"] == "POST" and r["path"] == "/jobs"]
    assert len(jobs) == 11 and {job["poolInfo"].get("poolId") for job in jobs} == {"tutorial"}


def test_a_kernel_with_live_figures_is_told_once_that_remote_figures_are_images(home: Path, tmp_path: Path) -> None:
    """The SciPy tutorial's trees-and-forests notebook starts with ``%matplotlib notebook``: its figures are live
    in the kernel, a remote cell's come back as images (as the inline backend shows them). The notebook says so,
    once, under the first remote figure."""
    cells = [
        "%matplotlib notebook\nimport matplotlib.pyplot as plt\n%load_ext batchmagic",
        "%%azbatch --backend local\nplt.figure()\nplt.plot([1, 2, 3]);",
        "%%azbatch --backend local\nplt.figure()\nplt.plot([3, 2, 1]);",
    ]
    nb = execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), tmp_path)
    first, second = (outputs(cell) for cell in nb.cells[1:])
    assert [o[2] for o in first + second if o[0] == "display_data"] == [["image/png", "text/plain"]] * 2
    said = [o[2] for o in first if o[0] == "stream" and o[1] == "stderr"]
    assert len(said) == 1 and "live figures (%matplotlib notebook)" in said[0] and "came back as images" in said[0]
    assert not [o for o in second if o[0] == "stream" and "live figures" in o[2]]


def test_the_live_figures_note_is_for_live_backends_and_figures_only() -> None:
    figure = {"data": {"image/png": "iVBOR", "text/plain": "<Figure size 640x480 with 1 Axes>"}}
    picture = {"data": {"image/png": "iVBOR", "text/plain": "<IPython.core.display.Image object>"}}
    assert "%matplotlib notebook" in static_figures_note("notebook", [figure])
    assert "%matplotlib notebook" in static_figures_note("nbAgg", [figure])
    assert "%matplotlib widget" in static_figures_note("module://ipympl.backend_nbagg", [figure])
    assert "%matplotlib widget" in static_figures_note("widget", [figure])
    assert static_figures_note("module://matplotlib_inline.backend_inline", [figure]) == ""
    assert static_figures_note(None, [figure]) == ""
    assert static_figures_note("nbAgg", [picture]) == ""


def test_a_cell_that_plots_then_raises_shows_its_figure_after_the_traceback(home: Path, tmp_path: Path) -> None:
    """The SciPy tutorial's classification notebook draws a scatter plot, then calls a helper whose import
    failed: the kernel shows the NameError, then the figure the cell left open (the inline backend draws it
    once the cell has ended). A figure shown mid-cell (plt.show()) comes before, in both."""
    setup = "import matplotlib.pyplot as plt\n%load_ext batchmagic"
    cell = (
        "plt.plot([1, 2]); plt.show()\n"  # shown mid-cell
        "plt.scatter([1, 2], [3, 4])\nplt.xlabel('first feature')\n"  # left open
        "plot_2d_separator(knn, X)"
    )
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in (setup, cell, "%%azbatch --backend local\n" + cell)]
    )
    NotebookClient(
        nb, timeout=120, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    plain, remote = (
        [o[:2] if o[0] != "stream" else o[:2] for o in outputs(c) if o[1] != "stderr"] for c in nb.cells[1:]
    )
    assert plain == [["display_data", None], ["error", "NameError"], ["display_data", None]]
    assert remote == [["display_data", None], ["error", "RemoteError"], ["display_data", None]]


def test_an_empty_figure_shows_as_its_text_as_the_inline_backend_shows_it(home: Path, tmp_path: Path) -> None:
    """The SciPy tutorial's linear-models notebook calls ``plt.figure()``, then fails before drawing on it: the
    inline backend shows an empty figure as its text (``<Figure size 640x480 with 0 Axes>``), no blank image."""
    cell = "plt.figure()\nplt.scatter([1, 2], [3, 4], c=plt.cm.spectral([0.5, 1.0]));"
    sources = ("import matplotlib.pyplot as plt\n%load_ext batchmagic", cell, "%%azbatch --backend local\n" + cell)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    NotebookClient(
        nb, timeout=120, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    plain, remote = ([o for o in outputs(cell) if o[0] == "display_data"] for cell in nb.cells[1:])
    assert plain == [["display_data", None, ["text/plain"], "<Figure size 640x? with 0 Axes>"]]
    assert remote == plain
