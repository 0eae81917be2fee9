"""A cell behaves as if it ran here (issue 17): each case is a minimal cell, run plainly and with
``%%azbatch`` (locally, through the Batch emulator + Azurite, and on a real kernel), compared."""

from __future__ import annotations

import base64
import gc
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.error import UsageError
from nbclient import NotebookClient

from batchmagic.errors import RemoteError, RunFailed
from tests.support.azurite import RunningAzurite
from tests.support.emulator import RunningEmulator, start_emulator
from tests.support.settings import use_azure

IRIS = "from sklearn.datasets import load_iris\nX, y = load_iris(return_X_y=True)\n"

#: (id, setup cell, the cell, an expression whose value must be the same after the plain run and the remote one,
#:  the names that come back changed in place)
IN_PLACE = [
    (
        "clf.fit",
        IRIS + "from sklearn.tree import DecisionTreeClassifier\nclf = DecisionTreeClassifier(random_state=0)",
        "clf.fit(X, y)",
        "(clf.predict(X[::10]).tolist(), clf.get_depth())",
        ["clf"],
    ),
    (
        "grid.fit",
        IRIS + "from sklearn.model_selection import GridSearchCV\nfrom sklearn.tree import DecisionTreeClassifier\n"
        "grid = GridSearchCV(DecisionTreeClassifier(random_state=0), {'max_depth': [1, 2, 3]}, cv=3)",
        "grid.fit(X, y);",
        "grid.best_params_",
        ["grid"],
    ),
    ("dict item", "d = {'a': 1}", "d['b'] = 2", "d", ["d"]),
    ("list append", "xs = [1, 2]", "xs.append(5)", "xs", ["xs"]),
    (
        "df.drop inplace",
        "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2], 'b': [3, 4], 'c': [5, 6]})",
        "df.drop(columns=['b'], inplace=True)",
        "df.to_dict('list')",
        ["df"],
    ),
    (
        # A generator object travels with its state and comes back advanced (the global np.random and
        # random generators' state travels too: SEEDED below).
        "RandomState draws",
        "import numpy as np\nrs = np.random.RandomState(42)",
        "n = rs.rand(3).tolist()",
        "(n, rs.rand(2).tolist())",
        ["rs"],
    ),
    (
        "Generator draws",
        "import numpy as np\ngen = np.random.default_rng(42)",
        "n = gen.random(3).tolist()",
        "(n, gen.random(2).tolist())",
        ["gen"],
    ),
    (
        "read only",
        "s = {f'word{i}' for i in range(50)}\nrows = [[1, 2], [3]]\nimport numpy as np\narr = np.arange(5)",
        "n = len(s) + len(rows) + int(arr.sum())",
        "n",
        [],  # a set of strings pickles in another order in another process: still unchanged, not sent back
    ),
]


#: (id, setup cell, the cell, an expression that must be the same after the plain run and the remote one):
#: the notebook seeded its global generators; the cell draws from them, and so does the next cell.
SEEDED = [
    (
        "np.random and random",
        "import numpy as np, random\nnp.random.seed(0)\nrandom.seed(1)",
        "a = np.random.rand(3).tolist()\nb = random.random()",
        "(a, b, np.random.rand(2).tolist(), random.random())",
    ),
    (
        "KFold(shuffle=True)",  # random_state=None: numpy's global generator
        IRIS + "import numpy as np\nnp.random.seed(0)\nfrom sklearn.model_selection import KFold, cross_val_score\n"
        "from sklearn.tree import DecisionTreeClassifier",
        "scores = cross_val_score(DecisionTreeClassifier(random_state=0), X, y, cv=KFold(shuffle=True)).tolist()",
        "(scores, np.random.rand())",
    ),
]


def plain(setup: str, cell: str, check: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(setup, namespace)
    exec(cell, namespace)
    return eval(check, namespace)


def remote(shell: Any, setup: str, cell: str, check: str, line: str = "") -> Any:
    shell.run_cell(setup)
    shell.run_cell(f"%%azbatch {line}\n{cell}")
    return shell.ev(check)


@pytest.mark.parametrize(("setup", "cell", "check", "changed"), [c[1:] for c in IN_PLACE], ids=[c[0] for c in IN_PLACE])
def test_in_place_changes_come_back_locally(shell, setup, cell, check, changed):
    assert remote(shell, setup, cell, check) == plain(setup, cell, check)
    run = shell.user_ns["_azbatch"]
    assert run.changed == changed
    assert set(run.outputs) - set(changed) <= {"n"}  # nothing read and unchanged travels back


@pytest.mark.parametrize(("setup", "cell", "check"), [c[1:] for c in SEEDED], ids=[c[0] for c in SEEDED])
def test_seeded_global_generators_carry_through_locally(shell, setup, cell, check):
    assert remote(shell, setup, cell, check) == plain(setup, cell, check)


def test_a_cell_that_draws_nothing_leaves_the_global_generators_alone(shell):
    """Waiting for the run draws nothing from the notebook's generators: the polls' jitter has a generator of
    its own (a public notebook seeds `random` in its first cell, its next cells' numbers must not depend on
    how many polls a remote cell took)."""
    setup = "import numpy as np, random\nnp.random.seed(0)\nrandom.seed(1)"
    cell = "import time\ntime.sleep(0.6)\nx = 1"
    check = "(np.random.rand(2).tolist(), random.random())"
    assert remote(shell, setup, cell, check) == plain(setup, cell, check)
    assert shell.user_ns["_azbatch"].random_state == ""  # nothing came back for them: the cell drew nothing


def test_a_sweeps_tasks_draw_apart(shell):
    """The notebook's seed goes to single cells only: a sweep whose tasks all drew the same would be no sweep."""
    shell.run_cell("import numpy as np\nnp.random.seed(0)")
    shell.run_cell("%%azbatch --backend local --sweep k=1,2,3\nv = float(np.random.rand())")
    assert len(set(shell.user_ns["_azbatch"].results["v"])) == 3


def test_a_global_generator_other_than_mt19937_stays_here_and_the_cell_runs(shell):
    """np.random.set_bit_generator(PCG64()): numpy gives its state as a dict, which does not travel; the
    cell still runs, from a fresh generator (as a sweep's task does)."""
    shell.run_cell("import numpy as np\nnp.random.set_bit_generator(np.random.PCG64(1))")
    try:
        shell.run_cell("%%azbatch --backend local\nv = float(np.random.rand())")
        assert 0 <= shell.user_ns["v"] < 1
    finally:
        shell.run_cell("np.random.set_bit_generator(np.random.MT19937())")


PICKLE_A_SET = (
    "import cloudpickle, sys\nsys.stdout.buffer.write(cloudpickle.dumps({f'word{i}' for i in range(50)}, protocol=5))"
)
COMPARE = (
    "import cloudpickle, hashlib, sys\n"
    "from batchmagic.runner.changes import changed_in_place\n"
    "data = sys.stdin.buffer.read()\n"
    "value = cloudpickle.loads(data)\n"
    "differs = hashlib.sha256(cloudpickle.dumps(value, protocol=5)).hexdigest() != hashlib.sha256(data).hexdigest()\n"
    "same = changed_in_place({'s': value}, {'s': hashlib.sha256(data).hexdigest()}, lambda name: data)\n"
    "value.add('new')\n"
    "grew = changed_in_place({'s': value}, {'s': hashlib.sha256(data).hexdigest()}, lambda name: data)\n"
    "print(differs, same == ({}, {}), list(grew[0]))"
)


def test_a_pickle_that_differs_without_a_change_is_no_change():
    """A set of strings pickled in the kernel (one hash seed) and again in the runner (another) differs
    byte for byte; the runner's second look finds it unchanged. A real change still counts."""
    env = {**os.environ, "PYTHONHASHSEED": "1"}
    data = subprocess.run([sys.executable, "-c", PICKLE_A_SET], env=env, capture_output=True, check=True).stdout
    env["PYTHONHASHSEED"] = "2"
    out = subprocess.run([sys.executable, "-c", COMPARE], input=data, env=env, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["True", "True", "['s']"]


def test_alias_keeps_the_old_object_and_the_run_says_so(shell, capsys):
    shell.run_cell("a = b = []\nkeep = a")
    shell.run_cell("%%azbatch\na.append(1)")
    assert shell.user_ns["a"] == [1]
    assert shell.user_ns["b"] == [] and shell.user_ns["keep"] == []  # in the notebook both would be [1]
    err = capsys.readouterr().err
    assert (
        "warning: `a` changed in place in the remote cell and now holds the changed copy; `b`, `keep` referred to "
        "the same object and still hold the old one (b = a to follow it)"
    ) in err


def test_two_names_of_one_object_both_changed(shell, capsys):
    shell.run_cell("a = b = {}")
    shell.run_cell("%%azbatch\na['x'] = 1\nb['y'] = 2")
    assert shell.user_ns["a"] == {"x": 1} and shell.user_ns["b"] == {"y": 2}  # shipped apart, as two copies
    assert "`a`, `b` were one object here and the remote cell changed it" in capsys.readouterr().err


#: Names a cell binds to objects that share parts, and what the plain cell leaves true of them.
SHARED = [
    (
        "subplots",
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt",
        "fig, ax = plt.subplots()\nax.plot([1, 2])",
        "(ax.figure is fig, fig.axes[0] is ax)",
    ),
    ("alias", "", "a = b = [1]\nd = {'xs': a}", "(a is b, d['xs'] is a)"),
    (
        "best estimator",
        IRIS + "from sklearn.model_selection import GridSearchCV\nfrom sklearn.tree import DecisionTreeClassifier",
        "grid = GridSearchCV(DecisionTreeClassifier(random_state=0), {'max_depth': [1, 2]}, cv=3).fit(X, y)\n"
        "best = grid.best_estimator_",
        "best is grid.best_estimator_",
    ),
]


@pytest.mark.parametrize(("setup", "cell", "check"), [c[1:] for c in SHARED], ids=[c[0] for c in SHARED])
def test_names_bound_to_shared_objects_still_share_them(shell, setup, cell, check):
    """``fig, ax = plt.subplots()`` in a remote cell: ``ax.figure is fig`` here as after the plain cell, so a
    later ``ax.set_xlabel(...)`` shows on ``fig``."""
    assert remote(shell, setup, cell, check) == plain(setup, cell, check)


def test_out_limits_what_comes_back_and_may_name_a_read_name(shell):
    shell.run_cell("d = {}\ne = []")
    shell.run_cell("%%azbatch --out d\nd['x'] = 1\ne.append(1)\nz = 3")
    assert shell.user_ns["d"] == {"x": 1} and shell.user_ns["e"] == [] and "z" not in shell.user_ns
    assert set(shell.user_ns["_azbatch"].outputs) == {"d"}


def test_modules_classes_and_functions_are_never_changed_by_use(shell):
    shell.run_cell("import math\nclass K:\n    pass\ndef f():\n    return 1\nk_before, f_before = K, f")
    shell.run_cell("%%azbatch\nK.attr = 5\nf.x = 1\nr = f() + math.floor(1.5)")
    run = shell.user_ns["_azbatch"]
    assert set(run.outputs) == {"r"} and run.changed == []
    assert shell.user_ns["K"] is shell.user_ns["k_before"] and shell.user_ns["f"] is shell.user_ns["f_before"]


def test_api_fetch_rebinds_changed_values(home):
    from batchmagic.api import Session

    session = Session()
    namespace: dict[str, Any] = {"xs": [1]}
    run = session.submit("xs.append(2)", namespace, backend="local")
    assert run.wait(timeout=30) == {"xs": [1, 2]} and namespace["xs"] == [1]  # wait() binds nothing
    run.fetch()
    assert namespace["xs"] == [1, 2]
    session.teardown()


def test_a_sweep_does_not_send_inputs_back(shell):
    shell.run_cell("xs = []")
    shell.run_cell("%%azbatch --sweep k=1,2\nxs.append(k)\ny = len(xs)")
    assert shell.user_ns["xs"] == [] and all(not out.get("xs") for out in shell.user_ns["_azbatch"].outputs)


# --- a cell that raises keeps what it did before the raise, as in the notebook ---

RAISES = "a = 1\nxs.append(5)\nraise ValueError('late')\nb = 2"
KEPT_HERE = (
    "batchmagic: the cell assigned or changed `a`, `xs` before it raised: kept here, as if the cell had run here"
)


def _raise_here_and_there(shell: Any, line: str) -> tuple[Any, Any, BaseException, BaseException]:
    """The same cell plainly and with %%azbatch in one shell: what each leaves, and what each raised."""
    shell.run_cell("xs = [1]")
    with pytest.raises(ValueError) as plain_error:
        shell.run_cell(RAISES)
    here = shell.ev("(a, xs, 'b' in dir())")
    shell.run_cell("del a\nxs = [1]")
    with pytest.raises(RemoteError) as remote_error:
        shell.run_cell(f"%%azbatch {line}\n{RAISES}")
    there = shell.ev("(a, xs, 'b' in dir())")
    return here, there, plain_error.value, remote_error.value


def test_a_cell_that_raises_keeps_what_it_did_locally(shell, capsys):
    here, there, plain_error, remote_error = _raise_here_and_there(shell, "--backend local")
    assert here == there == (1, [1, 5], False)
    assert (remote_error.ename, remote_error.evalue) == (type(plain_error).__name__, str(plain_error))
    shown = "\n".join(remote_error._render_traceback_())  # what IPython shows under the cell
    assert "raise ValueError('late')" in shown and shown.endswith(KEPT_HERE)
    run = shell.user_ns["_azbatch"]
    assert run.partial and run.changed == ["xs"] and run.status == "failed"


def test_api_a_cell_that_raises_says_what_it_kept(home):
    from batchmagic.api import Session

    session = Session()
    namespace: dict[str, Any] = {"xs": [1]}
    run = session.submit(RAISES, namespace, backend="local")
    with pytest.raises(RemoteError) as caught:
        run.wait(timeout=30)
    assert caught.value.outputs == {"a": 1, "xs": [1, 5]} and namespace == {"xs": [1]}  # wait() binds nothing
    assert caught.value.__notes__ == [
        "batchmagic: the cell assigned or changed `a`, `xs` before it raised: err.outputs holds them, "
        "run.fetch(namespace) binds them"
    ]
    with pytest.raises(RemoteError, match="late") as fetched:
        run.fetch()  # binds what the cell did, then raises its error
    assert namespace == {"xs": [1, 5], "a": 1} and fetched.value.__notes__ == [KEPT_HERE]
    session.teardown()


def test_a_background_run_that_raises_keeps_what_it_did_once_fetched(shell):
    shell.run_cell("xs = [1]")
    shell.run_cell(f"%%azbatch --backend local --no-wait --out-run bg\n{RAISES}")
    run = shell.user_ns["bg"]
    run.watch_in_background().join(timeout=60)
    assert run.partial and "a" not in shell.user_ns and shell.user_ns["xs"] == [1]  # never written by itself
    with pytest.raises(RemoteError, match="late") as caught:
        shell.run_cell("%azbatch_fetch bg")
    assert (shell.user_ns["a"], shell.user_ns["xs"]) == (1, [1, 5]) and caught.value.__notes__ == [KEPT_HERE]


#: A cell that only draws from the notebook's seeded generators, then raises: it binds no name, yet the
#: notebook's next draws are those after the cell's (as when it raises in the kernel).
DRAWS_THEN_RAISES = (
    "import numpy as np, random\nnp.random.seed(0)\nrandom.seed(1)",
    "np.random.rand(3)\nrandom.random()\nraise ValueError('drew')",
    "(np.random.rand(2).tolist(), random.random())",
)


def _draw_then_raise(shell: Any, line: str) -> tuple[Any, Any]:
    """The notebook's next draws after :data:`DRAWS_THEN_RAISES`'s cell raised plainly, and with %%azbatch."""
    setup, cell, check = DRAWS_THEN_RAISES
    shell.run_cell(setup)
    with pytest.raises(ValueError, match="drew"):
        shell.run_cell(cell)
    here = shell.ev(check)
    shell.run_cell(setup)
    with pytest.raises(RemoteError, match="drew") as caught:
        shell.run_cell(f"%%azbatch {line}\n{cell}")
    assert not getattr(caught.value, "__notes__", None)  # no name was kept: nothing to say
    return here, shell.ev(check)


def test_a_cell_that_draws_then_raises_moves_the_generators_on_locally(shell):
    here, there = _draw_then_raise(shell, "--backend local")
    assert there == here
    shell.run_cell(DRAWS_THEN_RAISES[0])
    assert here != shell.ev(DRAWS_THEN_RAISES[2])  # the draws in the cell did move them on


def test_a_timeout_keeps_nothing(shell):
    shell.run_cell("xs = [1]")
    with pytest.raises(RunFailed, match="time"):
        shell.run_cell("%%azbatch --backend local --timeout 3s\na = 1\nxs.append(5)\nimport time\ntime.sleep(60)")
    assert "a" not in shell.user_ns and shell.user_ns["xs"] == [1] and not shell.user_ns["_azbatch"].partial


def test_a_sweep_task_that_raises_keeps_nothing(shell):
    shell.run_cell("xs = []")
    shell.run_cell("%%azbatch --backend local --sweep k=1,2\ny = k\nassert k == 1, 'two'")
    run = shell.user_ns["_azbatch"]
    assert (
        list(run.results["state"]) == ["succeeded", "failed"] and run.results["error"].iloc[1] == "AssertionError: two"
    )
    assert run.outputs[1] == {} and not run.partial and "y" not in shell.user_ns


# --- through the Batch emulator and Azurite ---


@pytest.fixture
def azure_env(monkeypatch, home, tmp_path: Path, azurite: RunningAzurite) -> Any:
    with start_emulator(tmp_path / "batch", allocation_delay=0.1) as emu:
        use_azure(monkeypatch, emu, azurite, prefix="sem")
        yield emu


@pytest.mark.parametrize(("setup", "cell", "check", "changed"), [c[1:] for c in IN_PLACE], ids=[c[0] for c in IN_PLACE])
def test_in_place_changes_come_back_on_azure(azure_env: RunningEmulator, shell, setup, cell, check, changed):
    assert remote(shell, setup, cell, check, "--backend azure") == plain(setup, cell, check)
    run = shell.user_ns["_azbatch"]
    assert run.backend.name == "azure" and run.changed == changed


@pytest.mark.parametrize(("setup", "cell", "check"), [c[1:] for c in SEEDED], ids=[c[0] for c in SEEDED])
def test_seeded_global_generators_carry_through_on_azure(azure_env: RunningEmulator, shell, setup, cell, check):
    assert remote(shell, setup, cell, check, "--backend azure") == plain(setup, cell, check)


def test_a_cell_that_raises_keeps_what_it_did_on_azure(azure_env: RunningEmulator, shell):
    here, there, plain_error, remote_error = _raise_here_and_there(shell, "--backend azure")
    assert here == there == (1, [1, 5], False)
    assert (remote_error.ename, remote_error.evalue) == ("ValueError", "late") and remote_error.__notes__ == [KEPT_HERE]
    assert shell.user_ns["_azbatch"].backend.name == "azure"


def test_a_cell_that_draws_then_raises_moves_the_generators_on_on_azure(azure_env: RunningEmulator, shell):
    here, there = _draw_then_raise(shell, "--backend azure")
    assert there == here and shell.user_ns["_azbatch"].backend.name == "azure"


# --- on a real kernel: the same notebook run plainly and with %%azbatch ---


def _notebook(cells: list[str], work: Path) -> list[str]:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    return [
        "".join(o.get("text", "") for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout")
        for cell in nb.cells
    ]


def test_in_place_changes_on_a_real_kernel(home: Path, tmp_path: Path) -> None:
    cases = [c[1:4] for c in IN_PLACE] + [c[1:4] for c in SEEDED]  # SEEDED: the kernel's own generators
    checks = "print(json.dumps([" + ", ".join(f"repr({check})" for _, _, check in cases) + "]))"
    plain_cells, remote_cells = ["import json"], ["import json", "%load_ext batchmagic"]
    for setup, cell, _ in cases:
        plain_cells += [setup, cell]
        remote_cells += [setup, f"%%azbatch --backend local\n{cell}"]
    work = tmp_path / "work"
    work.mkdir()
    expected = json.loads(_notebook([*plain_cells, checks], work)[-1])
    assert json.loads(_notebook([*remote_cells, checks], work)[-1]) == expected


def test_a_teaching_cell_on_a_real_kernel_on_azure(azure_env: RunningEmulator, tmp_path: Path) -> None:
    """The commonest training cell of a teaching notebook on a real kernel, through the Batch emulator and
    Azurite: a model fitted in place, a data file beside the notebook read, a result written into a
    folder beside it, and ``%time``: the notebook after it is the one a plain run leaves."""
    cell = (
        "clf.fit(X, y)\nrows = len(pd.read_csv('data/train.csv'))\n%time s = sum(range(100))\n"
        "with open('results/summary.txt', 'w') as f:\n    f.write(f'{rows} rows')"
    )
    setup = (
        IRIS
        + "import pandas as pd\nfrom sklearn.tree import DecisionTreeClassifier\n"
        + "clf = DecisionTreeClassifier(random_state=0)"
    )
    check = (
        "import json\nprint(json.dumps([clf.predict(X[::10]).tolist(), rows, s, open('results/summary.txt').read()]))"
    )
    outputs = []
    for name, cells in (
        ("plain", [setup, cell, check]),
        ("remote", ["%load_ext batchmagic", setup, f"%%azbatch --backend azure\n{cell}", check]),
    ):
        work = tmp_path / name
        (work / "data").mkdir(parents=True)
        (work / "results").mkdir()
        (work / "data" / "train.csv").write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(30)))
        outputs.append(_notebook(cells, work))
    plain_out, remote_out = outputs
    assert (
        json.loads(remote_out[-1]) == json.loads(plain_out[-1]) == [json.loads(plain_out[-1])[0], 30, 4950, "30 rows"]
    )
    assert "Wall time:" in remote_out[2], remote_out


def _raising_notebook(cells: list[str], work: Path) -> tuple[Any, dict[str, Any]]:
    """Run ``cells`` (the one before the last raises) on a real kernel: the last one's printed JSON, and
    the error the one before it showed."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    client = NotebookClient(
        nb, timeout=180, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(work)}}
    )
    client.execute()
    error = next(o for o in nb.cells[-2].outputs if o["output_type"] == "error")
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o["output_type"] == "stream")
    return json.loads(printed), error


def test_a_cell_that_raises_on_a_real_kernel(home: Path, tmp_path: Path) -> None:
    """After the cell that raises, the same names hold the same values as after the plain run, and the
    cell's ValueError shows on its own line, with the line that says what was kept."""
    work = tmp_path / "work"
    work.mkdir()
    check = "print(json.dumps([a, xs, 'b' in dir()]))"
    here, plain_error = _raising_notebook(["import json", "xs = [1]", RAISES, check], work)
    there, remote_error = _raising_notebook(
        ["import json", "%load_ext batchmagic", "xs = [1]", f"%%azbatch --backend local\n{RAISES}", check], work
    )
    assert there == here == [1, [1, 5], False]
    assert (plain_error["ename"], plain_error["evalue"]) == ("ValueError", "late")
    shown = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(remote_error["traceback"]))
    assert "raise ValueError('late')" in shown and "ValueError: late" in shown and shown.endswith(KEPT_HERE)


# --- IPython syntax ---

#: (id, the cell, names whose values must match the plain run, what its output must show)
IPYTHON = [
    ("%time", "%time s = sum(xs)\nprint('sum', s)", ["s"], ["Wall time:", "sum 4950"]),
    ("out = !cmd", "out = !echo hello; echo there\nprint(len(out))", ["out"], ["2"]),
    ("%%time", "%%time\nx = len(xs)\nprint('len', x)", ["x"], ["Wall time:", "len 100"]),
    ("!cmd", "!echo from-a-shell", [], ["from-a-shell"]),
    ("%timeit", "%timeit -n 3 -r 1 sum(xs)", [], ["per loop (mean"]),
    ("%time in place", "%time d['k'] = len(xs)", ["d"], ["Wall time:"]),
]


def _normalized(text: str) -> str:
    return re.sub(r"[0-9.]+(?:e[+-]?\d+)? ?(ns|µs|μs|us|ms|s)\b", "T", text)


def _run_ipython_case(shell: Any, capfd: Any, cell: str, names: list[str], line: str) -> tuple[list[Any], str]:
    shell.run_cell("xs = list(range(100))\nd = {}")
    capfd.readouterr()
    shell.run_cell(f"%%azbatch {line}\n{cell}" if line else cell)
    out = capfd.readouterr().out
    return [list(v) if isinstance(v, list) else v for v in (shell.user_ns[n] for n in names)], out


@pytest.mark.parametrize(("cell", "names", "shown"), [c[1:] for c in IPYTHON], ids=[c[0] for c in IPYTHON])
def test_ipython_syntax_runs_remotely_as_here(shell, capfd, cell, names, shown):
    here, plain_out = _run_ipython_case(shell, capfd, cell, names, "")
    there, remote_out = _run_ipython_case(shell, capfd, cell, names, "--backend local")
    assert there == here
    for text in shown:
        assert text in plain_out and text in remote_out, (plain_out, remote_out)
    assert _normalized(plain_out).split() == _normalized(remote_out).split()[: len(_normalized(plain_out).split())]


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("x = 1\n%load_ext autoreload", "line 2: %load_ext acts on this kernel and means nothing in the remote cell"),
        ("%config AzBatch.vm_size = 'x'", "line 1: %config acts on this kernel"),
        ("%matplotlib inline\nx = 1", "%matplotlib acts on this kernel .* remote figures show inline anyway"),
        ("%pip install tabulate", "%pip acts on this kernel .* give --pip PKG on the %%azbatch line"),
        ("%azbatch_status", "line 1: %azbatch_status cannot run inside a remote cell"),
        ("x?", "%pinfo acts on this kernel"),
    ],
)
def test_magics_that_mean_nothing_remotely_are_one_line(shell, home, cell, message):
    with pytest.raises(UsageError, match=message) as info:
        shell.run_cell(f"%%azbatch\n{cell}")
    assert "\n" not in str(info.value) and "syntax error" not in str(info.value)
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_analysis_sees_into_the_code_magics_run():
    from batchmagic.package.capture import check_cell

    assert (check_cell("%time s = sum(xs)").inputs, check_cell("%time s = sum(xs)").bound) == (["sum", "xs"], ["s"])
    timed = check_cell("%timeit -n 3 -r 1 y = f(a)")
    assert sorted(timed.inputs) == ["a", "f"] and timed.bound == []  # timeit binds nothing in the notebook
    assert check_cell("res = %timeit -o f(a)").bound == ["res"]
    captured = check_cell("%%capture cap\nprint(q)\nw = 1")
    assert "q" in captured.inputs and captured.bound == ["w", "cap"]
    assert check_cell("%%time\nx = a + 1").inputs == ["a"]
    assert check_cell("x = 1  # why?").ipython is False


def test_ipython_syntax_on_azure(azure_env: RunningEmulator, shell, capfd):
    for _, cell, names, shown in IPYTHON[:3]:
        here, _ = _run_ipython_case(shell, capfd, cell, names, "")
        there, remote_out = _run_ipython_case(shell, capfd, cell, names, "--backend azure")
        assert there == here and all(text in remote_out for text in shown), remote_out
    assert shell.user_ns["_azbatch"].backend.name == "azure"


def test_ipython_syntax_on_a_real_kernel(home: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    cell = "%time s = sum(xs)\nout = !echo hi\n!echo from-a-shell"
    check = "print(s, list(out))"
    plain_out = _notebook(["xs = list(range(100))", cell, check], work)
    remote_out = _notebook(
        ["%load_ext batchmagic", "xs = list(range(100))", f"%%azbatch --backend local\n{cell}", check], work
    )
    assert remote_out[-1] == plain_out[-1] == "4950 ['hi']\n"
    for text in ("Wall time:", "from-a-shell"):
        assert text in plain_out[1] and text in remote_out[2], (plain_out, remote_out)


# --- quiet by default ---


class _NotFound(http.server.BaseHTTPRequestHandler):
    """A registry that has nothing: 404 to every request, keeping the connection open (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


def test_image_check_once_per_image_and_kernel_and_no_unclosed_socket(azure_env, shell, monkeypatch, capfd):
    """A configured image its registry does not have: said once for two runs, and the registry client's
    pooled connection is closed (no ResourceWarning when it is collected)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        image = f"127.0.0.1:{server.server_address[1]}/batchmagic/train:env-test"
        monkeypatch.setenv("BATCHMAGIC_IMAGE", image)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for k in range(2):
                shell.run_cell(f"%%azbatch --backend azure\ny = {k}")
            gc.collect()
    finally:
        server.shutdown()
        server.server_close()
    err = capfd.readouterr().err
    assert err.count(f"warning: {image} is not in its registry") == 1, err
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert shell.user_ns["y"] == 1


def test_no_docker_engine_to_check_against_says_nothing(azure_env, shell, monkeypatch, capfd):
    monkeypatch.setenv("BATCHMAGIC_IMAGE", "batchmagic/train:env-test")  # no registry: only an engine could tell
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    shell.run_cell("%%azbatch --backend azure\ny = 1")
    assert shell.user_ns["y"] == 1
    assert "warning" not in capfd.readouterr().err


def test_cost_lives_in_the_panel_and_a_known_rate_shows_from_the_first_tick(azure_env, shell, monkeypatch, capfd):
    shell.run_cell("%%azbatch --backend azure --vm Standard_D2s_v3\ny = 1")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[azbatch]")]
    assert "cost unknown: the Batch account's region is unknown (set AzBatch.region)" in lines[0]
    assert not [line for line in err.splitlines() if line.startswith("warning") and "cost" in line], err
    shell.run_cell("%config AzBatch.region = 'eastus'")
    shell.run_cell("%%azbatch --backend azure --vm Standard_D2s_v3\ny = 2")
    first = next(line for line in capfd.readouterr().err.splitlines() if line.startswith("[azbatch]"))
    assert re.search(r"cost \$0\.\d+/h \(1 asked\) · \$0\.00 so far", first) and "$0.00/h" not in first, first


def test_a_run_that_never_starts_leaves_its_error_and_no_empty_panel(home: Path, tmp_path: Path) -> None:
    """On a real kernel, where the panel is a widget: a value that cannot be pickled is one UsageError, and
    the panel's display is emptied (no widget left in the saved cell)."""
    work = tmp_path / "work"
    work.mkdir()
    cells = ["%load_ext batchmagic", "import threading\nlock = threading.Lock()", "%%azbatch --backend local\nx = lock"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    client.allow_errors = True
    client.execute()
    outputs = nb.cells[2].outputs
    stderr = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    (line,) = stderr.splitlines()  # IPython shows a UsageError as one line, no traceback
    assert line.startswith("UsageError: cannot ship `lock` (_thread.lock): it cannot be pickled"), outputs
    shown = [o for o in outputs if o["output_type"] == "display_data"]
    assert all("application/vnd.jupyter.widget-view+json" not in o["data"] for o in shown), shown
    assert all(not o["data"].get("text/plain", "").strip() for o in shown), shown


# --- plot settings and widgets ---

PLOT_SETUP = (
    "import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\n"
    "plt.style.use('ggplot')\nplt.rc('font', size=14)\nmatplotlib.rcParams['figure.dpi'] = 150"
)
PLOT_CELL = (
    "import matplotlib as mpl\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
    "seen = {k: mpl.rcParams[k] for k in ('font.size', 'figure.dpi', 'axes.facecolor', 'axes.prop_cycle')}\n"
    "size = (float(fig.get_dpi()), [float(x) for x in fig.get_size_inches()])\nax.plot([1, 2])"
)


@pytest.fixture
def notebook_rc() -> Any:
    """The tests' own matplotlib settings are put back afterwards (the setup cell changes this process's)."""
    import matplotlib

    saved = dict(matplotlib.rcParams)
    yield
    matplotlib.rcParams.update(saved)


def _plots_here_and_there(shell: Any, line: str) -> tuple[Any, Any]:
    shell.run_cell(PLOT_SETUP)
    namespace: dict[str, Any] = {}
    exec(PLOT_CELL, namespace)
    here = (namespace["seen"], namespace["size"])
    shell.run_cell(f"%%azbatch {line}\n{PLOT_CELL}")
    return here, (shell.user_ns["seen"], shell.user_ns["size"])


def test_plot_settings_travel(shell, notebook_rc):
    here, there = _plots_here_and_there(shell, "--backend local")
    assert there == here and here[0]["font.size"] == 14 and here[1][0] == 150  # ggplot, font 14, dpi 150
    (figure,) = [d for d in shell.user_ns["_azbatch"].displays if "image/png" in d["data"]]
    png = base64.b64decode(figure["data"]["image/png"])
    assert int.from_bytes(png[16:20], "big") > 640  # drawn at 150 dpi, not the default 100


def test_retina_figures_come_back_as_retina(shell, notebook_rc):
    # What `%config InlineBackend.figure_formats = ['retina']` sets in a kernel whose inline backend is on.
    shell.run_cell(
        "from matplotlib_inline.backend_inline import InlineBackend\ncfg = InlineBackend.instance(parent=get_ipython())"
    )
    shell.run_cell("cfg.figure_formats = {'retina'}")
    try:
        shell.run_cell("%%azbatch --backend local\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    finally:
        shell.run_cell("cfg.figure_formats = {'png'}")
    (figure,) = [d for d in shell.user_ns["_azbatch"].displays if "image/png" in d["data"]]
    png = base64.b64decode(figure["data"]["image/png"])
    width = int.from_bytes(png[16:20], "big")
    assert figure["metadata"]["image/png"]["width"] == width // 2  # twice the pixels, shown at half size


def test_plot_settings_travel_on_azure(azure_env, shell, notebook_rc):
    here, there = _plots_here_and_there(shell, "--backend azure")
    assert there == here


def test_a_remote_widget_says_it_cannot_stay_live(shell, capfd):
    shell.run_cell("def f(x):\n    print('f of', x)")
    capfd.readouterr()
    shell.run_cell("%%azbatch --backend local\nimport ipywidgets\nw = ipywidgets.interact(f, x=5)")
    out, err = capfd.readouterr()
    assert "f of 5" in out and "\x1b[2K" not in out + err
    assert err.count("widgets cannot stay live after the remote cell ends") == 1, err
    assert shell.user_ns["w"](3) is None  # f came back, without its dead widget
    assert all("application/vnd.jupyter.widget-view+json" not in d["data"] for d in shell.user_ns["_azbatch"].displays)


BLOCK_IPYTHON = """
import importlib.abc, sys
class _NoIPython(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "IPython" or name.startswith("IPython."):
            raise ImportError("no IPython in this image")
sys.meta_path.insert(0, _NoIPython())
"""


def test_ipython_syntax_where_ipython_is_missing_is_one_line():
    """A runner whose environment has no IPython (a prebuilt image without it): one line that says what to
    do, and the outcome carries no runner traceback under it."""
    script = BLOCK_IPYTHON + (
        "from batchmagic.runner.ipyshell import NoIPythonError, ipython_cell\n"
        "from batchmagic.runner.main import _describe\n"
        "try:\n"
        "    ipython_cell('%time x = 1', {})\n"
        "except NoIPythonError as err:\n"
        "    print(''.join(_describe(err, None, cell_only=False).traceback), end='')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out == (
        "batchmagic.runner.ipyshell.NoIPythonError: the cell uses IPython syntax (%magics, !commands) but IPython "
        "is not installed where it runs: add --pip ipython, or write the cell in plain Python\n"
    )


def test_plot_settings_and_widgets_on_a_real_kernel(home: Path, tmp_path: Path) -> None:
    """In a kernel whose inline backend is on: the rcParams the remote cell sees and its figure's dpi and size
    are those of the plain run; a remote interact prints its output, one line about widgets, no escape codes."""
    work = tmp_path / "work"
    work.mkdir()
    setup = (
        "import matplotlib.pyplot as plt\nplt.style.use('ggplot')\nplt.rc('font', size=14)\n"
        "plt.rcParams['figure.dpi'] = 120"
    )
    check = "import json\nprint(json.dumps([repr(seen), size]))"
    plain = _notebook([setup, PLOT_CELL, check], work)
    remote = _notebook(["%load_ext batchmagic", setup, f"%%azbatch --backend local\n{PLOT_CELL}", check], work)
    assert remote[-1] == plain[-1] and "14" in plain[-1] and "120" in plain[-1]
    widget = _notebook(
        [
            "%load_ext batchmagic",
            "def f(x):\n    print('f of', x)",
            "%%azbatch --backend local\nimport ipywidgets\nw = ipywidgets.interact(f, x=5)",
        ],
        work,
    )
    assert "f of 5" in widget[-1] and "\x1b[2K" not in widget[-1]


def test_a_remote_widget_on_azure(azure_env, shell, capfd):
    shell.run_cell("def f(x):\n    print('f of', x)")
    capfd.readouterr()
    shell.run_cell("%%azbatch --backend azure\nimport ipywidgets\nw = ipywidgets.interact(f, x=5)")
    out, err = capfd.readouterr()
    assert "f of 5" in out and "\x1b[2K" not in out + err
    assert err.count("widgets cannot stay live after the remote cell ends") == 1, err


# --- the last line's value: the cell's Out, as here ---

#: (id, setup cell, the cell ending on an expression, an expression over ``_`` that must equal the plain run's)
LAST_VALUE = [
    ("an expression", "xs = [1, 2, 3]", "total = sum(xs)\ntotal * 2", "_"),
    ("a name the cell binds", "import pandas as pd", "df = pd.DataFrame({'a': [1, 2]})\ndf", "(_ is df, _.shape)"),
    (
        "fit returns the model",
        IRIS + "from sklearn.tree import DecisionTreeClassifier\nclf = DecisionTreeClassifier(random_state=0)",
        "clf.fit(X, y)",
        "(_ is clf, clf.get_depth())",
    ),
    ("a semicolon shows nothing", "x = 1", "41;\nx = 2", "(_, x)"),
    # Shown, not changed: the notebook's own object is the Out (nothing travels back for it).
    ("an input left alone", "xs = [1, 2, 3]", "n = len(xs)\nxs", "(_ is xs, _, n)"),
]


def _last_value_plain(shell: Any, setup: str, cell: str, check: str) -> Any:
    shell.run_cell(setup)
    shell.run_cell("'before'")  # _ holds this until a cell has a value of its own
    shell.run_cell(cell)
    return shell.ev(check)


def _last_value_remote(shell: Any, setup: str, cell: str, check: str, line: str) -> Any:
    shell.run_cell(setup)
    shell.run_cell("'before'")
    shell.run_cell(f"%%azbatch {line}\n{cell}")
    return shell.ev(check)


@pytest.mark.parametrize(("setup", "cell", "check"), [c[1:] for c in LAST_VALUE], ids=[c[0] for c in LAST_VALUE])
def test_the_last_lines_value_is_the_cells_out_locally(shell, capfd, setup, cell, check):
    here = _last_value_plain(shell, setup, cell, check)
    out_here = capfd.readouterr().out
    there = _last_value_remote(shell, setup, cell, check, "--backend local")
    out_there = capfd.readouterr().out
    assert there == here
    # Shown once, as the cell's Out (the prompt's number aside), not as a display before it as well.
    outs = [re.sub(r"Out\[\d+\]", "Out[n]", line) for line in out_here.splitlines() if line.startswith("Out[")]
    assert [re.sub(r"Out\[\d+\]", "Out[n]", line) for line in out_there.splitlines() if "Out[" in line] == outs


def test_an_input_left_alone_is_not_sent_back(shell):
    shell.run_cell("import numpy as np\narr = np.zeros(1_000_000)")
    shell.run_cell("%%azbatch --backend local\ntotal = arr.sum()\narr")
    run = shell.user_ns["_azbatch"]
    assert run.value_name == "arr" and "arr" not in run.outputs and shell.ev("_ is arr")


def test_a_value_changed_but_left_out_by_out_comes_as_a_copy(shell):
    """With --out the notebook's ``xs`` stays as it was, so the Out is the cell's changed list, not it."""
    shell.run_cell("xs = [1, 2, 3]")
    shell.run_cell("%%azbatch --backend local --out n\nn = 1\nxs.append(4)\nxs")
    assert shell.ev("(_, xs, n)") == ([1, 2, 3, 4], [1, 2, 3], 1)


def test_a_value_that_cannot_travel_is_still_shown(shell, capfd):
    """A lock cannot be pickled: it is shown as the cell displayed it, and ``_`` keeps what it held."""
    shell.run_cell("'before'")
    capfd.readouterr()
    shell.run_cell("%%azbatch --backend local\nimport threading\nthreading.Lock()")
    assert "unlocked _thread.lock object" in capfd.readouterr().out
    assert shell.user_ns["_"] == "before" and shell.user_ns["_azbatch"].value is None


def test_api_run_value(home):
    from batchmagic.api import Session

    run = Session().submit("n = 20\nn + 1", {}, backend="local")
    assert run.wait() == {"n": 20} and run.value == 21


def test_the_last_lines_value_is_the_cells_out_on_azure(azure_env: RunningEmulator, shell, capfd):
    setup, cell, check = LAST_VALUE[1][1:]
    assert _last_value_remote(shell, setup, cell, check, "--backend azure") == _last_value_plain(
        shell, setup, cell, check
    )
    assert shell.user_ns["_azbatch"].backend.name == "azure"


def test_the_last_lines_value_on_a_real_kernel(home: Path, tmp_path: Path) -> None:
    """The cell's output is an execute_result with its execution count, as the plain cell's, and ``_`` and
    ``Out[n]`` hold the value in the next cell."""
    work = tmp_path / "work"
    work.mkdir()
    results = []
    for head, magic in (([], ""), (["%load_ext batchmagic"], "%%azbatch --backend local\n")):
        cells = [
            *head,
            "import pandas as pd",
            f"{magic}df = pd.DataFrame({{'a': [1, 2]}})\ndf.a.sum() * 10",
            "print(_, Out[max(Out)])",
        ]
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
        NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
        shown = [(o["output_type"], o["data"]["text/plain"]) for o in nb.cells[-2].outputs if "data" in o]
        counted = [o.get("execution_count") for o in nb.cells[-2].outputs if o["output_type"] == "execute_result"]
        printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o["output_type"] == "stream")
        results.append((shown[-1], counted == [nb.cells[-2].execution_count], printed))
    assert results[1] == results[0] == (("execute_result", "np.int64(30)"), True, "30 30\n")
