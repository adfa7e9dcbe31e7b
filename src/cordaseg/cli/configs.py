"""``cordaseg configs list | show | copy | check | docs``: the recipes that ship with the package.

The recipes are the repository's ``configs/`` folder, installed inside the package
(:data:`cordaseg.config.RECIPES_DIR`), so a bare name works wherever a config file does
(``cordaseg train --config gta2cityscapes``). ``docs`` prints the reference of every key,
docs/config.md.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cordaseg.config import ConfigError, config_reference, load, recipe_names, resolve_config
from cordaseg.demo.config import DemoConfig, load_demo_config
from cordaseg.depth.trainer import DepthTrainConfig
from cordaseg.engine.config import TrainConfig, check_sections, load_train_config
from cordaseg.errors import CordasegError
from cordaseg.runtime.outputs import check_file


def _train(path: Path) -> Any:
    cfg = load_train_config(path)
    check_sections(cfg)
    return cfg


KINDS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "train": (_train, "cordaseg train --config"),
    "depth": (lambda path: load(DepthTrainConfig, path), "cordaseg depth train --config"),
    "demo": (lambda path: load_demo_config(path), "cordaseg demo --config"),
}
"""What a recipe configures, the loader that checks it and the command that takes it."""


def recipe_kind(path: Path) -> tuple[str, Any]:
    """(kind, loaded config) of a config file: the first kind whose loader accepts it; a
    ConfigError with every loader's objection otherwise."""
    objections = []
    for kind, (loader, _) in KINDS.items():
        try:
            return kind, loader(path)
        except ConfigError as err:
            objections.append(f"as a {kind} config: {err}")
    raise ConfigError(f"{path}: " + "; ".join(objections))


def _summary(path: Path) -> str:
    """The first comment line of a recipe's header."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.strip("# "):
            return line.lstrip("# ").strip()
    return ""


def _list(args: argparse.Namespace) -> int:
    names = recipe_names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        path = resolve_config(name)
        kind, _ = recipe_kind(path)
        print(f"{name:<{width}}  {kind:<5}  {_summary(path)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    print(resolve_config(args.name).read_text(encoding="utf-8"), end="")
    return 0


def _copy(args: argparse.Namespace) -> int:
    source = resolve_config(args.name)
    target = Path(args.path)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise CordasegError(f"PATH {target}: already exists; copy never replaces a file, choose another name")
    check_file(target, "PATH")
    shutil.copyfile(source, target)
    print(f"wrote {target}; use it with: {KINDS[recipe_kind(target)[0]][1]} {target}")
    return 0


def _check(args: argparse.Namespace) -> int:
    path = resolve_config(args.name)
    kind, _ = recipe_kind(path)
    print(f"{path}: a valid {kind} config (every key and type, and the rules between sections; data folders "
          "are not looked at)")
    return 0


def reference() -> str:
    """docs/config.md: every key of the training, depth and demo configs with its meaning."""
    header = (
        "# Configuration reference\n\n"
        "Every key of the three kinds of config file, with its type, its default and what it does,\n"
        "generated from the docstrings of the config dataclasses by `cordaseg configs docs`\n"
        "(`tests/test_recipes.py` checks that this file is up to date). Keys are written as dotted\n"
        "paths, the form `key=value` overrides take on the command line. The shipped recipes\n"
        "(`cordaseg configs list`) set the paper's values.\n"
    )
    parts = [
        config_reference(TrainConfig, title="Training: `cordaseg train`"),
        config_reference(DepthTrainConfig, title="Self-supervised depth: `cordaseg depth train`"),
        config_reference(DemoConfig, title="The CPU demo: `cordaseg demo`"),
    ]
    return header + "\n" + "\n".join(parts).rstrip() + "\n"


def _docs(args: argparse.Namespace) -> int:
    print(reference(), end="")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "configs", help="the recipes that ship with the package: list, show, copy, check; the key reference",
        description="The recipes of the paper and its baselines ship inside the package; a bare name such as "
                    "gta2cityscapes works wherever a config file does (cordaseg train --config gta2cityscapes).")
    commands = parser.add_subparsers(dest="configs_command", metavar="CONFIGS_COMMAND", required=True)
    commands.add_parser("list", help="name, kind and summary of every shipped recipe").set_defaults(func=_list)
    show = commands.add_parser("show", help="print a shipped recipe")
    show.add_argument("name", help="recipe name (or a config file)")
    show.set_defaults(func=_show)
    copy = commands.add_parser("copy", help="copy a shipped recipe to a file to edit (an existing file is refused)")
    copy.add_argument("name", help="recipe name")
    copy.add_argument("path", help="new file, or a folder to write NAME.yaml into")
    copy.set_defaults(func=_copy)
    check = commands.add_parser("check", help="validate a recipe or config file without reading any data")
    check.add_argument("name", help="recipe name or config file")
    check.set_defaults(func=_check)
    commands.add_parser("docs", help="print the reference of every config key (docs/config.md)").set_defaults(
        func=_docs)
