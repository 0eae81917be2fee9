"""%%azbatch through a real InteractiveShell, on the local backend (real subprocesses)."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError

from batchmagic import RemoteError
from batchmagic.api import Run
from batchmagic.errors import RunFailed


def test_issue_example_runs_and_brings_model_back(shell, capsys):
    shell.run_cell(
        "import pandas as pd\n"
        "df = pd.DataFrame({'x': range(1000)}); alpha = 0.1\n"
        "def train(d, a): return d.x.sum() * a\n"
    )
    shell.run_cell("%%azbatch --backend local\nmodel = train(df, alpha)\nprint('trained', model)\n")
    assert shell.user_ns["model"] == pytest.approx(49950.0)
    out, err = capsys.readouterr()
    assert "trained 49950.0" in out
    assert "[azbatch]" in err and "done" in err  # the text panel in a terminal shell
    run = shell.user_ns["_azbatch"]
    assert isinstance(run, Run) and run.status == "done"
    assert run.outputs == {"model": pytest.approx(49950.0)}
    assert "trained 49950.0" in run.logs()


def test_cell_runs_in_another_process(shell):
    shell.run_cell("import os\nme = os.getpid()")
    shell.run_cell("%%azbatch\nimport os\nthere = os.getpid()")
    assert shell.user_ns["there"] != shell.user_ns["me"]


def test_default_backend_notice_once(shell, capsys):
    shell.run_cell("%%azbatch\na = 1")
    shell.run_cell("%%azbatch\nb = 2")
    err = capsys.readouterr().err
    assert err.count("AZURE_BATCH_ENDPOINT is not set") == 1
    assert shell.user_ns["a"] == 1 and shell.user_ns["b"] == 2


def test_out_limits_names_and_imports_come_back(shell):
    shell.run_cell("%%azbatch --out y\nimport math\nx = 1\ny = math.sqrt(16)")
    assert shell.user_ns["y"] == 4.0
    assert "x" not in shell.user_ns and "math" not in shell.user_ns
    shell.run_cell("%%azbatch\nimport math as m\nz = m.pi")
    assert shell.user_ns["m"].pi == shell.user_ns["z"]


def test_module_from_earlier_cell_works_remotely(shell):
    shell.run_cell("import json as js")
    shell.run_cell("%%azbatch\ntext = js.dumps({'a': 1})")
    assert shell.user_ns["text"] == '{"a": 1}'


def test_local_module_is_shipped_as_source(shell):
    Path("helpers.py").write_text("def double(x):\n    return 2 * x\n")
    shell.run_cell("import sys, os\nsys.path.insert(0, os.getcwd())\nimport helpers")
    shell.run_cell("%%azbatch\nresult = helpers.double(21)")
    assert shell.user_ns["result"] == 42


def test_remote_exception_is_remote_error_and_keeps_what_ran_before(shell):
    shell.run_cell("x = 5\ndef f(a):\n    return a / 0\n")
    with pytest.raises(RemoteError) as info:
        shell.run_cell("%%azbatch\nx = 6\ny = f(x)\n")
    err = info.value
    assert err.ename == "ZeroDivisionError"
    rendered = "\n".join(err._render_traceback_())
    assert "<azbatch-cell>" in rendered and "y = f(x)" in rendered
    assert "batchmagic/runner" not in rendered
    assert shell.user_ns["x"] == 6 and "y" not in shell.user_ns  # as in the notebook: `x = 6` ran, `y = ...` did not


def test_nonzero_exit_is_one_clear_line(shell):
    with pytest.raises(RunFailed, match="exited with code 7"):
        shell.run_cell("%%azbatch\nimport os\nos._exit(7)")


def test_timeout_kills_the_run(shell):
    with pytest.raises(RunFailed, match="timeout of 1s"):
        shell.run_cell("%%azbatch --timeout 1s\nimport time\ntime.sleep(60)")


def test_env_reaches_the_cell_and_secrets_do_not(shell, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountKey=secret")
    shell.run_cell(
        "%%azbatch --env MODE=fast --env LEVEL=3\nimport os\nmode = os.environ['MODE']\n"
        "level = os.environ['LEVEL']\nleak = os.environ.get('AZURE_STORAGE_CONNECTION_STRING')"
    )
    assert (shell.user_ns["mode"], shell.user_ns["level"], shell.user_ns["leak"]) == ("fast", "3", None)


def test_del_removes_the_name(shell):
    shell.run_cell("tmp = [1, 2]")
    shell.run_cell("%%azbatch\nkept = len(tmp)\ndel tmp")
    assert shell.user_ns["kept"] == 2 and "tmp" not in shell.user_ns


def test_undefined_name_warns_before_submit(shell, capsys):
    with pytest.raises(RemoteError, match="NameError"):
        shell.run_cell("%%azbatch\nv = nowhere + 1")
    assert "`nowhere`" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("--bogus", "x = 1", "unrecognized arguments: --bogus"),
        ("--backend moon", "x = 1", "--backend 'moon' is not one of"),
        ("", "   \n", "the cell is empty"),
        ("", "x = (", "syntax error at line 1"),
        ("--out nope", "x = 1", "--out names nope"),
        ("--timeout soon", "x = 1", "is not a duration"),
        ("--timeout 8d", "x = 1", "7-day maximum"),
        ("--env NOEQUALS", "x = 1", "is not KEY=VALUE"),
        ("", "from os.path import *", "cannot be captured reliably"),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(shell, home, line, cell, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")) as info:
        shell.run_cell(f"%%azbatch {line}\n{cell}")
    assert "\n" not in str(info.value)
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_unpicklable_variable_is_a_usage_error(shell, home):
    shell.run_cell("import threading\nlock = threading.Lock()")
    with pytest.raises(UsageError, match=r"cannot ship `lock` \(_thread.lock\)"):
        shell.run_cell("%%azbatch\nwith lock:\n    y = 1")
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_unwritable_home_is_a_usage_error(shell, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    shell.run_line_magic("config", f"AzBatch.home = '{blocker / 'sub'}'")
    with pytest.raises(UsageError, match="is not writable"):
        shell.run_cell("%%azbatch\nx = 1")


def test_config_round_trips(shell):
    shell.run_line_magic("config", "AzBatch.vm_size = 'Standard_E32_v3'")
    shell.run_line_magic("config", "AzBatch.timeout = '30m'")
    magics = shell.magics_manager.registry["AzBatch"]
    assert magics.vm_size == "Standard_E32_v3" and magics.timeout == "30m"
    shell.run_cell("%%azbatch\nq = 1")
    assert shell.user_ns["_azbatch"].vm_size == "Standard_E32_v3"
    shell.run_cell("%%azbatch --vm Standard_D4s_v3\nq = 2")
    assert shell.user_ns["_azbatch"].vm_size == "Standard_D4s_v3"
    shell.run_line_magic("config", "AzBatch.backend = 'moon'")  # IPython logs the TraitError
    assert magics.backend == "local"


def test_master_port_refuses_what_a_supervisor_cannot_bind(shell):
    # Each node's supervisor binds master_port + 1: 65535 would crash it, 5999 take Batch's 6000.
    magics = shell.magics_manager.registry["AzBatch"]
    for refused in (65535, 5999, 6000, 80):
        shell.run_line_magic("config", f"AzBatch.master_port = {refused}")  # IPython logs the TraitError
        assert magics.master_port == 6105, refused
    shell.run_line_magic("config", "AzBatch.master_port = 65534")
    assert magics.master_port == 65534


def test_backend_trait_seeded_from_env(home, monkeypatch):
    from batchmagic.notebook.magics import AzBatch

    monkeypatch.setenv("AZURE_BATCH_ENDPOINT", "https://acct.westeurope.batch.azure.com")
    assert AzBatch(shell=None).backend == "azure"
    monkeypatch.setenv("BATCHMAGIC_BACKEND", "local")
    assert AzBatch(shell=None).backend == "local"


def test_help_lists_every_flag(shell):
    doc = shell.magics_manager.magics["cell"]["azbatch"].__doc__
    for flag in ("--backend", "--vm", "--name", "--out", "--timeout", "--env"):
        assert flag in doc


def test_status_and_teardown(shell, capsys):
    shell.run_cell("%azbatch_status")
    assert "no runs" in capsys.readouterr().out
    shell.run_cell("%%azbatch --name quick\nx = 1")
    run = shell.user_ns["_azbatch"]
    slow = shell.magics_manager.registry["AzBatch"].session.submit(
        "import time\ntime.sleep(60)", {}, backend="local", name="slow"
    )
    capsys.readouterr()
    shell.run_cell("%azbatch_status")
    out = capsys.readouterr().out
    assert "quick" in out and "done" in out and "slow" in out
    shell.run_cell("%azbatch_teardown")
    out = capsys.readouterr().out
    assert "removed local process" in out and "slow" not in run.name
    assert slow.status == "cancelled"
    shell.run_cell("%azbatch_teardown")
    assert "nothing to tear down" in capsys.readouterr().out
