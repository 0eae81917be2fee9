"""The benchmark table (docs/benchmarks.md) is generated from bench/results.json, never typed: they must agree."""

from __future__ import annotations

from bench.__main__ import load_results
from bench.readme import PAGE, ROWS, render, table


def test_readme_benchmark_table_matches_the_results_file() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert render(text, load_results()) == text, "docs/benchmarks.md's table is stale: run `python -m bench.readme`"


def test_the_results_file_holds_the_issues_figures_with_units_in_their_names() -> None:
    results = load_results()
    for name in (
        "warm_first_line_s",
        "cold_first_line_s",
        "warm_own_share_s",
        "tick_cpu_ms_10000_tasks",
        "tick_calls_10000_tasks",
        "tick_cpu_ms_1000_tasks_1pct_changed",
        "tick_calls_10000_tasks_1pct_changed",
    ):
        assert isinstance(results.get(name), float | int), name
    assert all(isinstance(v, float | int) for v in results.values())


def test_a_row_whose_figures_are_missing_says_which_benchmark_to_run() -> None:
    rows = table({}).splitlines()
    assert len(rows) == len(ROWS) + 2
    assert "not in bench/results.json yet: `python -m bench tick_cost`" in table({})
