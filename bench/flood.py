"""A flood of output: a cell printing about 100 MB (a million lines of 100 characters), side by side with
one printing a tenth of it, on the local backend, followed as a cell follows it (its shown log capped).

Figures: the seconds spent collecting each (reading the whole log and writing the run's record), their
ratio per MB (1.0: linear in the output), and how much the client's memory grew (its peak RSS over the
run). ``BENCH_FLOOD_MB`` sizes the big one (default 100).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time

from batchmagic.api import Session
from batchmagic.notebook.logcap import LogCap
from batchmagic.run.state import LogRecord, Phase, RunState

LINE = 100  # characters a line, newline included


def _cell(lines: int) -> str:
    return f"import sys\nfor i in range({lines}):\n    sys.stdout.write(f'{{i:>12}}' + 'x' * {LINE - 13} + '\\n')\n"


def _flood(session: Session, lines: int) -> tuple[float, int]:
    """Seconds collecting, lines shown."""
    cap = LogCap()
    shown = 0

    def on_update(state: RunState, records: list[LogRecord]) -> None:
        nonlocal shown
        shown += len(cap.feed(records, state) + (cap.end(state) if state.finished else []))

    run = session.submit(_cell(lines), {}, backend="local", on_update=on_update)
    run.wait(timeout=3600)
    (span,) = [s for s in run.state().phases if s.phase == Phase.COLLECTING]
    assert span.end is not None
    return span.end - span.start, shown


def main() -> dict[str, float]:
    big_mb = float(os.environ.get("BENCH_FLOOD_MB", "100"))
    big = int(big_mb * 1e6 / LINE)
    with tempfile.TemporaryDirectory() as home:
        os.environ["BATCHMAGIC_HOME"] = home
        session = Session()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.time()
        small_s, _ = _flood(session, big // 10)
        big_s, shown = _flood(session, big)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    per_mb_ratio = (big_s / big_mb) / (small_s / (big_mb / 10))
    print(f"flood of {big_mb:.0f} MB          collecting {big_s:8.2f} s ({shown} records shown)")
    print(f"flood of {big_mb / 10:.0f} MB           collecting {small_s:8.2f} s")
    print(f"seconds per MB, big/small     {per_mb_ratio:8.2f}  (1.0: linear)")
    print(f"client peak RSS grew          {grown:8.1f} MB   ({time.time() - started:.0f} s in all)")
    return {
        "flood_mb": big_mb,
        "flood_collect_s": big_s,
        "flood_collect_s_tenth": small_s,
        "flood_per_mb_ratio": per_mb_ratio,
        "flood_client_rss_growth_mb": grown,
    }


if __name__ == "__main__":
    main()
