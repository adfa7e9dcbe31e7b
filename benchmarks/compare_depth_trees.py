"""Compare the stereo depth (.mat) of two Cityscapes trees frame by frame: AbsRel, RMSE and
delta < 1.25 of tree A against tree B, over B's valid pixels (0.1 m <= depth < --max-depth).

Used to score the self-supervised depth that ``cordaseg demo`` exports against the synthetic
world's stereo-matcher depth:

    python benchmarks/compare_depth_trees.py OUT/runs/self_supervised_depth/target OUT/world/target

The comparison is :func:`cordaseg.depth.evaluate.compare_depth_trees` with no alignment; ``cordaseg
depth check --root A --reference B`` prints the same figures with the other alignments and formats.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cordaseg.depth.evaluate import compare_depth_trees
from cordaseg.errors import CordasegError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predicted", type=Path, help="Cityscapes tree whose depth is scored")
    parser.add_argument("reference", type=Path, help="Cityscapes tree with the reference depth")
    parser.add_argument("--split", default="train")
    parser.add_argument("--max-depth", type=float, default=80.0, help="ignore reference depth beyond (m)")
    parser.add_argument("--frames", type=int, default=0, help="first N frames only (0: all)")
    args = parser.parse_args(argv)
    try:
        comparison = compare_depth_trees(args.predicted, args.reference, "stereo-mat", split=args.split,
                                         max_depth=args.max_depth, frames=args.frames, alignments=("none",))
    except CordasegError as err:
        raise SystemExit(str(err)) from err
    s = comparison.errors["none"].summary()
    print(f"{comparison.frames} frames, {s['pixels']} pixels: AbsRel {s['abs_rel']:.3f}, "
          f"RMSE {s['rmse']:.2f} m, delta<1.25 {s['delta1']:.3f}")


if __name__ == "__main__":
    main()
