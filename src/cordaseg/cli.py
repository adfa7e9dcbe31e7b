"""The ``cordaseg`` command line: thin subcommands that parse arguments and call the library.

Each feature package owns its subcommands in a ``cli`` module with a ``register(subparsers)``
function; this file only collects them. Errors about the user's input (:class:`CordasegError`)
are printed as one line naming the file, key or value, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cordaseg.errors import CordasegError

# Modules whose ``register(subparsers)`` adds subcommands, in the order of ``cordaseg --help``.
COMMAND_MODULES = (
    "cordaseg.models.cli",
    "cordaseg.engine.cli",
    "cordaseg.evaluation.cli",
    "cordaseg.data.world.cli",
    "cordaseg.depth.cli",
    "cordaseg.data.cli",
    "cordaseg.demo.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cordaseg",
        description="Domain-adaptive semantic segmentation guided by self-supervised depth (CorDA).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except CordasegError as err:
        print(f"cordaseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cordaseg {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
