"""The ``cordaseg`` command line: thin subcommands that parse arguments and call the library.

Each subcommand lives in a module of this package with a ``register(subparsers)`` function;
this file collects them, and owns the one error path of every command: an error
about the user's input (:class:`CordasegError`) or an expected file-system failure (a missing or
read-only path, a full disk, ...) is printed as one line ``cordaseg: error: <file or key>: <cause>``
with exit status 2; the traceback only with ``--debug``. Warnings of the package print as one
line ``cordaseg: warning: ...`` (without the source line Python's warnings module adds).

``key=value`` overrides may come before and after options (``train a=1 --resume CKPT b=2``).
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from pathlib import Path

from cordaseg.cli import configs, convert, data, demo, depth, evaluate, train, world
from cordaseg.cli.arguments import is_override
from cordaseg.errors import CordasegError, one_line

# The modules whose ``register(subparsers)`` adds subcommands, in the order of ``cordaseg --help``.
COMMANDS = (convert, train, evaluate, world, depth, data, demo, configs)

# File-system failures that are about the user's paths or machine, not bugs: one line, no traceback.
EXPECTED_ERRNOS = frozenset({
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR,
    errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG,
})
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cordaseg",
        description="Domain-adaptive semantic segmentation guided by self-supervised depth (CorDA).",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def _plain_warnings(show_other):
    """A ``warnings.showwarning`` that prints the package's own warnings as one line and hands
    the others to ``show_other``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if str(Path(filename).resolve()).startswith(_PACKAGE_DIR):
            print(f"cordaseg: warning: {message}", file=file or sys.stderr)
        else:
            show_other(message, category, filename, lineno, file, line)

    return show


def _end_progress_bars() -> None:
    """Close progress bars that an error left open, so that the message starts on its own line."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.close()


def _fail(message: str) -> int:
    _end_progress_bars()
    print(f"cordaseg: error: {message}", file=sys.stderr)
    return 2


def _os_error_message(err: OSError) -> str:
    cause = err.strerror or str(err)
    if err.filename is None:
        return cause
    target = f" -> {err.filename2}" if getattr(err, "filename2", None) else ""
    return f"{err.filename}{target}: {cause}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    debug = args.debug or "--debug" in extras
    extras = [token for token in extras if token != "--debug"]
    if extras:
        # argparse stops filling a positional list at the first option; the rest of the overrides
        # (``train a=1 --resume CKPT b=2``) arrive here, in order.
        if hasattr(args, "overrides") and all(is_override(t) for t in extras):
            args.overrides = [*(args.overrides or []), *extras]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _plain_warnings(warnings.showwarning)
        try:
            status = args.func(args)
        except CordasegError as err:
            if debug:
                raise
            return _fail(one_line(str(err)))
        except OSError as err:
            if debug or err.errno not in EXPECTED_ERRNOS:
                raise
            return _fail(_os_error_message(err))
        except KeyboardInterrupt:
            _end_progress_bars()
            print(f"cordaseg {args.command}: interrupted", file=sys.stderr)
            return 130
    return int(status or 0)

