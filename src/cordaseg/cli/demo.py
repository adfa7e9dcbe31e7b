"""``cordaseg demo``: the synthetic-to-real comparison on a CPU, end to end."""

from __future__ import annotations

import argparse

from cordaseg.demo.config import load_demo_config
from cordaseg.demo.pipeline import run_demo
from cordaseg.errors import CordasegError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train source-only, DACS, CorDA and a target oracle on the synthetic world (CPU, ~15 min)",
        description=(
            "Render the synthetic street world (cached in OUT/world), train source-only and a target oracle from "
            "scratch and DACS and CorDA from the source-only weights, score all four on the target val split, and "
            "write OUT/report.md, OUT/report.png and OUT/results.json. The iteration counts are fixed (about 15 "
            "minutes on 2 idle CPU cores; the same seed gives the same numbers however busy the machine is); "
            "--minutes plans them from a time budget instead."
        ),
    )
    p.add_argument("--out", default="cordaseg_demo", help="output folder (default: cordaseg_demo)")
    p.add_argument("--minutes", type=float, default=None,
                   help="time-budget mode: time each method, then plan iteration counts that fit this many minutes "
                        "(DACS and CorDA never below adaptation_floor, 200); the results then depend on the machine")
    p.add_argument("--config", default=None, help="YAML file of demo settings (e.g. configs/demo.yaml)")
    p.add_argument("--seed", type=int, default=None, help="seed of the runs and of the world's layouts")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="demo settings, e.g. world.num_source=200 crop=[96,96] adaptation_iterations=500")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_demo_command)


def command_overrides(overrides: list[str], minutes: float | None, seed: int | None) -> list[str]:
    """The demo settings the command line asks for: ``--minutes`` switches to time-budget mode
    (every iteration count 0, i.e. planned; counts given as KEY=VALUE still win), ``--seed`` seeds
    the runs and the world's layouts."""
    overrides = list(overrides)
    if minutes is not None:
        if not minutes > 0:
            raise CordasegError(f"--minutes must be > 0, got {minutes}")
        overrides = ["source_iterations=0", "adaptation_iterations=0", "depth_iterations=0", *overrides,
                     f"minutes={minutes}"]
    if seed is not None:
        overrides += [f"seed={seed}", f"world.seed={seed}"]
    return overrides


def run_demo_command(args: argparse.Namespace) -> int:
    cfg = load_demo_config(args.config, command_overrides(args.overrides, args.minutes, args.seed))
    result = run_demo(cfg, args.out, quiet=args.quiet)
    if args.quiet:
        print(f"report: {result.report_md}")
    for name, method in result.methods.items():
        print(f"{name}: mIoU {method.miou:.2f}")
    return 0
