"""Sweeps and background runs: on the local backend and through the Batch emulator + Azurite."""

from __future__ import annotations

import pandas as pd
import pytest
from IPython.core.error import UsageError

from batchmagic.api import Session
from batchmagic.errors import ConfigError
from batchmagic.run.sweep import parse_grid, parse_values, rows_from, task_ids_for
from tests.support.emulator import wait_for
from tests.support.settings import azure_session_fixture

GRID_CELL = "import time\ntime.sleep(0.4)\nscore = 10 / (lr * 10 + depth - 20)\nlabel = f'{lr}-{depth}'\nbig = [0] * 3"


def test_parse_grid_is_the_product_with_literals():
    grid = parse_grid(["lr=0.1,0.01", "depth=3,5", "name=adam, sgd", "flag=True"])
    assert len(grid) == 8
    assert grid[0] == {"lr": 0.1, "depth": 3, "name": "adam", "flag": True}
    assert grid[-1] == {"lr": 0.01, "depth": 5, "name": "sgd", "flag": True}


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["lr"], "is not name=v1,v2"),
        (["1x=2"], "is not name=v1,v2"),
        (["lr="], "has no values"),
        (["lr=1", "lr=2"], "names 'lr' twice"),
    ],
)
def test_parse_grid_refuses_malformed_tokens(tokens, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(tokens)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("1,2", [1, 2]),
        ("0.1, 1e-3, -2", [0.1, 1e-3, -2]),
        ("'a,b', \"c\"", ["a,b", "c"]),
        ("rf, svm, my-model", ["rf", "svm", "my-model"]),
        ("range(3)", [0, 1, 2]),
        ("range(0, 20, 5), 100", [0, 5, 10, 15, 100]),
        ("True, None, (1, 2)", [True, None, (1, 2)]),
    ],
)
def test_sweep_values_are_python_literals_ranges_or_words(text, values):
    assert parse_values("k", text) == values


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0..20", "'0..20' is not a value \\(a range is written range\\(start, stop\\)\\); give Python literals"),
        ("1-5", "a range is written"),
        ("a+b", "'a\\+b' is not a value; give Python literals separated by commas .* a range .* or bare words"),
        ("range(1.5)", "range takes 1 to 3 whole numbers"),
        ("range(x)", "range takes 1 to 3 whole numbers"),
        ("__import__('os').system('true')", "is not a value"),
        ("1#2", "is not a value"),
    ],
)
def test_sweep_values_that_are_not_values_are_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_values("k", text)
    assert "\n" not in str(info.value)


def test_a_grid_too_big_is_refused_before_it_is_built():
    # The limit is Settings.max_tasks (BATCHMAGIC_MAX_TASKS), handed down by the magic and submit.
    with pytest.raises(ConfigError, match="range\\(10000\\) has 10,000 values, over the limit of 100"):
        parse_grid(["a=range(10000)"], limit=100)
    with pytest.raises(ConfigError, match="the sweep has 10,000 tasks, over the limit of 100"):
        parse_grid(["a=range(100)", "b=range(100)"], limit=100)
    with pytest.raises(ConfigError, match="the sweep has 100,000,000 tasks, over the limit of 10,000"):
        parse_grid(["a=range(10000)", "b=range(10000)"])  # the default


@pytest.mark.parametrize("flag", ["--sweep k=1,2", "--sweep 'k=1,2'", '--sweep k="1,2"', '--sweep "k=1, 2"'])
def test_sweep_flag_quoting_as_users_write_it(shell, flag):
    """The magic line is split as a shell splits it: the same two tasks, k an int, however it is quoted."""
    shell.run_cell(f'%%azbatch --name "my run" {flag}\ny = k * 2')
    results = shell.last_execution_result.result
    assert list(results.k) == [1, 2] and list(results.y) == [2, 4]
    assert shell.user_ns["_azbatch"].name == "my run"


def test_sweep_range_and_quoted_strings_through_the_magic(shell):
    shell.run_cell("%%azbatch --sweep k=range(3) --sweep \"s='a,b','c'\" --slots-per-node 3\ny = f'{s}{k}'")
    results = shell.last_execution_result.result
    assert sorted(results.y) == sorted(["a,b0", "a,b1", "a,b2", "c0", "c1", "c2"])


def test_submit_reads_sweep_strings_as_the_magic_does(home):
    session = Session()
    run = session.submit("y = k * 2", {}, backend="local", sweep=tuple(parse_grid(["k=range(2)"])))
    assert list(run.wait(timeout=30).y) == [0, 2]
    session.teardown()
    from batchmagic.api import _sweep_rows

    assert _sweep_rows("k='1,2'") == ({"k": "1,2"},)
    assert _sweep_rows(["a=1,2", "b=x"]) == ({"a": 1, "b": "x"}, {"a": 2, "b": "x"})
    assert _sweep_rows([{"a": 1}]) == ({"a": 1},)


def test_rows_from_dataframe_and_list():
    assert rows_from("p", pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert rows_from("p", [{"a": 1}]) == [{"a": 1}]
    with pytest.raises(ConfigError, match="is a dict, not a list of dicts"):
        rows_from("p", {"a": 1})


def test_task_ids_are_deterministic():
    assert task_ids_for(3) == ["task-00000", "task-00001", "task-00002"]
    assert task_ids_for(123_456)[-1] == "task-123455"


def check_grid_results(results: pd.DataFrame) -> None:
    assert len(results) == 12
    assert list(results.columns[:2]) == ["lr", "depth"]
    failed = results[results.state == "failed"]
    assert list(zip(failed.lr, failed.depth, strict=True)) == [(2, 0)]
    assert failed.error.iloc[0] == "ZeroDivisionError: division by zero"
    ok = results[results.state == "succeeded"]
    assert (ok.score == 10 / (ok.lr * 10 + ok.depth - 20)).all()
    assert (ok.label == ok.lr.astype(str) + "-" + ok.depth.astype(str)).all()
    assert "big" not in results.columns  # not a scalar: in run.outputs only
    assert (ok.exit_code == 0).all() and (results.duration > 0.3).all()


def test_sweep_on_local_runs_in_parallel(shell, capsys):
    shell.run_cell("lr = 'notebook value'")
    shell.run_cell("%%azbatch --sweep lr=1,2,3 --sweep depth=0,1,2,3 --slots-per-node 4 --name grid\n" + GRID_CELL)
    results = shell.last_execution_result.result
    check_grid_results(results)
    run = shell.user_ns["_azbatch"]
    assert run.results is results and len(run.outputs) == 12 and run.outputs[1]["big"] == [0, 0, 0]
    assert list(run.errors) == ["task-00004"] and "ZeroDivisionError" in "".join(run.errors["task-00004"].traceback)
    assert shell.user_ns["lr"] == "notebook value" and "score" not in shell.user_ns  # never writes names
    starts, ends = results.started.sort_values(), results.ended.sort_values()
    assert starts.iloc[3] <= ends.iloc[0]  # four tasks were running at once (times are to the second)
    err = capsys.readouterr().err
    assert "grid [local" in err and "12/12 tasks, 1 failed" in err


def test_sweep_from_a_dataframe(shell):
    shell.run_cell("import pandas as pd\nparams = pd.DataFrame({'a': [1, 2, 3]})\nk = 10")
    shell.run_cell("%%azbatch --sweep-from params --slots-per-node 3\ny = a * k")
    assert list(shell.last_execution_result.result.y) == [10, 20, 30]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--sweep lr", "is not name=v1,v2"),
        ("--sweep-from nothing_here", "no such variable"),
        ("--sweep-from k", "k is a int, not a list of dicts"),
        ("--sweep a=1 --sweep-from k", "not both"),
        ("--sweep a=1,2,3 --sweep b=1,2,3,4", "over the limit of 10"),
        ("--sweep a=1 --slots-per-node 0", "--slots-per-node must be at least 1"),
        ("--sweep k=0..20", "'0..20' is not a value .*range\\(start, stop\\)"),
        ('--sweep "k=1,2', "cannot read the magic line \\(No closing quotation\\)"),
    ],
)
def test_bad_sweeps_are_one_line_and_start_nothing(shell, home, monkeypatch, line, message):
    monkeypatch.setenv("BATCHMAGIC_MAX_TASKS", "10")
    shell.run_cell("k = 3")
    with pytest.raises(UsageError, match=message) as info:
        shell.run_cell(f"%%azbatch {line}\ny = 1")
    assert "\n" not in str(info.value)
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_no_wait_returns_at_once_and_fetch_brings_names(shell, capsys):
    shell.run_cell("%%azbatch --no-wait --out-run bg --name background\nimport time\ntime.sleep(2)\nanswer = 42")
    run = shell.user_ns["bg"]
    assert shell.user_ns["_azbatch"] is run and run.status in ("queued", "running")  # returned before the end
    shell.run_cell("x = 1")  # other cells run meanwhile
    with pytest.raises(UsageError, match="still"):
        shell.run_cell("%azbatch_fetch bg")
    wait_for(lambda: run.done, timeout=20)  # the background thread finished it
    assert run.status == "done" and "answer" not in shell.user_ns  # not written by itself
    assert run.result() == {"answer": 42, "time": __import__("time")}
    capsys.readouterr()
    shell.run_cell("%azbatch_fetch bg")
    assert shell.user_ns["answer"] == 42
    assert "fetched time, answer from background" in capsys.readouterr().out


def test_api_wait_and_result_of_background_run(home):
    session = Session()
    run = session.submit("y = 2", {}, backend="local")
    run.watch_in_background()
    assert run.wait(timeout=20) == {"y": 2} and run.result() == {"y": 2}
    session.teardown()


# --- through the Batch emulator and Azurite ---


azure_session = azure_session_fixture("sweep")


def test_grid_on_the_emulator(azure_session):
    session, emu = azure_session
    grid = parse_grid(["lr=1,2,3", "depth=0,1,2,3"])
    run = session.submit(GRID_CELL, {}, backend="azure", sweep=grid, nodes=2, slots_per_node=2)
    results = run.wait(timeout=120)
    check_grid_results(results)
    assert set(results.node) == {n for n in results.node if n} and len(set(results.node)) == 2
    adds = [r for r in emu.requests() if r["method"] == "POST" and r["path"].endswith("/addtaskcollection")]
    assert len(adds) == 1 and len(adds[0]["body"]["value"]) == 12
    wait_for(lambda: not list(emu.client().list_pools()), timeout=20)


@pytest.mark.slow  # about 20 s on 2 cores: 150 real runner processes
def test_a_sweep_past_one_task_collection_on_the_emulator(azure_session):
    """A sweep past one task collection (Batch takes at most 100 tasks per addtaskcollection; the SDK sends
    the collections in parallel): every task runs a real runner. (A thousand cost four minutes of the suite
    for nothing more, and 250 another 15 s: submitting 1,000 is measured by bench/sweep_calls.py, and a tick
    over 10,000 by tests/test_polling.py.)"""
    session, emu = azure_session
    grid = [{"i": i} for i in range(150)]
    run = session.submit(
        "y = i * 2", {}, backend="azure", sweep=grid, nodes=2, slots_per_node=4, vm_size="Standard_D16s_v3"
    )
    results = run.wait(timeout=600)
    assert len(results) == 150 and (results.state == "succeeded").all()
    assert list(results.y) == [i * 2 for i in range(150)]
    adds = [r for r in emu.requests() if r["method"] == "POST" and r["path"].endswith("/addtaskcollection")]
    assert sorted(len(r["body"]["value"]) for r in adds) == [50, 100]  # the SDK sends them in parallel
    per_tick = [r for r in emu.requests() if r["method"] == "GET" and r["path"] == f"/jobs/{run.id}/tasks"]
    assert all("$select" in r["query"] for r in per_tick)
