"""Benchmark: ``cordaseg depth export --model`` on Cityscapes-sized frames, in seconds per 1,000 frames.

1. Writes ``--frames`` Cityscapes frames (2048x1024 by default, with stereo partners and camera
   files) with ``cordaseg data synth``.
2. Loads the depth model in ``--model`` (a local transformers folder, e.g. Depth Anything V2 Small),
   or without ``--model`` builds a randomly initialised Depth Anything of the Small size (ViT-S
   encoder and DPT head, 24.8M parameters: the defaults of ``DepthAnythingConfig``), which costs the
   same to run, with Depth Anything's preprocessing (shorter side 518 px, multiple of 14, ImageNet
   normalisation; github.com/LiheYoung/Depth-Anything, README).
3. Prints the model's forward time per frame (batched, no pre- or post-processing), the time of a
   whole export (read, preprocess, predict, upsample, encode, write) with a fixed scale, and the
   time of the stereo matcher on one pair (what ``--align stereo`` adds per frame, in the reading
   threads).

    .venv/bin/python benchmarks/pretrained_depth_export.py --frames 4 --device cpu
    .venv/bin/python benchmarks/pretrained_depth_export.py --model models/dav2-small --frames 200 --device cuda

Expected: on 2 shared CPU cores, a few seconds per frame (ViT-S at 518x1036 dominates); see
``benchmarks/RESULTS.md`` for measured figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cordaseg.data import formats
from cordaseg.data.synth import generate_tree
from cordaseg.depth.align import stereo_inverse_depth
from cordaseg.depth.export import export_jobs, export_pretrained_depth
from cordaseg.depth.pretrained import import_transformers, load_pretrained_depth


def random_depth_anything_small(path: Path) -> None:
    transformers = import_transformers()
    torch.manual_seed(0)
    transformers.DepthAnythingForDepthEstimation(transformers.DepthAnythingConfig()).save_pretrained(path)
    transformers.DPTImageProcessor(
        size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # wall-clock timing of queued kernels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="local transformers depth model folder")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", default="2048x1024", help="frame size WxH (default: Cityscapes)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tree = generate_tree("cityscapes", work / "cityscapes", args.frames, size=(width, height), splits=("train",),
                             depth="stereo")
        model_dir = args.model
        if model_dir is None:
            model_dir = work / "depth_anything_small_random"
            random_depth_anything_small(model_dir)
        model = load_pretrained_depth(model_dir, device)
        jobs = export_jobs(tree, "stereo-mat")
        rgb = formats.read_image_rgb(jobs[0].image)
        x = torch.cat([model.prepare(rgb)] * args.batch_size).to(device)  # (B, 3, h, w)
        with torch.no_grad():
            model.model(pixel_values=x)  # warm-up
            _sync(device)
            start = time.perf_counter()
            for _ in range(2):
                model.model(pixel_values=x)
            _sync(device)
        forward_ms = 1000 * (time.perf_counter() - start) / (2 * args.batch_size)
        start = time.perf_counter()
        export_pretrained_depth(model_dir, tree, "cityscapes-mono", out_root=work / "out", scale=0.01,
                                batch_size=args.batch_size, workers=args.workers, device=str(device),
                                progress=False)
        export_s = (time.perf_counter() - start) / args.frames
        right = formats.read_image_rgb(jobs[0].right)
        camera = formats.read_camera_json(jobs[0].camera)
        start = time.perf_counter()
        stereo_inverse_depth(rgb, right, camera["fx"], camera["baseline"])
        stereo_ms = 1000 * (time.perf_counter() - start)
    name = str(args.model) if args.model else "random Depth Anything Small"
    print(f"{name} on {device}, {args.frames} frames of {width}x{height}, input {tuple(x.shape[2:])} (HxW), "
          f"batch {args.batch_size}, {args.workers} reading threads, {torch.get_num_threads()} torch threads")
    print(f"  model forward: {forward_ms:.0f} ms/frame ({forward_ms:.0f} s per 1,000 frames)")
    print(f"  whole export (cityscapes-mono, fixed scale): {export_s:.2f} s/frame ({1000 * export_s:.0f} s per "
          "1,000 frames, model load included)")
    print(f"  stereo matcher on one pair (--align stereo, per frame, in the reading threads): {stereo_ms:.0f} ms")


if __name__ == "__main__":
    main()
