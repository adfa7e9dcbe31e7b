"""``cordaseg depth train | export | check``: depth for CorDA (README, "Self-supervised depth").

``train`` runs :func:`cordaseg.depth.trainer.train_depth` from a YAML config with ``key=value``
overrides; ``export`` writes the depth files of a tree in one of the encodings CorDA reads
(:mod:`cordaseg.depth.export`), from a self-supervised checkpoint or a pretrained depth model
(:mod:`cordaseg.depth.pretrained`); ``check`` validates a stereo or video training tree
(:func:`cordaseg.depth.data.check_depth_tree`), exiting 0 when clean and 1 otherwise, or with
``--reference`` scores a tree's depth files against another tree's
(:func:`cordaseg.depth.evaluate.compare_depth_trees`).
"""

from __future__ import annotations

import argparse
import os

from cordaseg.cli.arguments import positive_int, size_wxh
from cordaseg.config import load
from cordaseg.depth.data import check_depth_tree
from cordaseg.depth.evaluate import compare_depth_trees
from cordaseg.depth.export import export_depth, export_pretrained_depth
from cordaseg.depth.trainer import DepthTrainConfig, train_depth
from cordaseg.errors import CordasegError

FORMAT_CHOICES = ("cityscapes-mono", "gta-disparity", "stereo-mat", "synthia-depth")


def _train(args: argparse.Namespace) -> int:
    cfg = load(DepthTrainConfig, args.config, args.overrides)
    checkpoint = train_depth(cfg, progress=not args.quiet)
    print(f"wrote {checkpoint}")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        for option, value in (("--output", args.output), ("--shift", args.shift),
                              ("--camera-height", args.camera_height), ("--ground-band", args.ground_band),
                              ("--ground-margin", args.ground_margin)):
            if value is not None:
                raise CordasegError(f"{option} applies to --model only")
        if args.align != "auto":
            raise CordasegError("--align applies to --model only")
        summary = export_depth(args.checkpoint, args.data, args.format, out_root=args.out, split=args.split,
                               size=args.size, scale=args.scale, median_depth_m=args.median_depth,
                               max_valid_depth=args.max_valid_depth, device=args.device,
                               progress=not args.quiet, workers=args.workers)
    else:
        summary = export_pretrained_depth(
            args.model, args.data, args.format, out_root=args.out, split=args.split, output=args.output,
            align=args.align, scale=args.scale, shift=args.shift, size=args.size, median_depth_m=args.median_depth,
            max_valid_depth=args.max_valid_depth, batch_size=args.batch_size, workers=args.workers,
            device=args.device, progress=not args.quiet, camera_height=args.camera_height,
            ground_band=args.ground_band, ground_margin=args.ground_margin)
    kind = "metric" if summary.metric else "scale-free"
    resumed = f", {summary.skipped} already written by an interrupted run" if summary.skipped else ""
    print(f"wrote {summary.files - summary.skipped} {args.format} files under {summary.out_root}{resumed} "
          f"({kind} depth: {summary.alignment}; {100 * summary.saturated_fraction:.2f}% of pixels nearer than "
          "the encoding reaches)")
    return 0


def _check(args: argparse.Namespace) -> int:
    if args.reference is not None:
        if args.format is None:
            raise CordasegError("--reference needs --format (the encoding of the depth files under --root)")
        comparison = compare_depth_trees(args.root, args.reference, args.format, args.reference_format,
                                         split=args.split, max_depth=args.max_depth, frames=args.frames)
        print(f"{args.format} depth of {args.root} against {args.reference_format or args.format} depth of "
              f"{args.reference} ({comparison.frames} frames, reference depth 0.1-{args.max_depth:g} m):")
        for line in comparison.lines():
            print(f"  {line}")
        return 0

    if args.layout is None:
        raise CordasegError("--layout is required (or --reference to compare depth trees)")
    offsets = tuple(int(v) for v in args.frame_offsets.split(","))
    report = check_depth_tree(args.layout, args.root, split=args.split, frame_offsets=offsets)
    return 0 if report.print(f"{args.layout} ({args.root})") else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("depth", help="depth for CorDA: train, export depth files, check trees")
    commands = parser.add_subparsers(dest="depth_command", metavar="DEPTH_COMMAND", required=True)

    train = commands.add_parser(
        "train", help="train self-supervised depth from stereo pairs and/or video",
        description="Train a Monodepth2-style depth network from stereo pairs (metric), monocular video "
                    "with a pose network (scale-free), or both, from a YAML config plus key=value overrides.")
    train.add_argument("--config", required=True, help="YAML config (see configs/depth_*.yaml)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.iterations=1000")
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.set_defaults(func=_train)

    export = commands.add_parser(
        "export", help="write depth files in an encoding CorDA reads",
        description="Predict depth for every image of a Cityscapes, GTA5 or SYNTHIA tree, with a self-supervised "
                    "checkpoint or a pretrained transformers depth model, and write it where and how "
                    "'cordaseg train' reads it: cityscapes-mono (disparity/ PNGs), gta-disparity (GTA5 "
                    "disparity/ PNGs), stereo-mat (depth/*_depth_stereoscopic.mat) or synthia-depth (SYNTHIA "
                    "Depth/Depth/ PNGs). A rerun of an interrupted export skips the files already written.")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="depth checkpoint from 'cordaseg depth train'")
    source.add_argument("--model", help="local folder of a transformers depth-estimation model "
                                        "(needs pip install 'cordaseg[depth]')")
    export.add_argument("--data", required=True, help="root of the tree whose images get depth")
    export.add_argument("--format", required=True, choices=FORMAT_CHOICES, help="depth file encoding (README, Datasets)")
    export.add_argument("--out", default=None, help="root to write under (default: the --data tree itself)")
    export.add_argument("--split", default="train", help="Cityscapes split (default train)")
    export.add_argument("--size", type=size_wxh, default=None,
                        help="inference size WxH (default: the checkpoint's training size, or the model's image "
                             "processor)")
    export.add_argument("--output", choices=("relative", "metric"), default=None,
                        help="--model: what the model predicts, relative disparity or metric depth (default: "
                             "from its config)")
    export.add_argument("--align", choices=("auto", "median", "stereo", "camera-height"), default="auto",
                        help="--model, relative output: median rule (scale-free, default for the disparity PNGs), "
                             "a per-frame fit to Cityscapes stereo (default for stereo-mat) or a per-frame fit to "
                             "the flat road seen from the camera's height (Cityscapes camera/*.json)")
    export.add_argument("--camera-height", type=float, default=None, metavar="METRES",
                        help="--align camera-height: the camera's height above the road (default: each camera "
                             "file's extrinsic.z; Cityscapes: about 1.22)")
    export.add_argument("--ground-band", type=float, default=None, metavar="FRACTION",
                        help="--align camera-height: height of the road region fitted, a fraction of the image "
                             "rows above the bottom margin (default 0.25; central half of the columns)")
    export.add_argument("--ground-margin", type=float, default=None, metavar="FRACTION",
                        help="--align camera-height: bottom rows left out, a fraction of the image height, e.g. "
                             "the ego vehicle's bonnet (default 0; Cityscapes: about 0.2)")
    export.add_argument("--scale", type=float, default=None,
                        help="depth output: multiply depth by this (default: 1 for metric sources; median rule "
                             "for monocular checkpoints); relative disparity p: 1/Z = scale * p + shift")
    export.add_argument("--shift", type=float, default=None, help="relative disparity: see --scale (default 0)")
    export.add_argument("--median-depth", type=float, default=10.0,
                        help="median depth in metres that scale-free depth is scaled to (default 10)")
    export.add_argument("--max-valid-depth", type=float, default=None,
                        help="write pixels farther than this (metres) as invalid (default: none)")
    export.add_argument("--batch-size", type=positive_int, default=8, help="--model: images per batch (default 8)")
    export.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads reading images ahead of the model (0: none; default up to 4)")
    export.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(func=_export)

    check = commands.add_parser(
        "check", help="check a stereo (Cityscapes) or video training tree, or compare depth trees",
        description="With --layout: report missing right views, missing or malformed camera / intrinsics files, "
                    "sizes that do not pair and sequences too short; exit status 0 when clean, 1 otherwise. "
                    "With --reference: AbsRel, RMSE and delta<1.25 of the depth files under --root against "
                    "those of the reference tree, with no alignment, per-frame median scaling and per-frame "
                    "scale-and-shift of inverse depth.")
    check.add_argument("--layout", choices=("cityscapes-stereo", "video"), default=None, help="tree layout")
    check.add_argument("--root", required=True, help="root folder of the tree")
    check.add_argument("--split", default="train", help="Cityscapes split (default train)")
    check.add_argument("--frame-offsets", default="-1,1", help="video source frames (default -1,1)")
    check.add_argument("--reference", default=None, help="tree whose depth files --root's are compared with")
    check.add_argument("--format", choices=FORMAT_CHOICES, default=None, help="encoding of --root's depth files")
    check.add_argument("--reference-format", choices=FORMAT_CHOICES, default=None,
                       help="encoding of the reference's depth files (default: --format)")
    check.add_argument("--max-depth", type=float, default=80.0, help="ignore reference depth beyond (m; default 80)")
    check.add_argument("--frames", type=int, default=0, help="first N frames only (default 0: all)")
    check.set_defaults(func=_check)
