"""``batchmagic``: runs, the store, images, named pools and the emulator, outside a notebook.

Examples
--------
Build (or find) the image for an environment and print its name::

    $ batchmagic image build --requirements requirements.txt --pip "tabulate==0.9.0"
    building 127.0.0.1:5000/batchmagic:env-3f9a0c12d4e5 from python:3.11-slim
    ...
    127.0.0.1:5000/batchmagic:env-3f9a0c12d4e5 (built and pushed, 212.4 MB, 41.0 s)

List the training images in the registry::

    $ batchmagic image ls

Refresh the VM price table from Azure's public Retail Prices API (into ``BATCHMAGIC_HOME/prices.json``),
and show the prices in force::

    $ batchmagic prices update --region eastus --region westeurope
    $ batchmagic prices ls --region eastus

What the run store holds, by kind, and freeing what no live run needs (see :mod:`batchmagic.run.upkeep`)::

    $ batchmagic store
    $ batchmagic store --prune

Named pools, as ``%azbatch_pool`` in a notebook (the Azure settings come from the environment)::

    $ batchmagic pool create gpu --vm Standard_NC4as_T4_v3 --max-nodes 2 --idle 20m
    $ batchmagic pool ls
    $ batchmagic pool resize gpu 1
    $ batchmagic pool delete gpu
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from batchmagic.config import Settings
from batchmagic.errors import ConfigError, RunFailed

if TYPE_CHECKING:
    from batchmagic.api import Session

T = TypeVar("T")

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchmagic",
        description="batchmagic from a terminal: runs, named pools, training images, VM prices, the local emulators.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_image_commands(commands)
    _add_price_commands(commands)
    _add_pool_commands(commands)
    _add_run_commands(commands)
    _add_tool_commands(commands)
    return parser


def _add_image_commands(commands: Any) -> None:
    """The subcommands for training images: build, ls."""
    image = commands.add_parser("image", help="build or list training images")
    actions = image.add_subparsers(dest="action", required=True)

    registry_help = "registry[/repository] (default: BATCHMAGIC_REGISTRY; none: a local-only image)"
    build = actions.add_parser("build", help="build the image for an environment (reused if it exists)")
    build.add_argument("--requirements", metavar="FILE", help="a pip requirements file to install")
    build.add_argument("--pip", action="append", default=[], metavar="PKG", help='a requirement, e.g. "pkg==1.2"')
    build.add_argument(
        "--import",
        dest="modules",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module the cells import: its installed distribution is pinned (repeatable)",
    )
    build.add_argument("--registry", help=registry_help)
    build.add_argument(
        "--base-image", help="image to build FROM (default: BATCHMAGIC_BASE_IMAGE, else python:3.11-slim)"
    )
    build.add_argument("--no-push", action="store_true", help="build into the local engine only")
    build.add_argument(
        "--gpu",
        action="store_true",
        help="for GPU nodes: the CUDA builds of torch, jax, tensorflow, cupy, FROM a CUDA runtime image "
        "(default: BATCHMAGIC_GPU_BASE_IMAGE, else nvidia/cuda's for this Python)",
    )

    ls = actions.add_parser("ls", help="list the training images in the registry (or the local engine)")
    ls.add_argument("--registry", help=registry_help)


def _add_price_commands(commands: Any) -> None:
    """The subcommands for the VM price table: update, ls."""
    prices = commands.add_parser("prices", help="the VM price table behind the panel's cost and --budget")
    price_actions = prices.add_subparsers(dest="action", required=True)
    update = price_actions.add_parser("update", help="refresh the table from Azure's Retail Prices API")
    update.add_argument(
        "--region", action="append", default=[], help="a region to refresh (repeatable; default: the table's)"
    )
    update.add_argument("--output", metavar="FILE", help="where to write it (default: BATCHMAGIC_HOME/prices.json)")
    show = price_actions.add_parser("ls", help="the prices in force, per region and VM size")
    show.add_argument("--region", help="only this region")


def _add_pool_commands(commands: Any) -> None:
    """The subcommands for named pools: create, ls, resize, delete."""
    pool = commands.add_parser("pool", help="create, list, resize or delete named pools (as %%azbatch_pool)")
    pool_actions = pool.add_subparsers(dest="action", required=True)
    create = pool_actions.add_parser("create", help="a pool that grows with its tasks and goes to zero when idle")
    create.add_argument("name", help="the pool's name")
    create.add_argument("--vm", help="its nodes' VM size, e.g. Standard_E32_v3 (default: Standard_D2s_v3)")
    create.add_argument("--max-nodes", type=int, default=1, help="the most nodes it grows to (default 1)")
    create.add_argument("--low-priority", action="store_true", help="low-priority (spot) nodes")
    create.add_argument("--idle", default="20m", help="how long it keeps idle nodes, e.g. 20m, 1h (default 20m)")
    create.add_argument("--slots-per-node", type=int, default=1, help="tasks each node runs at once (default 1)")
    create.add_argument(
        "--inter-node", action="store_true", help="for --distributed runs: inter-node communication, one task per node"
    )
    pool_actions.add_parser("ls", help="batchmagic's named pools, with their nodes")
    resize = pool_actions.add_parser("resize", help="nodes to have now, held for the idle period (0: let them go)")
    resize.add_argument("name", help="the pool's name")
    resize.add_argument("nodes", help="nodes to have now")
    delete = pool_actions.add_parser("delete", help="delete a named pool and its nodes")
    delete.add_argument("name", help="the pool's name")


def _add_run_commands(commands: Any) -> None:
    """The subcommands for runs: ls, logs, teardown."""
    commands.add_parser(
        "ls", help="the runs of every kernel on this machine, with their live phase (as %%azbatch_status)"
    )
    logs = commands.add_parser("logs", help="what a run printed, from the start")
    logs.add_argument("run", metavar="RUN", help="the run's id or name (batchmagic ls lists them)")
    logs.add_argument("--task", help="a sweep's task (default: its first)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    teardown = commands.add_parser(
        "teardown", help="end the runs of kernels that are gone (as %%azbatch_teardown --orphans)"
    )
    teardown.add_argument(
        "--all", action="store_true", dest="everything", help="also batchmagic-tagged jobs and pools on the account"
    )
    teardown.add_argument("--blobs", action="store_true", help="also delete their run data")


def _add_tool_commands(commands: Any) -> None:
    """The subcommands for the local emulators and the run store."""
    emulator = commands.add_parser(
        "emulator",
        help="Azurite and the Batch emulator on this machine, for the Azure path without an account (Ctrl-C stops)",
        description="Start Azurite and the Batch emulator on loopback, write their settings to "
        "BATCHMAGIC_HOME/emulator.env (which %%load_ext batchmagic loads while this runs) and print them; "
        "Ctrl-C stops both and removes their data. After --, a command to run with the settings; both stop "
        "when it ends.",
    )
    emulator.add_argument(
        "--env-file", metavar="FILE", help="where to write the settings (default: BATCHMAGIC_HOME/emulator.env)"
    )
    emulator.add_argument("--keep-data", action="store_true", help="keep the services' data when they stop")
    emulator.add_argument("run", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="a command to run, then stop")
    store = commands.add_parser("store", help="what the run store holds, by kind; --prune frees what no live run needs")
    store.add_argument(
        "--prune", action="store_true", help="delete the data of finished runs and the inputs no live run needs"
    )
    store.add_argument(
        "--older-than",
        default="1h",
        metavar="AGE",
        help="prune only what is older than this, like 30m or 0s (default 1h: a run submitted meanwhile elsewhere "
        "has stored its inputs before the ledger knows it)",
    )
    store.add_argument("--backend", choices=("local", "azure"), help="whose store (default: the settings' backend)")


def _store(args: argparse.Namespace) -> int:
    from batchmagic.api import Session
    from batchmagic.config import Settings, parse_duration
    from batchmagic.package.folder import format_size
    from batchmagic.run.upkeep import KINDS, prune, usage

    settings = Settings.from_env()
    session = Session(settings=settings)
    store = session.backend(args.backend or settings.backend).store
    ledger = session.ledger(session.home())
    if args.prune:
        gone = prune(
            store,
            ledger,
            grace=0.0 if args.older_than.strip() in ("0", "0s") else parse_duration(args.older_than, "--older-than"),
        )
        print(
            f"freed {format_size(gone.total)}: the data of {len(gone.runs)} finished runs and "
            f"{len(gone.content)} inputs and objects no live run needs (kept {gone.kept_runs} runs)"
        )
    held = usage(store.list_keys(""))
    print(f"{store.describe()}: {format_size(held.total)} in {held.runs} runs' data and the shared inputs")
    for kind in KINDS:
        if kind in held.sizes:
            print(f"  {kind:<8} {format_size(held.sizes[kind]):>10}  {held.counts[kind]:>6} files")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from pathlib import Path

    from batchmagic.config import environment
    from batchmagic.sandbox import ENV_FILE, run

    command = args.run[1:] if args.run[:1] == ["--"] else args.run
    env_file = Path(args.env_file) if args.env_file else Settings.from_env().home / ENV_FILE
    return run(env_file, command, environ=environment(), keep_data=args.keep_data)


def _runs_ls(args: argparse.Namespace) -> int:
    from batchmagic.api import Session
    from batchmagic.notebook.view import status_lines

    session = Session(settings=Settings.from_env())
    rows = session.status()
    _ledger_note(session)
    if not rows:
        print("no runs yet", file=sys.stderr)
    for line in status_lines(rows):
        print(line)
    return 0


def _logs(args: argparse.Namespace) -> int:
    """Print a run's log from the start; with --follow, as it grows, until the run ends. A storage outage
    costs one line and a wait, not a traceback."""
    import time

    from batchmagic.api import Session
    from batchmagic.protocol import Layout
    from batchmagic.run.monitor import LogTail

    session = Session(settings=Settings.from_env())
    try:
        run = _patiently("finding the run", lambda: session.attach(args.run))
    finally:
        _ledger_note(session)
    task_id = args.task or run.task_ids[0]
    if task_id not in run.task_ids:
        raise ConfigError(f"run {run.name} has no task {task_id!r}: its tasks are {', '.join(run.task_ids[:5])}...")
    tail = LogTail(Layout.log(run.id, task_id), task_id)
    while True:
        while records := _patiently("reading the log", lambda: tail.read(run.store)):
            for record in records:
                stream = sys.stderr if record.stream == "stderr" else sys.stdout
                stream.write(record.text)
                stream.flush()
        if not args.follow or run.done:
            break
        run.poll()  # ends (collects, records) the run once its tasks do
        if not run.done:
            time.sleep(1.0)
    if args.follow and run.error is not None:
        print(f"batchmagic: run {run.name} {run.status}: {run.error}", file=sys.stderr)
        return 1
    return 0


#: Seconds ``batchmagic logs`` keeps trying while storage does not answer, before one line ends it.
STORAGE_PATIENCE = 300.0


def _patiently(what: str, call: Callable[[], T]) -> T:
    """``call()``, tried again every two seconds while storage does not answer (one line on stderr says so),
    for up to :data:`STORAGE_PATIENCE` seconds.

    Raises
    ------
    RunFailed
        Storage did not answer in that time: one line.
    """
    import time

    from batchmagic.storage import unreachable

    deadline = None
    while True:
        try:
            return call()
        except Exception as err:
            if not unreachable(err):
                raise
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if deadline is None:
                deadline = time.monotonic() + STORAGE_PATIENCE
                print(
                    f"batchmagic: storage does not answer ({reason}) while {what}: trying again for up to "
                    f"{STORAGE_PATIENCE / 60:.0f} min (Ctrl-C stops)",
                    file=sys.stderr,
                    flush=True,
                )
            elif time.monotonic() > deadline:
                raise RunFailed(f"storage did not answer for {STORAGE_PATIENCE:.0f} s while {what}: {reason}") from None
            time.sleep(2.0)


def _teardown(args: argparse.Namespace) -> int:
    from batchmagic.api import Session

    settings = Settings.from_env()
    session = Session(settings=settings)
    removed = session.teardown_orphans(settings, blobs=args.blobs)
    _ledger_note(session)
    if args.everything and settings.backend == "azure":
        removed += session.teardown(everything=True, blobs=args.blobs, backend=session.backend("azure"))
    for item in removed:
        print(f"removed {item}")
    if not removed:
        print("nothing to tear down: no run of a kernel that is gone still runs or holds resources")
    return 0


def _ledger_note(session: Session) -> None:
    if note := session.ledger_note():
        print(f"batchmagic: warning: {note}", file=sys.stderr)


def _pool(args: argparse.Namespace) -> int:
    from batchmagic.api import Session
    from batchmagic.pools import command

    given = {
        "name": None, "nodes": None, "vm": None, "max_nodes": 1, "low_priority": False, "idle": "20m",
        "inter_node": False,
    }  # fmt: skip
    values = {**given, "slots_per_node": 1, **vars(args), "command": args.action}
    settings = Settings.from_env()
    for line in command(argparse.Namespace(**values), session=Session(settings=settings), settings=settings):
        print(line)
    return 0


def _build(args: argparse.Namespace) -> int:
    from batchmagic.package.environment import environment_spec
    from batchmagic.package.image import ensure_image

    settings = Settings.from_env()
    registry = args.registry if args.registry is not None else settings.registry
    if args.gpu:
        from batchmagic.package.cuda import cuda_base_image
        from batchmagic.package.environment import python_version

        base = args.base_image or settings.gpu_base_image or cuda_base_image(python_version())
    else:
        base = args.base_image or settings.base_image
    spec = environment_spec(
        args.modules, base_image=base, requirements=args.requirements, pip=args.pip, gpu=args.gpu,
        pip_index=settings.pip_extra_index_url,
    )  # fmt: skip
    for note in spec.notes:  # what the GPU build changed from this environment's packages
        print(note, file=sys.stderr)

    def progress(stage: str, detail: str) -> None:
        print(f"{stage} {detail}", file=sys.stderr, flush=True)

    push = bool(registry) and not args.no_push
    result = ensure_image(spec, registry, push=push, progress=progress, secrets=settings.secrets)
    if result.built or result.pushed:
        done = " and pushed" if result.pushed else ""
        what = f"built{done}" if result.built else "pushed"
        print(f"{result.image} ({what}, {result.bytes_pushed / 1e6:.1f} MB pushed, {result.seconds:.1f} s)")
    else:
        print(f"{result.image} (already there: nothing built or pushed)")
    return 0


def _ls(args: argparse.Namespace) -> int:
    from batchmagic.package.image import describe, list_images

    settings = Settings.from_env()
    registry = args.registry if args.registry is not None else settings.registry
    images = list_images(registry, settings.secrets)
    if not images:
        print("no training images", file=sys.stderr)
    for name, spec in images:
        print(f"{name}  {describe(spec)}")
    return 0


def _prices_update(args: argparse.Namespace) -> int:
    from pathlib import Path

    from batchmagic.backends.azure.prices import DEFAULT_REGIONS, SHIPPED_TABLE, PriceTable, fetch_retail_prices
    from batchmagic.backends.azure.vmsizes import VM_SIZES

    # The SKU names as Azure spells them: the shipped table's, and a best guess for sizes it lacks.
    spelled = {size.lower(): size for sizes in PriceTable.load(SHIPPED_TABLE).prices.values() for size in sizes}
    sizes = [spelled.get(size, _azure_spelling(size)) for size in VM_SIZES]
    regions = args.region or list(DEFAULT_REGIONS)
    table = fetch_retail_prices(regions, sizes)
    target = Path(args.output) if args.output else Settings.from_env().home / "prices.json"
    if target.is_file():  # keep the regions this refresh did not read
        table = PriceTable.load(target).merged(table)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(table.dump(), encoding="utf-8")
    count = sum(len(sizes) for sizes in table.prices.values())
    print(f"{count} prices in {len(table.prices)} regions ({table.currency}, {table.retrieved}) written to {target}")
    return 0


def _prices_ls(args: argparse.Namespace) -> int:
    from batchmagic.backends.azure.prices import Prices, format_money

    settings = Settings.from_env()
    prices = Prices.for_settings(settings.home, settings.prices)
    print(prices.describe(), file=sys.stderr)
    for region, sizes in sorted(prices.table.prices.items()):
        if args.region and region != args.region.lower():
            continue
        for size in sizes:
            dedicated = prices.hourly(size, region)
            spot = prices.hourly(size, region, low_priority=True)
            shown = [format_money(p, prices.currency) if p is not None else "unknown" for p in (dedicated, spot)]
            print(f"{region:<14} {size:<26} {shown[0]:>10}/h  spot {shown[1]:>10}/h")
    return 0


def _azure_spelling(size: str) -> str:
    """``standard_e32_v3`` -> ``Standard_E32_v3``, as the Retail Prices API names SKUs."""
    head, _, rest = size.partition("_")
    name, _, version = rest.partition("_")
    spelled = head.capitalize() + "_" + name[:1].upper() + name[1:]
    return spelled + (f"_{version}" if version else "")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a user's mistake is one line on stderr and exit code 2 (1 when the
    Retail Prices API cannot be read)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "prices":
            return _prices_update(args) if args.action == "update" else _prices_ls(args)
        if args.command == "pool":
            return _pool(args)
        if args.command == "emulator":
            return _emulator(args)
        if args.command in ("ls", "logs", "teardown", "store"):
            return {"ls": _runs_ls, "logs": _logs, "teardown": _teardown, "store": _store}[args.command](args)
        if args.action == "build":
            return _build(args)
        return _ls(args)
    except ConfigError as err:
        print(f"batchmagic: {err}", file=sys.stderr)
        return 1 if args.command == "prices" and args.action == "update" else 2
    except RunFailed as err:
        print(f"batchmagic: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
