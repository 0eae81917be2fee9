"""The cell runs where the notebook is: the files it names are shipped, the folders exist, the files it
writes come back, and nothing local is overwritten. Each scenario is compared with the plain run of the
same cell in a copy of the same folder, on the local backend and on the Azure path (the Batch emulator
and Azurite)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from batchmagic import RemoteError
from batchmagic.api import Session
from batchmagic.config import parse_size
from batchmagic.errors import ConfigError
from batchmagic.package.folder import (
    beside_name,
    cell_strings,
    function_strings,
    named_paths,
    placement,
    plan_folder,
    skeleton,
)
from batchmagic.protocol import sha256_file
from batchmagic.run.run import OutputWarning
from tests.support.azurite import RunningAzurite
from tests.support.emulator import RunningEmulator, start_emulator, wait_for
from tests.support.settings import use_azure

READ = "import pandas as pd\ndf = pd.read_csv('data/train.csv')\ntotal = int(df.x.sum())\nrows = len(df)"
PLOT = (
    "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots()\nax.plot([1, 2, 3], [3, 1, 2])\nfig.savefig('images/trees/boundary.png')\nplt.close(fig)"
)
WRITE = (
    "with open('results/summary.txt', 'w') as f:\n    f.write(f'total={total}')\n"
    "import pathlib\npathlib.Path('out/deep').mkdir(parents=True, exist_ok=True)\n"
    "pathlib.Path('out/deep/rows.txt').write_text(str(rows))"
)


def make_project(root: Path) -> Path:
    """A notebook's folder: data beside it, empty folders to write into, things never to ship."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "train.csv").write_text("x,y\n" + "".join(f"{i},{i * i}\n" for i in range(50)))
    (root / "images" / "trees").mkdir(parents=True)
    (root / "results").mkdir()
    (root / ".git" / "objects").mkdir(parents=True)
    (root / "node_modules" / "left-pad").mkdir(parents=True)
    return root


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its content (hidden and the tests' own aside)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


@contextmanager
def inside(folder: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def plain(cells: list[str], folder: Path) -> dict[str, Any]:
    """The cells run plainly, one after another, in ``folder``: what the notebook would have done."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    with inside(folder):
        for cell in cells:
            exec(compile(cell, "<cell>", "exec"), namespace)
    return namespace


# --- the rules, as pure functions ---


def test_strings_of_the_cell_and_of_the_notebook_functions_it_calls():
    assert cell_strings("x = open('data/a.csv')\nf'{x}'\ny = 1") == ["data/a.csv"]
    assert cell_strings("%time df = load('data/a.csv')") == ["data/a.csv"]  # IPython syntax: still found
    # A shell command's words name paths too (options aside), as os.listdir('data') would.
    assert cell_strings("files = !ls -1 data # a comment\n!!wc -l 'my data/a.csv'") == [
        "my data/a.csv",
        "ls",
        "data",
        "wc",
        "my data/a.csv",
    ]
    assert cell_strings("%%bash\nwc -l results/x.txt") == ["wc", "results/x.txt"]
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def inner():\n    return 'data/inner.csv'\ndef load():\n    return inner(), 'data/b.csv'\n", namespace)
    namespace["library"] = os.path.join  # a library function: not the notebook's
    found = function_strings("load()\nlibrary('x')", namespace)
    assert "data/b.csv" in found and "data/inner.csv" in found
    assert function_strings("y = 1", namespace) == []


def test_paths_held_by_the_notebooks_variables_and_default_arguments():
    """Hands-On Machine Learning's notebooks build their paths in an early cell and read them in functions'
    defaults and globals: ``HOUSING_PATH = os.path.join("datasets", "housing")``, then
    ``def load_housing_data(housing_path=HOUSING_PATH)``. Their values are known before the run, as literals."""
    namespace: dict[str, Any] = {"__name__": "__main__", "os": os}
    exec(
        "HOUSING_PATH = os.path.join('datasets', 'housing')\n"
        "IMAGES = os.path.join('images', 'end_to_end_project')\n"
        "def load_housing_data(housing_path=HOUSING_PATH, *, extra=('a.csv', 'b.csv')):\n"
        "    return os.path.join(housing_path, 'housing.csv')\n"
        "def save_fig(name):\n"
        "    return os.path.join(IMAGES, name)\n",
        namespace,
    )
    namespace["CSV"] = Path("data") / "train.csv"
    found = function_strings("h = load_housing_data()\nsave_fig('x')\nopen(CSV)", namespace)
    assert {"datasets/housing", "housing.csv", "a.csv", "b.csv", "images/end_to_end_project", "data/train.csv"} <= set(
        found
    )
    assert function_strings("y = len(range(3))", namespace) == []


def test_named_paths_are_existing_relative_paths_under_the_folder(tmp_path):
    root = make_project(tmp_path / "nb")
    (root / "data" / "more.csv").write_text("x\n1\n")
    strings = ["data/train.csv", "data", "nope.csv", "/etc/passwd", "../nb/data", ".", "*", "data/*.csv", "results"]
    assert named_paths(strings, root) == ["data", "results"]  # data/train.csv is under data, shipped with it
    assert named_paths(["data/*.csv"], root) == ["data/more.csv", "data/train.csv"]
    assert named_paths(["./data/train.csv", "data//train.csv"], root) == ["data/train.csv"]


def test_skeleton_skips_hidden_folders_venvs_and_caches_and_is_bounded(tmp_path):
    root = make_project(tmp_path / "nb")
    (root / "venv").mkdir()
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (root / "src" / "__pycache__").mkdir(parents=True)
    for i in range(30):
        (root / "many" / f"d{i:02}").mkdir(parents=True)
    (root / "a" / "b" / "c" / "d").mkdir(parents=True)
    dirs = skeleton(root, max_dirs=1000, max_depth=3)
    assert {"data", "images", "images/trees", "results", "src", "a/b/c"} <= set(dirs)
    assert not {".git", "node_modules", "venv", "src/__pycache__", "a/b/c/d"} & set(dirs)
    assert len(skeleton(root, max_dirs=10)) == 10


def test_what_comes_back_never_overwrites_a_local_change(tmp_path):
    root = tmp_path
    assert beside_name("images/plot.png", "r1") == "images/plot.azbatch-r1.png"
    assert beside_name("Makefile", "r1") == "Makefile.azbatch-r1" and beside_name(".env", "r1") == ".env.azbatch-r1"
    shipped = root / "shipped.txt"
    shipped.write_text("v1")
    plan = plan_folder("open('shipped.txt')", {}, root, limit=10**6)
    assert [spec.dest for spec in plan.inputs] == ["shipped.txt"]
    new = ("new.txt", 3, "0" * 64)
    assert placement(root / "new.txt", *new, plan) == "write"
    assert placement(shipped, "shipped.txt", 2, "0" * 64, plan) == "write"  # unchanged since submitted
    assert placement(shipped, "shipped.txt", 2, sha256_file(shipped), plan) == "same"
    shipped.write_text("v2 edited here")
    assert placement(shipped, "shipped.txt", 2, "0" * 64, plan) == "beside"
    old = root / "old.txt"  # not shipped: older than the run, so the cell would have replaced it here
    old.write_text("old")
    os.utime(old, (plan.taken_at - 60, plan.taken_at - 60))
    assert placement(old, "old.txt", 2, "0" * 64, plan) == "write"
    os.utime(old, (plan.taken_at + 1, plan.taken_at + 1))  # appeared or changed while the run ran
    assert placement(old, "old.txt", 2, "0" * 64, plan) == "beside"


def test_the_ship_limit_names_the_path_and_the_input_that_ships_it(tmp_path):
    root = make_project(tmp_path / "nb")
    (root / "data" / "big.bin").write_bytes(b"x" * 5000)
    with pytest.raises(ConfigError) as err:
        plan_folder("open('data/big.bin'); open('data/train.csv')", {}, root, limit=1000)
    assert "data/big.bin is 5.0 KB" in str(err.value) and "--input data/big.bin:data/big.bin" in str(err.value)
    assert "\n" not in str(err.value)
    from batchmagic.package.inputs import parse_input

    with inside(root):
        given = [parse_input("data/big.bin:data/big.bin")]
        plan = plan_folder("open('data/big.bin'); open('data/train.csv')", {}, root, limit=1000, inputs=given)
    assert [spec.dest for spec in plan.inputs] == ["data/train.csv"]
    assert parse_size("200MB", "x") == 200_000_000 and parse_size("1.5GB", "x") == 1_500_000_000
    assert parse_size("0", "x") == 0 and parse_size(512, "x") == 512
    with pytest.raises(ConfigError, match="AzBatch.ship_limit 'lots' is not a size"):
        parse_size("lots", "AzBatch.ship_limit")


# --- the local backend, through a real shell, against the plain run ---


def test_local_cells_behave_as_if_they_ran_here(shell, tmp_path):
    project = make_project(Path.cwd())
    mirror = make_project(tmp_path / "plain")
    for cell in (READ, PLOT, WRITE):
        shell.run_cell(f"%%azbatch --backend local\n{cell}")
    expected = plain([READ, PLOT, WRITE], mirror)
    assert (shell.user_ns["total"], shell.user_ns["rows"]) == (expected["total"], expected["rows"]) == (1225, 50)
    assert tree(project) == tree(mirror)  # the figure, the summary, a new nested folder: as here
    assert "images/trees/boundary.png" in tree(project) and "out/deep/rows.txt" in tree(project)
    shell.run_cell("text = open('results/summary.txt').read()")  # written remotely, read back here
    assert shell.user_ns["text"] == "total=1225"


#: Hands-On Machine Learning's idiom (ageron/handson-ml2, Apache-2.0): paths built once in an early cell, read
#: by the notebook's functions as their defaults and globals.
PATHS = (
    "import os\nimport pandas as pd\n"
    "DATA_PATH = os.path.join('data')\nIMAGES_PATH = os.path.join('.', 'images', 'trees')\n"
    "def load_data(data_path=DATA_PATH):\n    return pd.read_csv(os.path.join(data_path, 'train.csv'))\n"
    "def save_note(name):\n    open(os.path.join(IMAGES_PATH, name), 'w').write('saved')\n"
)


def test_paths_the_notebook_built_earlier_are_shipped(shell, tmp_path):
    project = make_project(Path.cwd())
    mirror = make_project(tmp_path / "plain")
    shell.run_cell(PATHS)
    shell.run_cell("%%azbatch --backend local\ndf = load_data()\nsave_note('note.txt')\nrows = len(df)")
    expected = plain([PATHS, "df = load_data()\nsave_note('note.txt')\nrows = len(df)"], mirror)
    assert shell.user_ns["rows"] == expected["rows"] == 50
    assert tree(project) == tree(mirror)  # images/trees/note.txt came back


SHELL = "files = !ls data\nlines = !wc -l data/train.csv"


def test_a_shell_command_sees_the_files_it_names(shell, tmp_path):
    """``!ls data`` lists what is in data/ here, not the empty folder of the skeleton."""
    make_project(Path.cwd())
    (Path.cwd() / "data" / "more.csv").write_text("x\n1\n")
    shell.run_cell(SHELL)
    expected = (list(shell.user_ns["files"]), list(shell.user_ns["lines"]))
    assert expected == (["more.csv", "train.csv"], ["51 data/train.csv"])
    shell.run_cell(f"%%azbatch --backend local\n{SHELL}")
    assert (list(shell.user_ns["files"]), list(shell.user_ns["lines"])) == expected


def test_a_local_file_changed_meanwhile_is_never_overwritten(home, tmp_path):
    project = make_project(tmp_path / "nb")
    (project / "notes.txt").write_text("v1\n")
    cell = "import time\ntime.sleep(1.5)\nopen('notes.txt', 'a').write('from the run\\n')"
    session = Session()
    run = session.submit(cell, {}, backend="local", folder=project)
    time.sleep(0.3)
    (project / "notes.txt").write_text("v1\nedited here meanwhile\n")
    with pytest.warns(OutputWarning, match=r"never over it: notes.txt -> notes.azbatch-.*\.txt"):
        run.wait()
    session.teardown()
    assert (project / "notes.txt").read_text() == "v1\nedited here meanwhile\n"
    (beside,) = project.glob("notes.azbatch-*.txt")
    assert beside.name == f"notes.azbatch-{run.id}.txt" and beside.read_text() == "v1\nfrom the run\n"

    # Unchanged here: the run's version replaces it, as the plain run would have.
    run = session.submit(cell, {}, backend="local", folder=project)
    run.wait()
    assert (project / "notes.txt").read_text() == "v1\nedited here meanwhile\nfrom the run\n"
    assert len(list(project.glob("notes.azbatch-*"))) == 1


def test_the_limits_and_a_missing_path(shell, capsys, home, tmp_path):
    project = make_project(Path.cwd())
    (project / "data" / "big.bin").write_bytes(b"x" * 5000)
    shell.run_cell("%config AzBatch.ship_limit = '1KB'")
    with pytest.raises(UsageError, match=r"data/big.bin is 5.0 KB.*--input data/big.bin:data/big.bin"):
        shell.run_cell("%%azbatch --backend local\nn = len(open('data/big.bin', 'rb').read())")
    assert not (home / "runs").exists() or not list((home / "runs").iterdir())  # nothing was submitted
    shell.run_cell(
        "%%azbatch --backend local --input data/big.bin:data/big.bin\nn = len(open('data/big.bin', 'rb').read())"
    )
    assert shell.user_ns["n"] == 5000

    shell.run_cell("%config AzBatch.bring_back_limit = '1KB'")
    capsys.readouterr()
    shell.run_cell(
        "%%azbatch --backend local\nopen('small.txt', 'w').write('s')\nopen('large.bin', 'wb').write(b'y' * 4000)"
    )
    err = capsys.readouterr().err
    assert (project / "small.txt").read_text() == "s" and not (project / "large.bin").exists()
    assert "1 file the cell wrote (4.0 KB) stayed in the run's storage" in err and "_azbatch.download('DEST')" in err
    shell.user_ns["_azbatch"].download(tmp_path / "got")
    assert (tmp_path / "got" / "large.bin").read_bytes() == b"y" * 4000

    with pytest.raises(RemoteError) as missing:
        shell.run_cell("%%azbatch --backend local\nimport pandas as pd\npd.read_csv('data/nope.csv')")
    assert "data/nope.csv is neither in the notebook's folder" in str(missing.value)
    assert "--input SOURCE:data/nope.csv" in "".join(missing.value._render_traceback_())
    with pytest.raises(RemoteError, match=r"does not name it in a string.*--input data/train.csv:data/train.csv"):
        shell.run_cell("%%azbatch --backend local\nopen(''.join(['da', 'ta/tr', 'ain.csv']))")


# --- the Azure path: the Batch emulator and Azurite ---


@pytest.fixture
def azure_env(monkeypatch, home, tmp_path: Path, azurite: RunningAzurite) -> Iterator[RunningEmulator]:
    with start_emulator(tmp_path / "batch", allocation_delay=0.1) as emu:
        use_azure(monkeypatch, emu, azurite, prefix="fold")
        yield emu


def test_azure_cells_behave_as_if_they_ran_here(azure_env, shell, tmp_path):
    project = make_project(Path.cwd())
    mirror = make_project(tmp_path / "plain")
    shell.run_cell(f"%%azbatch\n{READ}\n{PLOT}\n{WRITE}")
    expected = plain([f"{READ}\n{PLOT}\n{WRITE}"], mirror)
    assert (shell.user_ns["total"], shell.user_ns["rows"]) == (expected["total"], expected["rows"])
    assert tree(project) == tree(mirror)
    shell.run_cell("text = open('results/summary.txt').read()")
    assert shell.user_ns["text"] == "total=1225"

    (project / "notes.txt").write_text("v1\n")
    cell = "import time\ntime.sleep(2)\nopen('notes.txt', 'a').write('from the run\\n')"
    shell.run_cell(f"%%azbatch --no-wait\n{cell}")
    run = shell.user_ns["_azbatch"]
    (project / "notes.txt").write_text("v1\nedited here meanwhile\n")
    wait_for(lambda: run.done, timeout=60)
    assert run.status == "done", run.error
    assert (project / "notes.txt").read_text() == "v1\nedited here meanwhile\n"
    assert (project / f"notes.azbatch-{run.id}.txt").read_text() == "v1\nfrom the run\n"
    wait_for(lambda: any("never over it" in line for line in run.warnings), timeout=10)  # after the run's end

    shell.run_cell(SHELL)
    expected = (list(shell.user_ns["files"]), list(shell.user_ns["lines"]))
    shell.run_cell(f"%%azbatch\n{SHELL}")
    assert (list(shell.user_ns["files"]), list(shell.user_ns["lines"])) == expected

    with pytest.raises(RemoteError, match="data/nope.csv is neither in the notebook's folder"):
        shell.run_cell("%%azbatch\nopen('data/nope.csv')")
    assert sys.modules  # the kernel is still usable
    shutil.rmtree(mirror)


# --- a real kernel (ipykernel 7) whose working directory is the notebook's folder ---


@pytest.mark.slow
def test_on_a_real_kernel_the_cell_runs_where_the_notebook_is(home, tmp_path, monkeypatch):
    import json

    import nbformat
    from nbclient import NotebookClient

    spec_dir = tmp_path / "jupyter" / "kernels" / "batchmagic-folder"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "folder", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    project = make_project(tmp_path / "notebook")
    mirror = make_project(tmp_path / "plain")
    cells = [
        "%load_ext batchmagic\n%config AzBatch.panel = 'text'",
        f"%%azbatch --backend local\n{READ}\n{PLOT}\n{WRITE}",
        "print(total, rows, open('results/summary.txt').read())",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    NotebookClient(
        nb, kernel_name="batchmagic-folder", timeout=120, resources={"metadata": {"path": str(project)}}
    ).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs if o["output_type"] == "stream")
    assert printed.split() == ["1225", "50", "total=1225"]
    plain([f"{READ}\n{PLOT}\n{WRITE}"], mirror)
    assert tree(project) == tree(mirror)
