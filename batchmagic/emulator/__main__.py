"""``python -m batchmagic.emulator``: run the Batch emulator until interrupted.

Prints ``batch emulator listening on http://HOST:PORT`` once it accepts requests.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from batchmagic.emulator.faults import FaultPlan
from batchmagic.emulator.server import DEFAULT_KEY, Emulator


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m batchmagic.emulator``."""
    p = argparse.ArgumentParser(
        prog="python -m batchmagic.emulator",
        description="Serve an Azure Batch REST API emulator (api-version 2025-06-01) for the azure-batch SDK.",
    )
    p.add_argument("--host", default="127.0.0.1", help="Interface to listen on.")
    p.add_argument("--port", type=int, default=0, help="Port to listen on (0: pick a free one).")
    p.add_argument("--account", default="devbatch", help="Batch account name clients sign with.")
    p.add_argument(
        "--key",
        default=os.environ.get("BATCH_EMULATOR_KEY", DEFAULT_KEY),
        help="Base64 shared key of the account (default: $BATCH_EMULATOR_KEY or a fixed test key).",
    )
    p.add_argument("--executor", choices=("process", "docker"), default="process", help="How tasks run.")
    p.add_argument("--allocation-delay", type=float, default=1.0, help="Seconds until a pool's nodes are idle.")
    p.add_argument("--core-quota", type=int, default=None, help="Dedicated core quota (default: unlimited).")
    p.add_argument(
        "--low-priority-core-quota", type=int, default=None, help="Low-priority core quota (default: unlimited)."
    )
    p.add_argument(
        "--family-quota",
        action="append",
        default=[],
        metavar="FAMILY=CORES",
        help="A dedicated core quota for one VM family (the account's dedicatedCoreQuotaPerVMFamily), e.g. "
        "standardNCADSA100v4Family=0; repeatable. Families not named are limited by --core-quota only.",
    )
    p.add_argument("--record", default=None, help="Append every request to this JSON Lines file.")
    p.add_argument("--workdir", default=None, help="Directory for node and task files (default: a temp dir).")
    p.add_argument(
        "--empty-job-grace",
        type=float,
        default=5.0,
        help="Seconds a terminatejob job without tasks waits before it completes.",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="Run the emulator's clock this many times faster than real time (allocation, autoscale "
        "intervals, idle periods, schedules, reported timestamps); e.g. 60: a minute a second.",
    )
    p.add_argument(
        "--state",
        default=None,
        metavar="DIR",
        help="Keep the account in DIR (pools, nodes, jobs, tasks, schedules) so a restarted emulator carries on; "
        "node and task files go to DIR/work unless --workdir is given.",
    )
    p.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="Inject faults: status codes, connection resets before/after the answer, delays, at rates, "
        "optionally per method and path; e.g. 'reset-before:0.05,reset-after:0.05,503:0.05@POST/jobs.*' "
        "(see batchmagic/emulator/faults.py).",
    )
    p.add_argument(
        "--subscription",
        default=None,
        help="The account's subscription id: pools' subnets and custom images must be in it "
        "(default: a fixed UUID derived from the account name).",
    )
    p.add_argument("--log-level", default="WARNING", help="Logging level for the batchmagic.emulator logger.")
    return p


def _family_quotas(items: Sequence[str]) -> dict[str, int]:
    quotas = {}
    for item in items:
        family, sep, cores = item.partition("=")
        if not sep or not family.strip() or not cores.strip().isdigit():
            build_parser().error(f"--family-quota {item!r} is not FAMILY=CORES")
        quotas[family.strip().lower()] = int(cores)
    return quotas


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    emulator = Emulator(
        args.host,
        args.port,
        args.account,
        args.key,
        executor=args.executor,
        allocation_delay=args.allocation_delay,
        core_quota=args.core_quota,
        low_priority_core_quota=args.low_priority_core_quota,
        family_quotas=_family_quotas(args.family_quota),
        record=args.record,
        workdir=args.workdir,
        empty_job_grace=args.empty_job_grace,
        time_scale=args.time_scale,
        state_dir=args.state,
        subscription=args.subscription,
    )
    try:
        emulator.faults = FaultPlan.parse(args.faults) if args.faults else None
    except ValueError as err:
        build_parser().error(str(err))
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    emulator.start()
    print(f"batch emulator listening on {emulator.url}", flush=True)
    try:
        done.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
