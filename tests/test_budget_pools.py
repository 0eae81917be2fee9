"""Budget and named pools through the emulator and Azurite: a budget that ends a sweep keeps what its
finished tasks made; a named pool deleted under a running sweep ends it in one line within two ticks; the
spend on a named pool after a cold start counts the node from the moment it is held."""

from __future__ import annotations

import json
import time

import pytest

from batchmagic.errors import RunFailed
from tests.support.azurite import azurite_fixture
from tests.support.emulator import wait_for
from tests.support.settings import azure_session_fixture

azurite = azurite_fixture()
azure_session = azure_session_fixture("budgetpools")

# $3,600 an hour is a dollar a second: a budget passes in seconds.
PRICES = json.dumps({"Standard_D2s_v3": 3600})


def test_a_budget_stop_keeps_the_results_of_finished_sweep_tasks(azure_session, monkeypatch):
    session, _emu = azure_session
    monkeypatch.setenv("BATCHMAGIC_REGION", "emulated")
    monkeypatch.setenv("BATCHMAGIC_PRICES", PRICES)
    cell = "import time\ntime.sleep(0.2 if i < 2 else 120)\ny = i * 10"
    # 15 s of the node: time enough for the two short tasks to end, even on a loaded machine (30 cost 15 s more)
    run = session.submit(cell, {}, backend="azure", sweep=[{"i": i} for i in range(4)], budget=15, name="capped",
                         slots_per_node=4)  # fmt: skip
    with pytest.raises(RunFailed) as caught:
        run.wait(timeout=120)
    line = str(caught.value)
    assert "\n" not in line and "passed its budget" in line and "finished tasks are in its results" in line, line
    table = run.results
    done = table[table["state"] == "succeeded"]
    assert {0, 10} <= set(done["y"]), table
    stopped = table[table["state"] == "failed"]
    assert len(stopped) >= 1 and all("--budget" in str(m) for m in stopped["error"]), table


def test_a_named_pool_deleted_under_a_running_sweep_ends_it_in_one_line(azure_session):
    from batchmagic import pools

    session, emu = azure_session
    pools.create_pool("doomed", vm_size="Standard_D2s_v3", max_nodes=1, idle="20m", session=session)
    run = session.submit(
        "import time\ntime.sleep(60)\ny = i", {}, backend="azure", pool="doomed", sweep=[{"i": i} for i in range(3)]
    )
    run.watch_in_background()
    wait_for(lambda: "running" in run.task_states(), timeout=90)
    emu.client().begin_delete_pool("doomed").result()
    deleted = time.monotonic()
    wait_for(lambda: run.done, timeout=60)
    took = time.monotonic() - deleted
    assert run.status == "failed" and "pool doomed was deleted under the run" in str(run.error), run.error
    assert "\n" not in str(run.error)
    assert took < 20, f"{took:.0f} s after the pool was deleted"  # two ticks (5 s apart while running), and the delete


def test_the_spend_on_a_named_pool_after_a_cold_start_counts_its_node(azure_session, monkeypatch):
    from batchmagic import pools

    session, _emu = azure_session
    monkeypatch.setenv("BATCHMAGIC_REGION", "emulated")
    monkeypatch.setenv("BATCHMAGIC_PRICES", PRICES)
    pools.create_pool("cold", vm_size="Standard_D2s_v3", max_nodes=1, idle="20m", session=session)
    run = session.submit("import time\nstarted = time.time()\ntime.sleep(15)\nended = time.time()", {},
                         backend="azure", pool="cold")  # fmt: skip
    out = run.wait(timeout=120)
    cost = run.state().cost
    assert cost is not None and cost.spent is not None
    ran = out["ended"] - out["started"]  # seconds the node was surely held, at a dollar a second
    assert cost.spent >= 0.8 * ran, f"spent ${cost.spent:.2f} for {ran:.0f} s of a held node"
    pools.delete_pool("cold", session=session)
