"""Pool autoscale: enable/disable/evaluate, metric samples and evaluations on the emulator's clock.

A pool with ``enableAutoScale`` gets a metric sample every 30 emulated seconds (its jobs' task counts,
its node count; ``$CPUPercent`` and the other resource metrics are 0) and its formula
(:mod:`batchmagic.emulator.autoscale`) is evaluated when autoscale is enabled and then every
``autoScaleEvaluationInterval``. A successful evaluation sets the pool's targets and the
``$NodeDeallocationOption`` used if it shrinks; every evaluation is reported in ``autoScaleRun``.
"""

from __future__ import annotations

import logging
from typing import Any

from batchmagic.emulator.autoscale import (
    MAX_FORMULA_LENGTH,
    AutoScaleOutcome,
    Formula,
    FormulaSyntaxError,
    PoolFigures,
    compile_formula,
    evaluate,
)
from batchmagic.emulator.errors import ApiError, invalid_property, missing_property
from batchmagic.emulator.state.model import Pool, iso, parse_duration, touch
from batchmagic.emulator.state.pools import PoolsMixin

__all__ = ["AutoscaleMixin", "format_duration", "DEFAULT_EVALUATION_INTERVAL"]

log = logging.getLogger("batchmagic.emulator")

#: The service's default evaluation interval and its bounds (5 minutes to 168 hours).
DEFAULT_EVALUATION_INTERVAL = 15 * 60.0
_MIN_INTERVAL, _MAX_INTERVAL = 5 * 60.0, 168 * 3600.0


def format_duration(seconds: float) -> str:
    """Seconds as the service writes a TimeSpan: ``PT6M``, ``PT1H30M``, ``P7D``."""
    whole = int(round(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(f"{v}{u}" for v, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if v)
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "") if whole else "PT0S"


def _compile(text: Any) -> Formula:
    if not isinstance(text, str):
        raise invalid_property("autoScaleFormula", text)
    if len(text.encode()) > MAX_FORMULA_LENGTH:
        raise ApiError(400, "AutoScalingFormulaTooLong")
    try:
        return compile_formula(text)
    except FormulaSyntaxError as err:
        raise ApiError(400, err.code, values=[("Message", err.detail)]) from err


def _interval(value: Any) -> float:
    try:
        seconds = parse_duration(str(value))
    except ValueError:
        seconds = None
    if seconds is None or not _MIN_INTERVAL <= seconds <= _MAX_INTERVAL:
        raise invalid_property(
            "autoScaleEvaluationInterval",
            value,
            "The minimum and maximum value are 5 minutes and 168 hours respectively.",
        )
    return seconds


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


class AutoscaleMixin(PoolsMixin):
    """Autoscale on top of pools: a pool's ``formula``, ``history`` and ``next_evaluation``."""

    def create_pool(self, body: dict[str, Any], *, auto_job_id: str | None = None) -> Pool:
        """Create a pool; with ``enableAutoScale`` its formula decides the targets (none may be given)."""
        if not _is_true(body.get("enableAutoScale")):
            return super().create_pool(body, auto_job_id=auto_job_id)
        for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            if body.get(key) is not None:
                raise invalid_property(key, body[key], f"{key} cannot be specified if enableAutoScale is set to true.")
        if not body.get("autoScaleFormula"):
            raise missing_property("autoScaleFormula")
        formula = _compile(body["autoScaleFormula"])
        interval = DEFAULT_EVALUATION_INTERVAL
        if body.get("autoScaleEvaluationInterval") is not None:
            interval = _interval(body["autoScaleEvaluationInterval"])
        pool = super().create_pool(body, auto_job_id=auto_job_id)
        with self.lock:
            self._enable(pool, formula, interval, self.now())
        return pool

    def _enable(self, pool: Pool, formula: Formula, interval: float, now: float) -> None:
        pool.formula = formula
        pool.evaluation_interval = interval
        pool.next_evaluation = now  # the service evaluates a formula as soon as it is enabled
        pool.data["enableAutoScale"] = True
        pool.data["autoScaleFormula"] = formula.text
        pool.data["autoScaleEvaluationInterval"] = format_duration(interval)
        touch(pool.data, now)

    def enable_autoscale(self, pool_id: str, body: dict[str, Any]) -> None:
        """``POST /pools/{id}/enableautoscale``: set (or change) the formula and/or the interval."""
        formula = _compile(body["autoScaleFormula"]) if body.get("autoScaleFormula") is not None else None
        interval = None
        if body.get("autoScaleEvaluationInterval") is not None:
            interval = _interval(body["autoScaleEvaluationInterval"])
        with self.lock:
            pool = self._pool(pool_id)
            if pool.data["state"] == "deleting":
                raise ApiError(409, "PoolBeingDeleted")
            if pool.formula is None:
                if pool.data["allocationState"] != "steady":
                    raise ApiError(409, "PoolBeingResized")
                if formula is None:
                    raise missing_property("autoScaleFormula")
            elif formula is None and interval is None:
                raise missing_property("autoScaleFormula")
            chosen = formula or pool.formula
            assert chosen is not None
            self._enable(pool, chosen, interval or pool.evaluation_interval, self.now())
            log.info("pool %s: autoscale enabled every %ss", pool.id, pool.evaluation_interval)

    def disable_autoscale(self, pool_id: str) -> None:
        """``POST /pools/{id}/disableautoscale``: the targets stay as the last evaluation left them."""
        with self.lock:
            pool = self._pool(pool_id)
            pool.formula = None
            pool.next_evaluation = None
            pool.data["enableAutoScale"] = False
            pool.data.pop("autoScaleFormula", None)
            pool.data.pop("autoScaleEvaluationInterval", None)
            touch(pool.data, self.now())

    def evaluate_autoscale(self, pool_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /pools/{id}/evaluateautoscale``: the AutoScaleRun of a formula, not applied."""
        if body.get("autoScaleFormula") is None:
            raise missing_property("autoScaleFormula")
        formula = _compile(body["autoScaleFormula"])
        with self.lock:
            pool = self._pool(pool_id)
            if pool.formula is None:
                raise ApiError(
                    409,
                    "OperationNotValidOnPool",
                    "Autoscale must be enabled on the pool to evaluate a formula.",
                )
            now = self.now()
            self._sample(pool, now)
            return self._outcome(pool, formula, now).to_wire(iso)

    # ----------------------------------------------------------------- scheduler step
    def _advance_pool(self, pool: Pool, now: float) -> None:
        if pool.formula is not None and pool.data["state"] == "active":
            self._sample(pool, now)
            if pool.next_evaluation is not None and now >= pool.next_evaluation:
                self._apply(pool, self._outcome(pool, pool.formula, now), now)
                pool.next_evaluation = max(pool.next_evaluation + pool.evaluation_interval, now)
        super()._advance_pool(pool, now)

    def _sample(self, pool: Pool, now: float) -> None:
        if pool.history.due(now):
            pool.history.record(now, self._metrics(pool))

    def _metrics(self, pool: Pool) -> dict[str, float]:
        active = running = succeeded = failed = 0
        for job in self.jobs.values():
            if job.data["executionInfo"].get("poolId") != pool.id or job.data["state"] in ("completed", "deleting"):
                continue
            for task in job.tasks.values():
                state = task.data["state"]
                if state == "active" and job.data["state"] == "active":
                    multi = task.data.get("multiInstanceSettings") or {}
                    active += int(multi.get("numberOfInstances", 1) or 1)
                elif state in ("preparing", "running"):
                    running += 1
                elif state == "completed":
                    ok = (task.data.get("executionInfo") or {}).get("result") == "success"
                    succeeded, failed = succeeded + ok, failed + (not ok)
        return {
            "ActiveTasks": active,
            "RunningTasks": running,
            "PendingTasks": active + running,
            "SucceededTasks": succeeded,
            "FailedTasks": failed,
            "SampleNodeCount": len(pool.nodes),
        }

    def _outcome(self, pool: Pool, formula: Formula, now: float) -> AutoScaleOutcome:
        figures = PoolFigures(
            target_dedicated=int(pool.data["targetDedicatedNodes"]),
            target_low_priority=int(pool.data["targetLowPriorityNodes"]),
            current_dedicated=sum(1 for n in pool.nodes.values() if n.dedicated),
            current_low_priority=sum(1 for n in pool.nodes.values() if not n.dedicated),
        )
        return evaluate(formula, now=now, history=pool.history, pool=figures)

    def _apply(self, pool: Pool, outcome: AutoScaleOutcome, now: float) -> None:
        data = pool.data
        data["autoScaleRun"] = outcome.to_wire(iso)
        touch(data, now)
        if outcome.error is not None:
            log.info("pool %s: autoscale evaluation failed: %s", pool.id, outcome.error["values"][0]["value"])
            return
        pool.deallocation = outcome.deallocation
        targets = (outcome.target_dedicated, outcome.target_low_priority)
        if targets != (data["targetDedicatedNodes"], data["targetLowPriorityNodes"]):
            log.info("pool %s: autoscale sets targets %s", pool.id, targets)
            data["targetDedicatedNodes"], data["targetLowPriorityNodes"] = targets
            self._begin_allocation(pool, now)
