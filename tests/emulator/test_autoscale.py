"""The autoscale formula evaluator, on the formulas of Azure's autoscale documentation."""
# ruff: noqa: E501 - the formulas are quoted as the documentation writes them

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from batchmagic.emulator.autoscale import (
    FormulaSyntaxError,
    MetricHistory,
    PoolFigures,
    compile_formula,
    evaluate,
)

NOW = datetime(2026, 12, 1, 19, 18, 47, 805000, tzinfo=UTC).timestamp()  # a Tuesday

DOCS_PENDING = """
// Get pending tasks for the past 15 minutes.
$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 15);
// If we have fewer than 70 percent data points, we use the last sample point,
// otherwise we use the maximum of last sample point and the history average.
$tasks = $samples < 70 ? max(0,$PendingTasks.GetSample(1)) : max( $PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 15)));
// If number of pending tasks is not 0, set targetVM to pending tasks, otherwise
// half of current dedicated.
$targetVMs = $tasks > 0? $tasks:max(0, $TargetDedicatedNodes/2);
// The pool size is capped at 20, if target VM value is more than that, set it
// to 20. This value should be adjusted according to your use case.
$TargetDedicatedNodes = max(0, min($targetVMs, 20));
// Set node deallocation mode - let running tasks finish before removing a node
$NodeDeallocationOption = taskcompletion;
"""


def history(values: list[float], metric: str = "PendingTasks", end: float = NOW) -> MetricHistory:
    h = MetricHistory()
    for i, v in enumerate(values):
        h.record(end - 30 * (len(values) - 1 - i), {metric: v})
    return h


def run(text: str, h: MetricHistory | None = None, pool: PoolFigures | None = None, now: float = NOW):  # type: ignore[no-untyped-def]
    return evaluate(compile_formula(text), now=now, history=h or history([0]), pool=pool or PoolFigures())


def test_simple_assignment_results_as_the_service_formats_them() -> None:
    out = run("$TargetDedicatedNodes=3")
    assert out.error is None
    assert out.results == "$TargetDedicatedNodes=3;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"
    assert (out.target_dedicated, out.target_low_priority, out.deallocation) == (3, 0, "requeue")


def test_docs_pending_tasks_formula_with_little_history_uses_the_last_sample() -> None:
    out = run(DOCS_PENDING, history([2, 5, 7]))
    assert out.error is None
    assert out.target_dedicated == 7
    assert out.deallocation == "taskcompletion"
    assert out.results.startswith(
        "$TargetDedicatedNodes=7;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
    )
    assert "$samples=10;" in out.results and "$targetVMs=7" in out.results


def test_docs_pending_tasks_formula_with_full_history_uses_the_average_and_caps_at_20() -> None:
    out = run(DOCS_PENDING, history([40.0] * 31))
    assert out.target_dedicated == 20
    idle = run(DOCS_PENDING, history([0.0] * 31), PoolFigures(target_dedicated=4, current_dedicated=4))
    assert idle.target_dedicated == 2  # half of the current target when nothing is pending
    assert run(DOCS_PENDING, history([0.0] * 31), PoolFigures(target_dedicated=1)).target_dedicated == 0


def test_time_based_formula_and_results_with_user_variables() -> None:
    formula = """$curTime = time();
$workHours = $curTime.hour >= 8 && $curTime.hour < 18;
$isWeekday = $curTime.weekday >= 1 && $curTime.weekday <= 5;
$isWorkingWeekdayHour = $workHours && $isWeekday;
$TargetDedicatedNodes = $isWorkingWeekdayHour ? 20:10;
$NodeDeallocationOption = taskcompletion;"""
    out = run(formula)
    assert out.target_dedicated == 10
    assert out.results == (
        "$TargetDedicatedNodes=10;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
        "$curTime=2026-12-01T19:18:47.805Z;$isWeekday=1;$isWorkingWeekdayHour=0;$workHours=0"
    )
    morning = datetime(2026, 12, 1, 9, 0, tzinfo=UTC).timestamp()
    assert run(formula, now=morning).target_dedicated == 20
    sunday = datetime(2026, 12, 6, 9, 0, tzinfo=UTC).timestamp()
    assert run(formula, now=sunday).target_dedicated == 10


def test_cpu_formula_parallel_tasks_formula_and_aliases() -> None:
    cpu = """$totalDedicatedNodes =
    (min($CPUPercent.GetSample(TimeInterval_Minute * 10)) > 0.7) ?
    ($CurrentDedicatedNodes * 1.1) : $CurrentDedicatedNodes;
$totalDedicatedNodes =
    (avg($CPUPercent.GetSample(TimeInterval_Minute * 60)) < 0.2) ?
    ($CurrentDedicatedNodes * 0.9) : $totalDedicatedNodes;
$TargetDedicatedNodes = min(400, $totalDedicatedNodes)"""
    out = run(cpu, history([0.0] * 5, "CPUPercent"), PoolFigures(current_dedicated=10, target_dedicated=10))
    assert out.error is None and out.target_dedicated == 9  # 10 * 0.9, truncated
    parallel = """$samples = $ActiveTasks.GetSamplePercent(TimeInterval_Minute * 15);
$tasks = $samples < 70 ? max(0,$ActiveTasks.GetSample(1)) : max( $ActiveTasks.GetSample(1),avg($ActiveTasks.GetSample(TimeInterval_Minute * 15)));
$cores = $TargetDedicatedNodes * 4;
$extraVMs = (($tasks - $cores) + 3) / 4;
$targetVMs = ($TargetDedicatedNodes + $extraVMs);
$TargetDedicated = max(0,min($targetVMs,3));
$NodeDeallocationOption = taskcompletion;"""
    out = run(parallel, history([9.0], "ActiveTasks"))
    assert out.error is None and out.target_dedicated == 3
    low = run("maxNumberofVMs = 25; $TargetLowPriority = min(maxNumberofVMs, 30 - $PreemptedNodeCount.GetSample(1));")
    assert low.target_low_priority == 25 and "maxNumberofVMs=25" in low.results


def test_initial_size_formula_with_a_time_string() -> None:
    formula = """$TargetDedicatedNodes = 4;
    lifespan         = time() - time("Tue, 01 Dec 2026 19:00:00 GMT");
    span             = TimeInterval_Minute * 60;
    startup          = TimeInterval_Minute * 10;
    ratio            = 50;
    $TargetDedicatedNodes = (lifespan > startup ? (max($RunningTasks.GetSample(span, ratio), $ActiveTasks.GetSample(span, ratio)) == 0 ? 0 : $TargetDedicatedNodes) : 4);"""
    out = run(formula, history([0.0] * 121, "RunningTasks"))
    assert out.error is None and out.target_dedicated == 0
    assert "lifespan=00:18:47.80500" in out.results and "span=01:00:00" in out.results
    assert run(formula.replace("19:00:00", "19:15:00")).target_dedicated == 4


def test_insufficient_sample_data_is_reported_as_the_service_does() -> None:
    text = "$TargetDedicatedNodes = 5;\n$x = $RunningTasks.GetSample(TimeInterval_Minute * 10, 70);"
    out = run(text, history([1.0] * 10, "RunningTasks"), PoolFigures(target_dedicated=2))
    assert out.error == {
        "code": "InsufficientSampleData",
        "message": "Autoscale evaluation failed due to insufficient sample data",
        "values": [
            {
                "name": "Message",
                "value": "Line 2, Col 19: Insufficient data from data set: $RunningTasks wanted 70%, received 50%",
            }
        ],
    }
    assert out.target_dedicated == 2  # a failed evaluation changes nothing
    assert run(text.replace("70", "40"), history([1.0] * 10, "RunningTasks")).error is None


def test_functions_vectors_and_intervals() -> None:
    h = MetricHistory()
    for i, v in enumerate([1.0, 2.0, 3.0, 4.0]):
        h.record(NOW - 90 + 30 * i, {"PendingTasks": v})
    text = """v = $PendingTasks.GetSample(4);
a = avg(v, 10); b = sum(v) + len(v); c = percentile(v, 50); d = median(v); e = val(v, 0);
f = std(1, 2, 3, 4); g = ceil(2.1) + floor(2.9) + round(2.5) + abs(-1);
h = $PendingTasks.Count(); i = $PendingTasks.GetSamplePeriod(); j = !0 + (1 || 0) + (1 && 0);
k = v * 2; l = $PendingTasks.HistoryBeginTime(); m = -TimeInterval_Hour + TimeInterval_Day;
n = $PendingTasks.GetSample(TimeInterval_Second * 70, TimeInterval_Second * 10);
o = 7 / 2; p = "abc" < "abd"; q = var(1, 2, 3, 4); r = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 2)"""
    out = run(text, h)
    assert out.error is None, out.error
    v = out.variables
    assert v["v"] == "[1,2,3,4]" and v["a"] == "4" and v["b"] == "14" and v["c"] == "2.5" and v["d"] == "2.5"
    assert v["e"] == "1" and v["f"] == "1.29099444873581" and v["g"] == "9" and v["h"] == "4"
    assert v["i"] == "00:00:30" and v["j"] == "2" and v["k"] == "[2,4,6,8]" and v["m"] == "23:00:00"
    assert v["l"] == "2026-12-01T19:17:17.805Z" and v["n"] == "[2,3]" and v["o"] == "3.5" and v["p"] == "1"
    assert v["q"] == "1.66666666666667" and v["r"] == "100"


def test_stop_ends_evaluation_keeping_what_was_set() -> None:
    out = run("$TargetDedicatedNodes = 2; stop(); $TargetDedicatedNodes = 9;")
    assert out.error is None and out.target_dedicated == 2


def test_runtime_errors_name_line_and_column() -> None:
    out = run("$TargetDedicatedNodes = 1;\n$TargetDedicatedNodes = nothing + 1;", pool=PoolFigures(target_dedicated=3))
    assert out.error is not None and out.error["code"] == "FormulaEvaluationFailed"
    assert out.error["values"][0]["value"] == "Line 2, Col 25: Undefined symbol: nothing"
    assert out.target_dedicated == 3
    assert run("$TargetDedicatedNodes = $PendingTasks;").error is not None
    assert run("$NodeDeallocationOption = 3;").error is not None
    assert run("x = 1 / 0;").error is not None
    assert run("$TargetDedicatedNodes = -4;").target_dedicated == 0


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("$TargetDedicatedNodes = ", "Line 1, Col 25"),
        ("$TargetDedicatedNodes = 1 +* 2", "Line 1, Col 28"),
        ("$TargetDedicatedNodes = foo(1)", "Line 1, Col 25"),
        ("$x = $PendingTasks.GetSamples(1)", "Line 1, Col 20"),
        ("$CurrentDedicatedNodes = 1", "Line 1, Col 1"),
        ("$a = 1\n$b = 2", "Line 2, Col 1"),
        ("$a = (1", "Line 1, Col 8"),
        ("$a = 1 # 2", "Line 1, Col 8"),
        ("", "Line 1, Col 1"),
        ("x=1;" * 101, "Line 1, Col 1"),
    ],
)
def test_syntax_errors(text: str, where: str) -> None:
    with pytest.raises(FormulaSyntaxError) as info:
        compile_formula(text)
    assert info.value.detail.startswith(where + ": "), info.value.detail
    assert info.value.code == "AutoScalingFormulaSyntaxError"


def test_history_keeps_a_sample_per_period_and_round_trips() -> None:
    h = MetricHistory()
    assert h.due(NOW)
    h.record(NOW, {"PendingTasks": 3})
    assert not h.due(NOW + 10) and h.due(NOW + 30)
    again = MetricHistory.from_list(h.to_list())
    assert again.samples("PendingTasks") == [(NOW, 3.0)] and again.samples("CPUPercent") == [(NOW, 0.0)]
