"""A run's cost as it goes: the nodes it holds, priced (:mod:`batchmagic.backends.azure.prices`), summed over time.

:class:`CostMeter` is fed each poll's :class:`~batchmagic.backends.base.Holding` and answers the
panel's :class:`~batchmagic.run.state.Cost` and whether the run's ``--budget`` is spent. The spend is an
estimate: between two polls the run is charged at the higher of the two rates (a node that came or
went in between is counted for the whole interval), so it errs on the side of the budget.
"""

from __future__ import annotations

from batchmagic.backends.azure.prices import Prices, format_money
from batchmagic.backends.base import Holding
from batchmagic.errors import ConfigError
from batchmagic.run.state import Cost

__all__ = ["CostMeter"]


class CostMeter:
    """Prices what a run holds, poll after poll.

    Parameters
    ----------
    prices : Prices
        The prices in force.
    region : str
        The Batch account's region ("" when unknown: every price is then unknown).
    vm_size : str
        The run's VM size (a named pool's, for a run on one).
    budget : float, optional
        The spend past which :attr:`over_budget` turns true.
    nodes, low_priority
        What the run asks for (``--nodes``, ``--low-priority``): its rate until its nodes are counted.
    """

    def __init__(
        self,
        prices: Prices,
        region: str,
        vm_size: str,
        *,
        budget: float | None = None,
        nodes: int = 1,
        low_priority: bool = False,
    ) -> None:
        self.prices = prices
        self.region = region
        self.vm_size = vm_size
        self.budget = budget
        self.rate: float | None = 0.0
        self.spent: float | None = 0.0
        self.nodes: dict[str, int] = {}
        self._last: float | None = None
        self._known = self._priced()
        self._counted = False  # a node of the run counted: until then the panel shows the rate asked for
        hourly = prices.hourly(vm_size, region, low_priority=low_priority)
        self._asked = (nodes, None if hourly is None else hourly * nodes)

    def _priced(self) -> bool:
        return self.prices.cost_per_hour(self.vm_size, self.region) is not None

    @property
    def unknown_because(self) -> str:
        if not self.region:
            return "the Batch account's region is unknown (set AzBatch.region)"
        return f"no price for {self.vm_size} in {self.region} (set one in AzBatch.prices)"

    def check_budget(self, *, low_priority: bool = False) -> None:
        """A budget needs a price: ConfigError (one line, before anything starts) when there is none."""
        if self.budget is None:
            return
        if self.prices.hourly(self.vm_size, self.region, low_priority=low_priority) is None:
            raise ConfigError(f"--budget needs a price, and there is none: {self.unknown_because}")

    def observe(self, holding: Holding | None, now: float) -> None:
        """Account for the time since the last observation and take ``holding`` as what is held now."""
        if holding is not None:
            self._counted = self._counted or bool(holding.by_state())  # a node seen: the real rate from now on
            dedicated, low = holding.billed
            rate = self.prices.cost_per_hour(holding.vm_size, self.region, dedicated=dedicated, low_priority=low)
            self.nodes = holding.by_state()
        else:
            rate = self.rate
        if self._last is not None and self.spent is not None:
            if rate is None or self.rate is None:
                self.spent = None
            else:
                self.spent += max(rate, self.rate) * max(0.0, now - self._last) / 3600
        self._last = now
        self.rate = rate

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.spent is not None and self.spent > self.budget

    def budget_line(self, name: str) -> str:
        """The one line a run ends with when its budget is spent."""
        spent, budget = format_money(self.spent or 0.0, self.prices.currency), format_money(self.budget or 0.0)
        return (
            f"run {name} ended: its estimated spend {spent} passed its budget of {budget} (--budget); "
            "its job was ended (a named pool stays)"
        )

    def cost(self) -> Cost:
        """What the panel shows. Until the run's nodes are first counted (up to a poll interval), the rate
        is the one its nodes will cost, ``(1 asked)``, when the size has a price: never ``$0.00/h`` for a
        run whose price is known, and "cost unknown" from the first tick for one whose price is not."""
        rate, nodes = self.rate, dict(self.nodes)
        if not self._counted:
            count, rate = self._asked
            nodes = {"asked": count} if rate is not None else {}
        known = rate is not None and self.spent is not None
        return Cost(
            per_hour=rate,
            spent=self.spent if rate is not None else None,
            currency=self.prices.currency,
            nodes=nodes,
            budget=self.budget,
            unknown_because="" if known else self.unknown_because,
        )
