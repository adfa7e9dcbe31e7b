"""``cordaseg train --config FILE [key=value ...] [--resume [CHECKPOINT]]`` (issue 4, part 3).

Works the same in a single process and under ``torchrun`` (one process per GPU); see
:mod:`cordaseg.engine.config` for how the effective batch and learning rate scale.
"""

from __future__ import annotations

import argparse

from cordaseg.engine.config import load_train_config


def _run(args: argparse.Namespace) -> int:
    from cordaseg.engine.trainer import train  # heavy imports only when the command runs

    cfg = load_train_config(args.config, args.overrides)
    resume = True if args.resume == "latest" else args.resume  # None: auto-resume if configured
    result = train(cfg, resume=resume)
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
            "metrics.jsonl, TensorBoard events and checkpoints. For several GPUs launch with "
            "torchrun --nproc_per_node=N -m cordaseg.cli train ...; optim.batch_size is per GPU."
        ),
    )
    parser.add_argument("--config", required=True, help="YAML training config (e.g. configs/gta2cityscapes.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (YAML values)")
    parser.add_argument(
        "--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
        help="resume from CHECKPOINT, or from the newest checkpoint in run.out_dir when no path is given "
             "(with run.auto_resume, the default, that also happens without --resume)",
    )
    parser.set_defaults(func=_run)
