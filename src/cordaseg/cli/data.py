"""``cordaseg data synth`` and ``cordaseg data check``: dataset trees of docs/data-formats.md.

``synth`` writes a small tree in a real layout and encoding (:mod:`cordaseg.data.synth`);
``check`` scans a tree and reports every problem with its file (:mod:`cordaseg.data.check`),
exiting 0 when clean and 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

import cv2

from cordaseg.cli.arguments import positive_int, size_wxh
from cordaseg.config import ConfigError
from cordaseg.data.check import check_config_for_split, check_tree
from cordaseg.data.datasets import DatasetConfig
from cordaseg.data.synth import FORMATS, REAL_SIZES, generate_tree
from cordaseg.depth.data import check_depth_tree
from cordaseg.runtime.outputs import check_empty_or_new_folder

DEPTH_LAYOUTS = ("cityscapes-stereo", "video")


def _synth(args: argparse.Namespace) -> int:
    check_empty_or_new_folder(args.out, "--out", overwrite=args.overwrite)
    depth = args.depth or "both"
    out = generate_tree(args.format, args.out, args.num, size=args.size, seed=args.seed, depth=depth,
                        layout=args.layout)
    width, height = args.size or REAL_SIZES[args.format]
    per_split = " per split (train, val)" if args.format == "cityscapes" else ""
    print(f"wrote {args.num} {args.format} frames{per_split} of {width}x{height} to {out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    # Broken files are reported one line each below; OpenCV's own log lines would only add noise.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

    if args.format in DEPTH_LAYOUTS:  # training trees of self-supervised depth (cordaseg depth)
        split = "train" if args.split == "all" else args.split
        offsets = tuple(int(v) for v in args.frame_offsets.split(","))
        report = check_depth_tree(args.format, args.root, split=split, frame_offsets=offsets)
        return 0 if report.print(f"{args.format} ({args.root})") else 1

    try:
        base = DatasetConfig(format=args.format, root=args.root,
                             depth=args.depth or "native", synthia_labels=args.synthia_labels,
                             list_file=args.list_file)
    except ConfigError as err:
        print(f"cordaseg data check: {err}", file=sys.stderr)
        return 1
    if args.format == "cityscapes":
        splits = ("train", "val") if args.split == "all" else (args.split,)
        configs = [check_config_for_split(base, split) for split in splits]
    else:
        configs = [base]
    clean = True
    for cfg in configs:
        report = check_tree(cfg, workers=args.workers, progress=not args.no_progress)
        where = f"{cfg.format} {cfg.split}" if cfg.format == "cityscapes" else cfg.format
        clean = report.print(f"{where} ({cfg.root})") and clean
    return 0 if clean else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="generate and check dataset trees (GTA5, SYNTHIA, Cityscapes)")
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    synth = commands.add_parser(
        "synth", help="write a small tree in a real dataset layout and encoding",
        description="Write a small dataset tree with the exact layout and file encodings of the real "
                    "dataset, filled with simple street scenes whose depth matches their geometry.")
    synth.add_argument("--format", required=True, choices=FORMATS, help="dataset layout to write")
    synth.add_argument("--out", required=True, help="output folder (new or empty)")
    synth.add_argument("--overwrite", action="store_true",
                       help="write into a folder that already holds files (frames of the same names are replaced)")
    synth.add_argument("--num", type=positive_int, default=4, help="frames (per split for Cityscapes; default 4)")
    synth.add_argument("--size", type=size_wxh, default=None,
                       help="frame size WxH (default: the real size of the format)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--depth", choices=("stereo", "mono"), default=None,
                       help="Cityscapes depth files to write (default: both kinds)")
    synth.add_argument("--layout", choices=("official", "trainvaltest"), default="official",
                       help="Cityscapes folder names (default official)")
    synth.set_defaults(func=_synth)

    check = commands.add_parser(
        "check", help="scan a dataset tree and report every problem with its file",
        description="Decode every frame of a tree and report missing partners, unreadable files, sizes "
                    "that do not pair, wrong bit depth or channels, unknown label values and all-invalid "
                    "depth. Exit status 0 when clean, 1 otherwise.")
    check.add_argument("--format", required=True, choices=FORMATS + DEPTH_LAYOUTS,
                       help="dataset layout of the tree; cityscapes-stereo and video are the training trees "
                            "of self-supervised depth (left/right images + camera files, ordered frames + "
                            "intrinsics.json)")
    check.add_argument("--frame-offsets", default="-1,1",
                       help="video layout: neighbouring frames each frame needs (default -1,1)")
    check.add_argument("--root", required=True, help="root folder of the tree")
    check.add_argument("--depth", choices=("stereo", "mono", "none"), default=None,
                       help="Cityscapes depth kind to check on train (default stereo); 'none' skips depth")
    check.add_argument("--split", choices=("train", "val", "all"), default="all",
                       help="Cityscapes split(s) to check (default all; val is checked without depth)")
    check.add_argument("--synthia-labels", choices=("mapped", "raw"), default="mapped",
                       help="SYNTHIA label files to check (default mapped)")
    check.add_argument("--list-file", default=None, help="check only the frames listed in this file")
    check.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1),
                       help="decoding threads (default: up to 8)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=_check)
