"""``cordaseg demo``: the synthetic-to-real comparison of issue 6 (part 4) on a CPU, end to end."""

from __future__ import annotations

import argparse

from cordaseg.errors import CordasegError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train source-only, DACS, CorDA and a target oracle on the synthetic world (CPU, ~15 min)",
        description=(
            "Render the synthetic street world (cached in OUT/world), time each method for a few iterations, "
            "plan iteration counts that fit the budget, train source-only and a target oracle from scratch and "
            "DACS and CorDA from the source-only weights, score all four on the target val split, and write "
            "OUT/report.md, OUT/report.png and OUT/results.json."
        ),
    )
    p.add_argument("--out", default="cordaseg_demo", help="output folder (default: cordaseg_demo)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget of the whole demo in minutes (default 15)")
    p.add_argument("--config", default=None, help="YAML file of demo settings (e.g. configs/demo.yaml)")
    p.add_argument("--seed", type=int, default=None, help="seed of the runs and of the world's layouts")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="demo settings, e.g. world.num_source=200 crop=[96,96] adaptation_iterations=500")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from cordaseg.demo.pipeline import load_demo_config, run_demo

    overrides = list(args.overrides)
    if args.minutes is not None:
        if not args.minutes > 0:
            raise CordasegError(f"--minutes must be > 0, got {args.minutes}")
        overrides.append(f"minutes={args.minutes}")
    if args.seed is not None:
        overrides += [f"seed={args.seed}", f"world.seed={args.seed}"]
    cfg = load_demo_config(args.config, overrides)
    result = run_demo(cfg, args.out, quiet=args.quiet)
    if args.quiet:
        print(f"report: {result.report_md}")
    for name, method in result.methods.items():
        print(f"{name}: mIoU {method.miou:.2f}")
    return 0
