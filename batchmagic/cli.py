"""``batchmagic``: the training image outside a notebook.

Examples
--------
Build (or find) the image for an environment and print its name::

    $ batchmagic image build --requirements requirements.txt --pip "tabulate==0.9.0"
    building 127.0.0.1:5000/batchmagic:env-3f9a0c12d4e5 from python:3.11-slim
    ...
    127.0.0.1:5000/batchmagic:env-3f9a0c12d4e5 (built and pushed, 212.4 MB, 41.0 s)

List the training images in the registry::

    $ batchmagic image ls
"""

from __future__ import annotations

import argparse
import sys

from batchmagic.config import setting
from batchmagic.errors import ConfigError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchmagic", description="batchmagic's training images.")
    commands = parser.add_subparsers(dest="command", required=True)
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

    ls = actions.add_parser("ls", help="list the training images in the registry (or the local engine)")
    ls.add_argument("--registry", help=registry_help)
    return parser


def _build(args: argparse.Namespace) -> int:
    from batchmagic.environment import environment_spec
    from batchmagic.image import ensure_image

    registry = args.registry if args.registry is not None else setting("registry")
    base = args.base_image or setting("base_image")
    spec = environment_spec(args.modules, base_image=base, requirements=args.requirements, pip=args.pip)

    def progress(stage: str, detail: str) -> None:
        print(f"{stage} {detail}", file=sys.stderr, flush=True)

    result = ensure_image(spec, registry, push=bool(registry) and not args.no_push, progress=progress)
    if result.built or result.pushed:
        done = " and pushed" if result.pushed else ""
        what = f"built{done}" if result.built else "pushed"
        print(f"{result.image} ({what}, {result.bytes_pushed / 1e6:.1f} MB pushed, {result.seconds:.1f} s)")
    else:
        print(f"{result.image} (already there: nothing built or pushed)")
    return 0


def _ls(args: argparse.Namespace) -> int:
    from batchmagic.image import describe, list_images

    registry = args.registry if args.registry is not None else setting("registry")
    images = list_images(registry)
    if not images:
        print("no training images", file=sys.stderr)
    for name, spec in images:
        print(f"{name}  {describe(spec)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a user's mistake is one line on stderr and exit code 2."""
    args = _parser().parse_args(argv)
    try:
        if args.action == "build":
            return _build(args)
        return _ls(args)
    except ConfigError as err:
        print(f"batchmagic: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
