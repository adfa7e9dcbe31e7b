"""``cordaseg world``: render the synthetic street world as GTA5 and Cityscapes trees."""

from __future__ import annotations

import argparse

from cordaseg.cli.arguments import size_wxh
from cordaseg.errors import CordasegError
from cordaseg.world.export import generate_world, preview

# Beyond this, extrapolated scene parameters leave their valid ranges (negative counts and spans).
MAX_SHIFT = 2.0


def _shift(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= MAX_SHIFT:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be between 0 (no gap) and {MAX_SHIFT:g}, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "world",
        help="render the synthetic street world: a GTA5-format source and a Cityscapes-format target",
        description=(
            "Render random streets in two domains with a real appearance and geometry gap: the 'synthetic' "
            "source as a GTA5 tree (OUT/source) and the 'real-looking' target as a Cityscapes tree "
            "(OUT/target, with right images, stereo depth .mat files and camera JSON). A second run with "
            "the same options reuses what is there (OUT/world.json records it)."
        ),
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--source", type=int, default=500, help="source (GTA5-format) frames (default 500)")
    p.add_argument("--train", type=int, default=500, help="target train frames, stereo pairs (default 500)")
    p.add_argument("--val", type=int, default=100, help="target val frames with labels (default 100)")
    p.add_argument("--size", type=size_wxh, default=(256, 128), help="frame size WxH (default 256x128)")
    p.add_argument("--shift", type=_shift, default=1.0,
                   help=f"strength of the domain gap: 0 none, 1 full, up to {MAX_SHIFT:g} exaggerated (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the layouts (default 0)")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: one per CPU)")
    p.add_argument("--preview", default=None, metavar="PNG",
                   help="also write a grid of 4 source and target frames (image, labels, stereo depth) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_world)


def run_world(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 0:
        raise CordasegError(f"--workers must be >= 0, got {args.workers}")
    source, target = generate_world(
        args.out, args.source, args.train, args.val, size=args.size, shift=args.shift, seed=args.seed,
        progress=not args.quiet, workers=args.workers,
    )
    print(f"source (GTA5 format): {source}")
    print(f"target (Cityscapes format): {target}")
    if args.preview:
        print(f"preview: {preview(args.preview, size=args.size, shift=args.shift, seed=args.seed)}")
    return 0
