"""``cordaseg train --config FILE [key=value ...] [--resume [CHECKPOINT]]``.

Works the same in a single process and under ``torchrun`` (one process per GPU); see
:mod:`cordaseg.engine.config` for how the effective batch and learning rate scale.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from cordaseg.cli.arguments import is_override
from cordaseg.engine.config import check_sections, load_train_config
from cordaseg.engine.trainer import TrainingInterrupted, train


class _Overrides(argparse.Action):
    """The ``key=value`` list, extended (not replaced) each time argparse fills it, so that an
    override taken by ``--resume`` is kept."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *values])


class _ResumeAction(argparse.Action):
    """``--resume [CHECKPOINT]``: a ``key=value`` token after it is an override, never a path."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        if value is not None and is_override(value):
            namespace.overrides = [*(getattr(namespace, "overrides", None) or []), value]
            value = None
        setattr(namespace, self.dest, "latest" if value is None else value)


def resume_command(args: argparse.Namespace, checkpoint) -> str:
    """The command line that continues this run from ``checkpoint``."""
    return shlex.join(["cordaseg", "train", "--config", args.config, *args.overrides, "--resume", str(checkpoint)])


def _run(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config, args.overrides)
    if args.validate_only:
        check_sections(cfg)
        print(f"{args.config}: a valid training config (data folders, initial weights and the output folder are "
              "checked when training starts)")
        return 0
    resume = True if args.resume == "latest" else args.resume  # None: auto-resume if configured
    try:
        result = train(cfg, resume=resume, allow_config_change=args.allow_config_change, announce=True)
    except TrainingInterrupted as stop:
        print(f"cordaseg: {stop}", file=sys.stderr)
        if stop.checkpoint is not None:
            print(f"resume with: {resume_command(args, stop.checkpoint)}", file=sys.stderr)
        return 128 + int(stop.signum)
    if result.is_main:
        best = "n/a" if result.best_miou is None else f"{result.best_miou:.2f}"
        print(f"done: {result.iteration} iterations, best val mIoU {best}, last checkpoint {result.last_checkpoint}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation model (CorDA, DACS or source-only) from a config file",
        description=(
            "Train with the recipe of a YAML config (see configs/). Overrides are dotted keys, e.g. "
            "optim.iterations=1000 run.out_dir=runs/test. The run directory gets config.yaml, "
            "metrics.jsonl, TensorBoard events, run.json and checkpoints. Overrides and --resume may come in "
            "any order. Ctrl-C (or SIGTERM) stops after the current iteration with a checkpoint and prints "
            "the command that resumes it. For several GPUs launch with "
            "torchrun --nproc_per_node=N -m cordaseg.cli train ...; optim.batch_size is per GPU."
        ),
    )
    parser.add_argument("--config", required=True,
                        help="YAML training config, or the name of a shipped recipe (cordaseg configs list), "
                             "e.g. gta2cityscapes")
    parser.add_argument("overrides", nargs="*", action=_Overrides, metavar="key=value",
                        help="config overrides (YAML values), before or after the options")
    parser.add_argument(
        "--resume", nargs="?", action=_ResumeAction, default=None, metavar="CHECKPOINT",
        help="resume from CHECKPOINT, or from the newest checkpoint of the run in run.out_dir when no path is "
             "given (with run.auto_resume, the default, that also happens without --resume). Resuming from "
             "an older checkpoint of a folder starts a branch beside the newer ones, which are kept",
    )
    parser.add_argument(
        "--allow-config-change", action="store_true",
        help="continue a run in run.out_dir with a config that differs from the one it was trained with "
             "(the change is recorded in run.json); without it that is an error",
    )
    parser.add_argument("--validate-only", action="store_true",
                        help="check the config (every key and type, and the rules between its sections) without "
                             "reading data or training")
    parser.set_defaults(func=_run)
