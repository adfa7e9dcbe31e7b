"""Benchmark: how fast the synthetic street world renders and writes.

Renders ``--frames`` target stereo pairs (left + right view, stereo depth .mat, the costliest
kind of frame) and as many source frames into a temporary folder with ``generate_world``, prints
frames per second and the extrapolated time for 1,000 frame pairs, then the share of each class
in both domains (from a separate label-only pass) to show their different class frequencies.

    .venv/bin/python benchmarks/world_generation.py --frames 100 --size 256x128 --workers 2

Measured on 2 shared CPU cores (load average 4-6): 100 pairs in 8-12 s (1,000 pairs: 78-120 s,
extrapolated), 100 source frames in 7 s; one pair costs about 58 ms of CPU time in one process.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from cordaseg.data.labels import CITYSCAPES_ID_TO_TRAIN, CLASS_NAMES, NUM_CLASSES
from cordaseg.world import SOURCE, cast_rays, generate_world, sample_scene, target_domain
from cordaseg.world.domains import sample_camera


def class_shares(domain, size, scenes: int) -> np.ndarray:
    counts = np.zeros(256, dtype=np.int64)
    for i in range(scenes):
        rng = np.random.default_rng([i, 99])
        scene = sample_scene(domain.scene, rng)
        camera = sample_camera(domain, size[0], size[1], scene, rng)
        counts += np.bincount(CITYSCAPES_ID_TO_TRAIN[cast_rays(scene, camera).label].ravel(), minlength=256)
    return counts[:NUM_CLASSES] / counts.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="target pairs and source frames to render")
    parser.add_argument("--size", default="256x128", help="WxH")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--scenes", type=int, default=50, help="scenes per domain for the class shares")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        generate_world(f"{out}/pairs", 0, args.frames, 0, size=size, progress=False, workers=args.workers)
        pairs = time.perf_counter() - start
        start = time.perf_counter()
        generate_world(f"{out}/source", args.frames, 0, 0, size=size, progress=False, workers=args.workers)
        source = time.perf_counter() - start
    print(f"size {size[0]}x{size[1]}, {args.workers} worker processes")
    print(f"target stereo pairs: {args.frames} in {pairs:.1f} s = {args.frames / pairs:.1f} pairs/s; "
          f"1,000 pairs would take {1000 * pairs / args.frames:.0f} s (extrapolated)")
    print(f"source frames: {args.frames} in {source:.1f} s = {args.frames / source:.1f} frames/s; "
          f"1,000 frames would take {1000 * source / args.frames:.0f} s (extrapolated)")

    shares = {"source": class_shares(SOURCE, size, args.scenes),
              "target": class_shares(target_domain(1.0), size, args.scenes)}
    print(f"\nclass share of pixels over {args.scenes} scenes per domain (%)")
    print(f"{'class':<15}{'source':>8}{'target':>8}")
    for c in range(NUM_CLASSES):
        print(f"{CLASS_NAMES[c]:<15}{100 * shares['source'][c]:8.2f}{100 * shares['target'][c]:8.2f}")


if __name__ == "__main__":
    main()
