"""``cordaseg depth train | export | check``: self-supervised depth for CorDA (spec sections 5 and 8).

``train`` runs :func:`cordaseg.depth.trainer.train_depth` from a YAML config with ``key=value``
overrides; ``export`` writes the depth files of a tree in one of the encodings CorDA reads
(:mod:`cordaseg.depth.export`); ``check`` validates a stereo or video training tree
(:func:`cordaseg.depth.data.check_depth_tree`), exiting 0 when clean and 1 otherwise.
"""

from __future__ import annotations

import argparse

from cordaseg.cli_types import size_wxh


def _train(args: argparse.Namespace) -> int:
    from cordaseg.config import load
    from cordaseg.depth.trainer import DepthTrainConfig, train_depth

    cfg = load(DepthTrainConfig, args.config, args.overrides)
    checkpoint = train_depth(cfg, progress=not args.quiet)
    print(f"wrote {checkpoint}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from cordaseg.depth.export import export_depth

    summary = export_depth(args.checkpoint, args.data, args.format, out_root=args.out, split=args.split,
                           size=args.size, scale=args.scale, median_depth_m=args.median_depth,
                           max_valid_depth=args.max_valid_depth, device=args.device,
                           progress=not args.quiet)
    kind = "metric" if summary.metric else "scale-free"
    print(f"wrote {summary.files} {args.format} files under {summary.out_root} ({kind} depth, scale "
          f"{summary.scale:.4g}; {100 * summary.saturated_fraction:.2f}% of pixels nearer than the 16-bit code)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from cordaseg.depth.data import check_depth_tree

    offsets = tuple(int(v) for v in args.frame_offsets.split(","))
    report = check_depth_tree(args.layout, args.root, split=args.split, frame_offsets=offsets)
    return 0 if report.print(f"{args.layout} ({args.root})") else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("depth", help="self-supervised depth: train, export depth files, check trees")
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
        description="Predict depth for every image of a Cityscapes or GTA5 tree and write it where and how "
                    "'cordaseg train' reads it: cityscapes-mono (disparity/ PNGs), gta-disparity "
                    "(GTA5 disparity/ PNGs) or stereo-mat (depth/*_depth_stereoscopic.mat).")
    export.add_argument("--checkpoint", required=True, help="depth checkpoint from 'cordaseg depth train'")
    export.add_argument("--data", required=True, help="root of the tree whose images get depth")
    export.add_argument("--format", required=True, choices=("cityscapes-mono", "gta-disparity", "stereo-mat"),
                        help="depth file encoding (spec section 5)")
    export.add_argument("--out", default=None, help="root to write under (default: the --data tree itself)")
    export.add_argument("--split", default="train", help="Cityscapes split (default train)")
    export.add_argument("--size", type=size_wxh, default=None,
                        help="inference size WxH (default: the training size)")
    export.add_argument("--scale", type=float, default=None,
                        help="multiply predicted depth by this (default: 1 for stereo-trained checkpoints; "
                             "median rule for monocular ones)")
    export.add_argument("--median-depth", type=float, default=10.0,
                        help="median depth in metres that scale-free depth is scaled to (default 10)")
    export.add_argument("--max-valid-depth", type=float, default=None,
                        help="write pixels farther than this (metres) as invalid (default: none)")
    export.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(func=_export)

    check = commands.add_parser(
        "check", help="check a stereo (Cityscapes) or video training tree",
        description="Report missing right views, missing or malformed camera / intrinsics files, sizes "
                    "that do not pair and sequences too short. Exit status 0 when clean, 1 otherwise.")
    check.add_argument("--layout", required=True, choices=("cityscapes-stereo", "video"), help="tree layout")
    check.add_argument("--root", required=True, help="root folder of the tree")
    check.add_argument("--split", default="train", help="Cityscapes split (default train)")
    check.add_argument("--frame-offsets", default="-1,1", help="video source frames (default -1,1)")
    check.set_defaults(func=_check)
