"""``cordaseg evaluate`` and ``cordaseg predict``: parse, then call the library.

``evaluate`` follows the paper's protocol (Cityscapes val, see :mod:`cordaseg.evaluation.evaluate`)
unless told otherwise; it also scores the source domain (a GTA5 or SYNTHIA tree, as the reference
can evaluate on GTA5). Under ``torchrun`` every process scores its share of the images and the
confusion matrix is summed with one all-reduce; rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch.utils.data import Subset

from cordaseg.cli.arguments import size_wxh
from cordaseg.config import ConfigError, apply_overrides, from_dict, load_yaml
from cordaseg.data.check import check_labels
from cordaseg.data.datasets import DatasetConfig, build_dataset, find_samples
from cordaseg.errors import CordasegError
from cordaseg.evaluation.evaluate import evaluate_segmentation, write_csv, write_json
from cordaseg.evaluation.inference import InferenceConfig
from cordaseg.evaluation.metrics import check_depth_bins
from cordaseg.evaluation.predict import PredictConfig, predict_files
from cordaseg.evaluation.report import write_report
from cordaseg.models.checkpoint import load_model
from cordaseg.runtime import distributed
from cordaseg.runtime.device import resolve_device
from cordaseg.runtime.outputs import check_folder


def _input_size(text: str) -> tuple[int, int] | None:
    return None if text.lower() == "native" else size_wxh(text)


def _scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated factors such as 0.75,1,1.25, got {text!r}") from None


def _depth_bins(text: str) -> tuple[float, ...] | None:
    if text.lower() == "none":
        return None
    try:
        return check_depth_bins(float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected increasing lower edges in metres such as 0,10,20,40 "
                                         f"(or none), got {text!r}: {err}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="cordaseg checkpoint (training or model) or a reference one")
    p.add_argument("--weights", choices=("student", "teacher"), default="student",
                   help="which weights of a training checkpoint (default: student, as the paper evaluates)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of an old reference checkpoint that weights_only loading cannot "
                        "read (runs code from the file; files that reference commands are refused anyway)")


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="forward-pass precision")
    g.add_argument("--scales", type=_scales, default=(1.0,),
                   help="multi-scale TTA factors, e.g. 0.75,1,1.25 (default: 1, the paper)")
    g.add_argument("--flip", action="store_true", help="add horizontally flipped passes (TTA)")
    g.add_argument("--sliding-window", action="store_true", help="infer on overlapping crops")
    g.add_argument("--window", type=size_wxh, default=(512, 512), help="sliding-window crop WxH (default 512x512)")
    g.add_argument("--stride", type=size_wxh, default=(341, 341), help="sliding-window step WxH (default 341x341)")


def _inference_config(args: argparse.Namespace):
    return InferenceConfig(precision=args.precision, scales=args.scales, flip=args.flip,
                           sliding_window=args.sliding_window, window=args.window, stride=args.stride)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint on a labelled validation set (mIoU 19/16/13, depth metrics)",
        description=(
            "Evaluate a checkpoint with the paper's protocol: images resized to 1024x512, logits upsampled "
            "bilinearly (align_corners=True) to the full-resolution labels; mIoU on 19, 16 and 13 classes, "
            "per-class IoU, pixel accuracy, and depth metrics of every depth head where the tree has depth. "
            "The dataset is the 'val' section of a training config (--config), a dataset config file, or a "
            "tree (--data-root): Cityscapes, or a GTA5 / SYNTHIA source-domain tree with --format (images "
            "resized to their 1280x720 training size, labels at full resolution). Runs under torchrun with "
            "the matrix summed over processes."
        ),
    )
    _add_model_args(p)
    p.add_argument("--config", help="training config YAML (its 'val' section is used) or a dataset config YAML")
    p.add_argument("--data-root", help="dataset root folder (Cityscapes: official or *_trainvaltest layout)")
    p.add_argument("--format", choices=("cityscapes", "gta5", "synthia"), default=None,
                   help="kind of the --data-root tree (default: cityscapes); gta5 / synthia score the source domain "
                        "(every frame, or list_file=FILE)")
    p.add_argument("--split", default=None, help="Cityscapes split folder with --data-root (default: val)")
    p.add_argument("--depth", choices=("auto", "none", "native", "stereo", "mono"), default="auto",
                   help="depth ground truth with --data-root: auto = the first kind whose files every frame has "
                        "(Cityscapes stereo, then mono; GTA5 / SYNTHIA their own depth files)")
    p.add_argument("--input-size", type=size_wxh, default=None,
                   help="resize images to WxH for the network (default: the dataset's eval_size: 1024x512 for "
                        "Cityscapes, 1280x720 for GTA5 and SYNTHIA)")
    p.add_argument("--output-size", choices=("full", "input"), default="full",
                   help="score at the full label resolution (paper) or at the input size (reference's cheaper variant)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass and process")
    p.add_argument("--num-workers", type=int, default=2, help="data loader workers")
    p.add_argument("--max-images", type=int, default=0, help="evaluate only the first N images (0: all)")
    p.add_argument("--out", help="write scores.json and scores.csv here")
    p.add_argument("--report", help="also write scores, confusion_matrix.png, class_iou.png and sample panels here")
    p.add_argument("--samples", type=int, default=8, help="sample panels in the report (default 8)")
    p.add_argument("--depth-bins", type=_depth_bins, default="0,10,20,40", metavar="EDGES",
                   help="lower edges in metres of the ranges of ground-truth depth scored separately where the "
                        "tree has depth (default 0,10,20,40: 0-10, 10-20, 20-40, 40+ m; none: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dataset config overrides, e.g. eval_size=[512,256]")
    _add_inference_args(p)
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "predict",
        help="segment images, folders or globs into colour, depth, overlay (and labelIds / logits) files",
        description=(
            "Predict every image of the inputs at its own size: color/ (Cityscapes palette), depth/ "
            "(colour-mapped target depth head), overlay/, and on request labelIds/ (Cityscapes label IDs "
            "for the official scripts and the benchmark server) and logits/ (.npy). Folders keep their "
            "relative layout."
        ),
    )
    _add_model_args(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--input-size", type=_input_size, default=(1024, 512),
                   help="resize images to WxH for the network, or 'native' (default 1024x512, the paper's)")
    p.add_argument("--label-ids", action="store_true", help="write labelIds/ PNGs (Cityscapes label IDs)")
    p.add_argument("--logits", action="store_true", help="write logits/ .npy (C, h, w) float32 at the input size")
    p.add_argument("--no-color", action="store_true", help="do not write color/")
    p.add_argument("--no-depth", action="store_true", help="do not write depth/")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_inference_args(p)
    p.set_defaults(func=run_predict)


def _dataset_section(args: argparse.Namespace) -> dict[str, Any]:
    """The validation DatasetConfig as a dict, from --config or --data-root."""
    if bool(args.config) == bool(args.data_root):
        raise CordasegError("give exactly one of --config FILE and --data-root DIR")
    if args.config and args.format:
        raise CordasegError("--format goes with --data-root; a config's dataset section names its own format")
    if args.config:
        data = load_yaml(args.config)
        if "val" in data:
            if not isinstance(data["val"], dict):
                raise ConfigError(f"{args.config}: 'val' must be a dataset section (format, root, split, ...)")
            data = dict(data["val"])
        elif "format" not in data and "root" not in data:
            raise ConfigError(f"{args.config}: neither a training config with a 'val' section nor a dataset config")
        if args.split:
            data["split"] = args.split
        return data
    fmt = args.format or "cityscapes"
    section = {"format": fmt, "root": args.data_root, "depth": "none" if args.depth == "auto" else args.depth}
    if fmt == "cityscapes":
        section["split"] = args.split or "val"
    elif args.split:
        raise CordasegError(f"--split names a Cityscapes split folder; {fmt} has none (select frames with "
                            "list_file=FILE)")
    return section


def _auto_depth(cfg):
    """With --depth auto: the first depth kind whose files every frame has (Cityscapes stereo, then
    mono; GTA5 / SYNTHIA their native files), else none."""
    for kind in ("stereo", "mono") if cfg.format == "cityscapes" else ("native",):
        candidate = replace(cfg, depth=kind)
        records = find_samples(candidate)
        if records and all(r.depth is not None and Path(r.depth).is_file() for r in records):
            return candidate
    return cfg


def build_eval_dataset(args: argparse.Namespace):
    """The validation dataset the arguments describe (items with the image resized for inference)."""
    data = apply_overrides(_dataset_section(args), args.overrides)
    if args.input_size is not None:
        data["eval_size"] = list(args.input_size)
    cfg = from_dict(DatasetConfig, data, prefix="val" if args.config else "")
    if args.data_root and args.depth == "auto":
        cfg = _auto_depth(cfg)
    dataset = build_dataset(cfg, train=False)
    if args.max_images:
        dataset = Subset(dataset, range(min(args.max_images, len(dataset))))
    return dataset


def check_evaluation_labels(dataset) -> None:
    """Refuse labels that would score wrongly (a size that does not pair with the image, values
    outside the label IDs, a train-ID file under the label-ID name), before any model is loaded."""
    if isinstance(dataset, Subset):
        base, records = dataset.dataset, [dataset.dataset.records[i] for i in dataset.indices]
    else:
        base, records = dataset, dataset.records
    check_labels(base.cfg, records)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.num_workers < 0 or args.max_images < 0 or args.samples < 0:
        raise CordasegError("--batch-size must be >= 1; --num-workers, --max-images and --samples >= 0")
    inference = _inference_config(args)
    for option, folder in (("--out", args.out), ("--report", args.report)):
        if folder:  # before the evaluation, not after it
            check_folder(folder, option)
    ctx = distributed.init(args.device)
    try:
        dataset = build_eval_dataset(args)
        check_evaluation_labels(dataset)
        model, model_cfg = load_model(args.checkpoint, weights=args.weights, map_location=ctx.device,
                                      trust_pickle=args.trust_pickle)
        result = evaluate_segmentation(
            model, dataset, device=ctx.device, num_classes=model_cfg.num_classes, output_size=args.output_size,
            batch_size=args.batch_size, distributed=ctx.enabled, progress=not args.no_progress,
            inference=inference, num_workers=args.num_workers,
            keep_samples=args.samples if args.report else 0, depth_bins=args.depth_bins,
        )
        if not ctx.is_main:
            return 0
        print(f"{args.checkpoint} ({args.weights}), output size {args.output_size}")
        print(result.format_table())
        for folder in (args.out, args.report):
            if folder:
                json_path = write_json(result, Path(folder) / "scores.json")
                csv_path = write_csv(result, Path(folder) / "scores.csv")
                print(f"wrote {json_path} and {csv_path}")
        if args.report:
            written = write_report(result, args.report)
            print(f"wrote {len(written)} pictures under {args.report}")
    finally:
        distributed.shutdown()
    return 0


def run_predict(args: argparse.Namespace) -> int:
    config = PredictConfig(
        input_size=args.input_size, inference=_inference_config(args), write_color=not args.no_color,
        write_depth=not args.no_depth, write_overlay=not args.no_overlay, write_label_ids=args.label_ids,
        write_logits=args.logits,
    )
    check_folder(args.out, "--out")
    device = resolve_device(args.device)
    model, _ = load_model(args.checkpoint, weights=args.weights, map_location=device,
                          trust_pickle=args.trust_pickle)
    written = predict_files(model, args.inputs, args.out, config, device=device, progress=not args.no_progress)
    print(f"wrote {len(written)} files under {args.out}")
    return 0
