"""A run's cost: what it holds priced and summed (CostMeter), in the panel and its text, and --budget
ending a run on the Batch emulator with one line."""

from __future__ import annotations

import json
import re
import time

import pytest

from batchmagic.backends.azure.prices import Prices
from batchmagic.backends.base import Holding
from batchmagic.errors import ConfigError, RunFailed
from batchmagic.notebook.widget import StatusPanel, cost_html, summary
from batchmagic.run.cost import CostMeter
from batchmagic.run.state import Cost, Phase, RunState
from tests.support.emulator import wait_for
from tests.support.settings import azure_session_fixture

azure_session = azure_session_fixture("cost")


def test_the_meter_prices_billed_nodes_and_sums_the_spend_at_the_higher_rate() -> None:
    meter = CostMeter(Prices.shipped(), "eastus", "Standard_E32_v3", nodes=2)
    meter.observe(Holding("Standard_E32_v3"), 0.0)  # no node yet: the rate asked for, nothing spent
    assert meter.cost() == Cost(per_hour=pytest.approx(4.032), spent=0.0, currency="USD", nodes={"asked": 2})
    assert meter.cost().describe() == "cost $4.03/h (2 asked) · $0.00 so far"
    meter.observe(Holding("Standard_E32_v3", {"starting": 2}), 1800.0)  # came up in the last half hour
    assert meter.rate == pytest.approx(4.032) and meter.spent == pytest.approx(2.016)
    meter.observe(Holding("Standard_E32_v3", {"running": 1, "idle": 1}, {"preempted": 3}), 3600.0)
    assert meter.rate == pytest.approx(4.032) and meter.spent == pytest.approx(4.032)  # preempted: not billed
    meter.observe(None, 5400.0)  # nothing new read: the last holding goes on
    assert meter.spent == pytest.approx(6.048)
    cost = meter.cost()
    assert cost.nodes == {"running": 1, "idle": 1, "preempted": 3}
    assert cost.describe() == "cost $4.03/h (1 idle, 3 preempted, 1 running) · $6.05 so far"


def test_a_known_rate_shows_from_the_first_tick_and_an_unknown_one_says_so() -> None:
    """Before any poll: the size's price for the nodes asked for, never $0.00/h; no price: unknown at once."""
    spot = CostMeter(Prices.shipped(), "eastus", "Standard_E32_v3", low_priority=True).cost()
    dedicated = CostMeter(Prices.shipped(), "eastus", "Standard_E32_v3").cost()
    assert dedicated.per_hour == pytest.approx(2.016) and 0 < (spot.per_hour or 0) < dedicated.per_hour
    assert dedicated.describe() == "cost $2.02/h (1 asked) · $0.00 so far"
    nowhere = CostMeter(Prices.shipped(), "", "Standard_D2s_v3").cost()
    assert nowhere.describe() == "cost unknown: the Batch account's region is unknown (set AzBatch.region)"


def test_a_missing_price_is_unknown_never_zero_and_a_budget_refuses_it() -> None:
    meter = CostMeter(Prices.shipped(), "eastus", "Standard_M416s_v2", budget=5)
    meter.observe(Holding("Standard_M416s_v2", {"running": 1}), 0.0)
    meter.observe(Holding("Standard_M416s_v2", {"running": 1}), 60.0)
    cost = meter.cost()
    assert cost.per_hour is None and cost.spent is None and not meter.over_budget
    assert cost.describe() == "cost unknown: no price for Standard_M416s_v2 in eastus (set one in AzBatch.prices)"
    with pytest.raises(ConfigError, match="--budget needs a price.*Standard_M416s_v2 in eastus"):
        meter.check_budget()
    nowhere = CostMeter(Prices.shipped(), "", "Standard_D2s_v3", budget=5)
    with pytest.raises(ConfigError, match="region is unknown .*AzBatch.region"):
        nowhere.check_budget()
    CostMeter(Prices.shipped(), "eastus", "Standard_D2s_v3", budget=5).check_budget(low_priority=True)


def test_the_panel_and_its_text_show_the_cost() -> None:
    cost = Cost(per_hour=2.016, spent=0.5, nodes={"running": 1}, budget=5.0)
    state = RunState(
        run_id="r", name="r", backend="azure", vm_size="Standard_E32_v3", phase=Phase.RUNNING, phases=(),
        started=time.time(), cost=cost,
    )  # fmt: skip
    assert summary(state).endswith("[cost $2.02/h (1 running) · $0.50 so far of $5.00]")
    panel = StatusPanel()
    panel.update(state)
    assert "cost $2.02/h (1 running) · $0.50 so far of $5.00" in panel.cost.value
    unknown = RunState(
        run_id="r", name="r", backend="azure", vm_size="X", phase=Phase.RUNNING, phases=(), started=time.time(),
        cost=Cost(per_hour=None, spent=None, unknown_because="no price for X in eastus"),
    )  # fmt: skip
    assert "cost unknown: no price for X in eastus" in cost_html(unknown)
    local = RunState(run_id="r", name="r", backend="local", vm_size="", phase=Phase.RUNNING, phases=(), started=0)
    assert cost_html(local) == "" and "cost" not in summary(local)


def test_pool_ls_shows_each_pools_cost_per_hour() -> None:
    from batchmagic.backends.azure.poolspec import Pool
    from batchmagic.config import Settings
    from batchmagic.pools import pool_cost

    pool = Pool(name="warm", vm_size="standard_e32_v3", dedicated=2, low_priority=1)
    assert pool_cost(pool, Settings(region="eastus")) == "$4.44/h"  # 2 x 2.016 + 1 x 0.4032
    assert pool_cost(Pool(name="idle", vm_size="Standard_E32_v3"), Settings(region="eastus")) == "$0.00/h"
    assert (
        pool_cost(pool, Settings(region="brazilsouth")) == "cost unknown (no price for standard_e32_v3 in brazilsouth)"
    )
    assert "region is unknown" in pool_cost(pool, Settings(batch_endpoint="http://127.0.0.1:1"))


@pytest.mark.slow
def test_budget_ends_the_run_with_one_line_and_its_job(azure_session, monkeypatch) -> None:
    session, emu = azure_session
    # A price that makes the budget pass in a few seconds: $3,600 an hour is a dollar a second.
    monkeypatch.setenv("BATCHMAGIC_REGION", "emulated")
    monkeypatch.setenv("BATCHMAGIC_PRICES", json.dumps({"emulated": {"Standard_D2s_v3": 3600}}))
    with pytest.raises(ConfigError, match="--budget needs a price.*Standard_E64_v3 in emulated"):
        session.submit("x = 1", {}, backend="azure", vm_size="Standard_E64_v3", budget=1)
    assert not list(emu.client().list_jobs())  # nothing was created

    run = session.submit("import time\ntime.sleep(120)\nx = 1", {}, backend="azure", budget="$2", name="capped")
    with pytest.raises(RunFailed) as caught:
        run.wait(timeout=90)
    line = str(caught.value)
    assert "\n" not in line
    assert re.fullmatch(
        r"run capped ended: its estimated spend \$\d+\.\d\d passed its budget of \$2\.00 \(--budget\); "
        r"its job was ended \(a named pool stays\)",
        line,
    ), line
    cost = run.state().cost
    assert cost is not None and cost.spent is not None and 2 < cost.spent < 30
    job = emu.client().get_job(run.id)
    wait_for(lambda: str(getattr(emu.client().get_job(run.id).state, "value", "")) == "completed", timeout=30)
    assert job.id == run.id


def test_the_runs_record_keeps_its_cost() -> None:
    from batchmagic.notebook.record import render

    state = RunState(
        run_id="r", name="r", backend="azure", vm_size="Standard_E32_v3", phase=Phase.DONE, phases=(),
        started=time.time(), cost=Cost(per_hour=0.0, spent=0.42),
    )  # fmt: skip
    record = render(state)
    assert "cost $0.00/h · $0.42 so far" in record.html and "$0.42 so far" in record.text


@pytest.mark.slow
def test_budget_on_a_named_pool_ends_the_run_not_the_pool(azure_session, monkeypatch) -> None:
    from batchmagic import pools

    session, emu = azure_session
    monkeypatch.setenv("BATCHMAGIC_REGION", "emulated")
    monkeypatch.setenv("BATCHMAGIC_PRICES", json.dumps({"Standard_D2s_v3": 3600}))
    pools.create_pool("shared", vm_size="Standard_D2s_v3", max_nodes=1, idle="20m", session=session)
    run = session.submit("import time\ntime.sleep(120)\nx = 1", {}, backend="azure", pool="shared", budget=2)
    with pytest.raises(RunFailed, match=r"passed its budget of \$2\.00 .*a named pool stays"):
        run.wait(timeout=90)
    wait_for(lambda: str(getattr(emu.client().get_job(run.id).state, "value", "")) == "completed", timeout=30)
    pool = emu.client().get_pool("shared")
    assert str(getattr(pool.state, "value", pool.state)) == "active"
    pools.delete_pool("shared", session=session)


def test_cost_traits_round_trip_into_the_settings(shell, monkeypatch) -> None:
    monkeypatch.delenv("BATCHMAGIC_PRICES", raising=False)
    magics = shell.magics_manager.registry["AzBatch"]
    shell.run_line_magic("config", "AzBatch.prices = {'Standard_E32_v3': 1.5}")
    shell.run_line_magic("config", "AzBatch.region = 'westeurope'")
    shell.run_line_magic("config", "AzBatch.budget = '$5'")
    settings = magics.settings()
    assert json.loads(settings.prices) == {"Standard_E32_v3": 1.5}
    assert settings.batch_region == "westeurope" and settings.budget == 5.0
    assert Prices.for_settings(settings.home, settings.prices).hourly("Standard_E32_v3", "westeurope") == 1.5
    shell.run_line_magic("config", "AzBatch.budget = 'five'")  # IPython logs the TraitError
    assert magics.budget == "$5"
    shell.run_line_magic("config", "AzBatch.budget = ''")
    assert magics.settings().budget is None
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="--budget 'five' is not an amount"):
        shell.run_cell("%%azbatch --budget five\nx = 1")
