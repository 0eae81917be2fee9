"""`python -m bench [name ...]`: run every benchmark (or the named ones), print their figures and write
them to ``bench/results.json`` (one flat object: each figure by a stable name, its unit in the name).

Figures of benchmarks not run this time stay as the file had them; the benchmark table of docs/benchmarks.md is made
from the file by ``python -m bench.readme``, never by hand.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = [
    "packaging", "log_latency", "api_calls", "sweep_calls", "tick_cost", "first_line", "image", "data", "flood",
    "distributed", "rank_polling", "runner_start", "warm_start", "container_start", "node_warm",
]  # fmt: skip
RESULTS = Path(__file__).with_name("results.json")


def load_results(path: Path = RESULTS) -> dict[str, float]:
    """The figures ``bench/results.json`` holds (empty when there is none yet)."""
    if not path.is_file():
        return {}
    data: dict[str, float] = json.loads(path.read_text(encoding="utf-8"))
    return data


def save_results(figures: dict[str, Any], path: Path = RESULTS) -> None:
    rounded = {k: round(float(v), 4) for k, v in sorted(figures.items())}
    path.write_text(json.dumps(rounded, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    figures = load_results()
    for name in argv or BENCHMARKS:
        print(f"== {name}", flush=True)
        measured = importlib.import_module(f"bench.{name}").main()
        if measured:
            figures.update(measured)
            save_results(figures)  # after each: a benchmark that fails later loses nothing measured
    from bench.readme import update_readme

    update_readme()
    print(f"figures in {RESULTS}; docs/benchmarks.md's benchmark table regenerated from them")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
