"""`python -m bench [name ...]`: run every benchmark (or the named ones) and print their figures."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["packaging", "log_latency", "api_calls", "sweep_calls", "image", "data"]


def main(argv: list[str]) -> int:
    for name in argv or BENCHMARKS:
        print(f"== {name}")
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
