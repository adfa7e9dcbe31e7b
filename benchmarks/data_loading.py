"""Benchmark: training samples per second on one CPU core for each data pipeline (issue 3, part 6).

Writes small trees at the real resolutions (GTA5 1914x1052, SYNTHIA 1280x760, Cityscapes
2048x1024) with ``cordaseg.data.synth`` into a temporary folder, then times the full training
item (decode, ID mapping, depth decoding, resize + 512x512 crop, normalisation, tensors) in one
process with one thread, cycling over the frames with new crops each epoch. A GPU iteration of the
optimised recipe needs about 70 samples/s in total, so >= 10 samples/s per core is the target.

    .venv/bin/python benchmarks/data_loading.py --frames 3 --samples 20

Expected on one core of a current x86 server: roughly 10-25 samples/s per pipeline (the PNG
decode of the full frame dominates); see the closing note of issue 3 for measured figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import torch

from cordaseg.data.datasets import DatasetConfig, build_dataset
from cordaseg.data.synth import generate_tree

# (name, format, config overrides) of each training pipeline.
PIPELINES = (
    ("gta5 source (labels, disparity)", "gta5", {}),
    ("synthia source (mapped labels, depth)", "synthia", {}),
    ("synthia source (raw 16-bit labels, depth)", "synthia", {"synthia_labels": "raw"}),
    ("cityscapes target (stereo .mat depth)", "cityscapes", {"use_labels": False}),
    ("cityscapes target (mono disparity)", "cityscapes", {"use_labels": False, "depth": "mono"}),
    ("cityscapes target (labels + stereo depth)", "cityscapes", {}),
)


def samples_per_second(cfg: DatasetConfig, samples: int) -> tuple[float, float]:
    """(samples per CPU-second of this single-threaded process, samples per wall-clock second).

    The CPU-time figure is the per-core rate even on a machine shared with other work."""
    dataset = build_dataset(cfg, train=True, seed=0)
    dataset[(0, 0)]  # warm the page cache and lazy imports
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(samples):
        item = dataset[(1 + step // len(dataset), step % len(dataset))]
        assert item["image"].shape[-2:] == (512, 512)
    return samples / (time.process_time() - cpu), samples / (time.perf_counter() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3, help="frames written per tree")
    parser.add_argument("--samples", type=int, default=20, help="samples timed per pipeline")
    parser.add_argument("--root", default=None, help="keep the generated trees here (default: temporary)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.root or scratch)
        trees = {}
        start = time.perf_counter()
        for fmt in ("gta5", "synthia", "cityscapes"):
            trees[fmt] = generate_tree(fmt, base / fmt, args.frames, seed=0, splits=("train",))
        print(f"wrote {args.frames} frames per format at the real resolutions in "
              f"{time.perf_counter() - start:.1f} s")
        for name, fmt, overrides in PIPELINES:
            cfg = DatasetConfig(format=fmt, root=str(trees[fmt]), **overrides)
            per_cpu_second, per_wall_second = samples_per_second(cfg, args.samples)
            print(f"{name:45s} {per_cpu_second:6.1f} samples/s per core "
                  f"({per_wall_second:.1f} per wall-clock second)")


if __name__ == "__main__":
    main()
