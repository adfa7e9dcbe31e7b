"""Benchmark: milliseconds per image of test-time inference (docs/method.md, "Evaluation").

Times the two code paths that run a trained model on images, on synthetic inputs of
``--size`` (height, width; default 1024x2048, a full Cityscapes frame) with a randomly
initialised network of the paper's size:

- ``evaluate``: :func:`cordaseg.evaluation.evaluate.evaluate_segmentation` over in-memory items
  (collate, copy to the device, forward, upsampling to the label size, argmax, confusion matrix);
- ``predict``: :func:`cordaseg.evaluation.predict.predict_image` on a uint8 BGR array (normalise,
  copy, forward, upsampling, argmax, copy of the train IDs and depth back to the host).

One JSON line per (path, precision, channels_last): ms/image over ``--images`` images after a
warm-up call, peak memory (CUDA ``max_memory_allocated``; on CPU the process's peak RSS).

    .venv/bin/python benchmarks/inference.py --device cuda --precision fp32 bf16 --channels-last 0 1
    .venv/bin/python benchmarks/inference.py --tiny        # CPU preset for CI, a few seconds

The reference takes 38 ms per 1024x2048 image in fp32 on an H200; see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import time

import numpy as np
import torch
from presets import add_model_args, apply_preset, benchmark_device, flags

from cordaseg.evaluation.evaluate import evaluate_segmentation
from cordaseg.evaluation.inference import InferenceConfig
from cordaseg.evaluation.predict import PredictConfig, predict_image
from cordaseg.models.corda import ModelConfig, build_model

# Values of the options left unset: a full frame with the paper's network, and the --tiny CPU preset.
FULL = {"device": "auto", "backbone": 101, "backbone_width": 64, "head_width": 256, "size": [1024, 2048],
        "images": 20, "threads": 0}
TINY = {"device": "cpu", "backbone": 18, "backbone_width": 16, "head_width": 32, "size": [64, 128],
        "images": 2, "threads": 1}


def synthetic_items(count: int, height: int, width: int, num_classes: int) -> list[dict]:
    """Validation-like items: normalised image (3, H, W) float32, train-ID label (H, W) int64."""
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, height, width, generator=g) * 255.0 - 120.0,
             "label": torch.randint(0, num_classes, (height, width), generator=g),
             "name": f"frame_{k}"} for k in range(count)]


def time_evaluate(model, items, device, precision: str) -> float:
    """Seconds per image through evaluate_segmentation (its final .item() waits for the device)."""
    evaluate_segmentation(model, items[:1], device=device, num_classes=model.cfg.num_classes,
                          precision=precision, progress=False)  # warm-up (cudnn.benchmark, allocator)
    start = time.perf_counter()
    evaluate_segmentation(model, items, device=device, num_classes=model.cfg.num_classes,
                          precision=precision, progress=False)
    return (time.perf_counter() - start) / len(items)


def time_predict(model, images: list[np.ndarray], device, precision: str) -> float:
    """Seconds per image through predict_image (it returns host arrays, so each call waits)."""
    config = PredictConfig(input_size=None, inference=InferenceConfig(precision=precision))
    predict_image(model, images[0], config, device)  # warm-up
    start = time.perf_counter()
    for image in images:
        predict_image(model, image, config, device)
    return (time.perf_counter() - start) / len(images)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="network input size: 1024 2048 (tiny: 64 128)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--channels-last", nargs="+", type=flags, default=[False],
                        help="0 and/or 1: the model's weights in channels_last")
    parser.add_argument("--paths", nargs="+", default=["evaluate", "predict"], choices=("evaluate", "predict"))
    parser.add_argument("--images", type=int, help="timed images per configuration: 20 (tiny: 2)")
    parser.add_argument("--threads", type=int, help="CPU threads: 0 = PyTorch's default (tiny: 1)")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU preset for CI: ResNet-18, narrow heads, 64x128 images, 2 images, 1 thread")
    args = parser.parse_args(argv)
    apply_preset(args, TINY, FULL)
    if args.images < 1 or min(args.size) < 16:
        parser.error("--images must be >= 1 and --size at least 16x16")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = benchmark_device(args)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    height, width = args.size
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone_depth=args.backbone, backbone_width=args.backbone_width,
                                    head_width=args.head_width)).to(device).eval()
    items = synthetic_items(args.images, height, width, model.cfg.num_classes)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(args.images)]
    for channels_last, precision, path in itertools.product(args.channels_last, args.precision, args.paths):
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        if path == "evaluate":
            seconds = time_evaluate(model, items, device, precision)
        else:
            seconds = time_predict(model, images, device, precision)
        if device.type == "cuda":
            memory, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
        else:
            memory, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"
        print(json.dumps({
            "benchmark": "inference",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "path": path,
            "backbone": args.backbone,
            "size": [height, width],
            "precision": precision,
            "channels_last": channels_last,
            "images": args.images,
            "ms_per_image": round(seconds * 1000, 3),
            "peak_memory_mib": round(memory, 1),
            "peak_memory_kind": kind,
        }), flush=True)


if __name__ == "__main__":
    main()
