"""Compare the stereo depth (.mat) of two Cityscapes trees frame by frame: AbsRel, RMSE and
delta < 1.25 of tree A against tree B, over B's valid pixels (0.1 m <= depth < --max-depth).

Used to score the self-supervised depth that ``cordaseg demo`` exports against the synthetic
world's stereo-matcher depth:

    python benchmarks/compare_depth_trees.py OUT/runs/self_supervised_depth/target OUT/world/target
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cordaseg.data.formats import read_stereo_depth_mat


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predicted", type=Path, help="Cityscapes tree whose depth is scored")
    parser.add_argument("reference", type=Path, help="Cityscapes tree with the reference depth")
    parser.add_argument("--split", default="train")
    parser.add_argument("--max-depth", type=float, default=80.0, help="ignore reference depth beyond (m)")
    parser.add_argument("--frames", type=int, default=0, help="first N frames only (0: all)")
    args = parser.parse_args(argv)
    pattern = f"depth/{args.split}/*/*_depth_stereoscopic.mat"
    reference = sorted(args.reference.glob(pattern))
    if args.frames:
        reference = reference[: args.frames]
    if not reference:
        raise SystemExit(f"{args.reference}: no {pattern} files")
    abs_rel, sq_err, within, count = 0.0, 0.0, 0.0, 0
    for ref_path in reference:
        pred_path = args.predicted / ref_path.relative_to(args.reference)
        if not pred_path.is_file():
            raise SystemExit(f"{pred_path}: missing (the reference tree has {ref_path})")
        truth, pred = read_stereo_depth_mat(ref_path), read_stereo_depth_mat(pred_path)
        valid = (truth >= 0.1) & (truth < args.max_depth) & np.isfinite(pred) & (pred > 0)
        t, p = truth[valid].astype(np.float64), pred[valid].astype(np.float64)
        abs_rel += float(np.sum(np.abs(p - t) / t))
        sq_err += float(np.sum((p - t) ** 2))
        within += float(np.sum(np.maximum(p / t, t / p) < 1.25))
        count += t.size
    print(f"{len(reference)} frames, {count} pixels: AbsRel {abs_rel / count:.3f}, "
          f"RMSE {np.sqrt(sq_err / count):.2f} m, delta<1.25 {within / count:.3f}")


if __name__ == "__main__":
    main()
