"""How far the training crops are from the reference's resize-the-whole-frame-then-crop.

For GTA5 (1914x1052) and SYNTHIA (1280x760) frames resized to 1280x720 and cropped to 512x512,
prints one JSON line per format and measurement:

- ``image_shortcut``: 8-bit bicubic image, crop-window resampling (PIL ``box``) against PIL's
  resize of the whole frame, then crop (generated street scenes, BGR as the loader reads them);
- ``label_shortcut``: the same for labels (nearest);
- ``depth_opencv``: the loader's OpenCV depth path against ``cv2.resize`` of the whole decoded
  frame, then crop (the reference);
- ``depth_pil_vs_opencv``: what PIL's filter (``depth_resize=pil``) would change in the depth
  targets, on the scene's depth file and on noise (``depth_pil_vs_opencv_noise``), and how many
  pixels would change between valid and exactly invalid (1.0).

    python benchmarks/resize_parity.py            # 3 frames x 10 crops per format (~5 s on CPU)
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
from PIL import Image

from cordaseg.data import formats, transforms
from cordaseg.data.synth import make_scene

TARGET = (1280, 720)
CROP = (512, 512)
FORMATS = {
    # format: (frame size, depth filter, file encoding of the scene's depth, decoder, file value of 1.0)
    "gta5": ((1914, 1052), "bilinear", lambda m: formats.encode_gta_disparity(formats.depth_value_from_metres(m)),
             formats.decode_gta_disparity, 0),
    "synthia": ((1280, 760), "nearest",
                lambda m: formats.encode_synthia_depth(np.where(np.isfinite(m), m, 1000.0)),
                formats.decode_synthia_depth, 65535),
}


class Tally:
    """Differences between two sets of arrays, summed over crops."""

    def __init__(self) -> None:
        self.values = self.differing = self.invalid_changed = 0
        self.max_abs = 0.0

    def add(self, got: np.ndarray, expected: np.ndarray, invalid: float | None = None) -> None:
        difference = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        self.values += difference.size
        self.differing += int((difference > 0).sum())
        self.max_abs = max(self.max_abs, float(difference.max()))
        if invalid is not None:
            self.invalid_changed += int(((got == invalid) != (expected == invalid)).sum())

    def record(self, fmt: str, what: str, depth: bool = False) -> dict:
        record = {"format": fmt, "what": what, "values": self.values, "differing_values": self.differing,
                  "differing_percent": round(100.0 * self.differing / max(self.values, 1), 4),
                  "max_abs_difference": round(self.max_abs, 4)}
        if depth:
            record["invalid_changed"] = self.invalid_changed
        return record


def _crop(full: np.ndarray, geometry: transforms.Geometry) -> np.ndarray:
    x0, y0, width, height = geometry.window
    return full[y0:y0 + height, x0:x0 + width]


def measure(fmt: str, frames: int, crops: int, rng: np.random.Generator) -> list[dict]:
    size, depth_filter, encode, decode, invalid_value = FORMATS[fmt]
    tallies = {name: Tally() for name in ("image_shortcut", "label_shortcut", "depth_opencv",
                                          "depth_pil_vs_opencv", "depth_pil_vs_opencv_noise")}
    for _ in range(frames):
        scene = make_scene(rng, *size)
        image = np.ascontiguousarray(scene.rgb[..., ::-1])
        full_image = np.asarray(Image.fromarray(image).resize(TARGET, Image.Resampling.BICUBIC))
        full_label = np.asarray(Image.fromarray(scene.train_ids).resize(TARGET, Image.Resampling.NEAREST))
        raw_depth = encode(scene.depth_m)
        noise = rng.integers(0, 65536, raw_depth.shape, dtype=np.uint16)
        noise[rng.random(noise.shape) < 0.05] = invalid_value
        full_depth = cv2.resize(decode(raw_depth), TARGET, interpolation=transforms.CV2_INTERPOLATION[depth_filter])
        for _ in range(crops):
            geometry = transforms.sample_geometry(rng, size, TARGET, CROP)
            tallies["image_shortcut"].add(transforms.apply_geometry(image, geometry, "bicubic", 0),
                                          _crop(full_image, geometry))
            tallies["label_shortcut"].add(transforms.apply_geometry(scene.train_ids, geometry, "nearest", 255),
                                          _crop(full_label, geometry))
            for raw, name in ((raw_depth, "depth_pil_vs_opencv"), (noise, "depth_pil_vs_opencv_noise")):
                opencv = transforms.apply_geometry(raw, geometry, depth_filter, 1.0, convert=decode, backend="opencv")
                pil = transforms.apply_geometry(raw, geometry, depth_filter, 1.0, convert=decode, backend="pil")
                tallies[name].add(pil, opencv, invalid=1.0)
                if raw is raw_depth:
                    tallies["depth_opencv"].add(opencv, _crop(full_depth, geometry), invalid=1.0)
    return [tally.record(fmt, name, depth=name.startswith("depth")) for name, tally in tallies.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3, help="generated frames per format")
    parser.add_argument("--crops", type=int, default=10, help="random 512x512 crops per frame")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.frames < 1 or args.crops < 1:
        parser.error("--frames and --crops must be at least 1")
    rng = np.random.default_rng(args.seed)
    for fmt in FORMATS:
        for record in measure(fmt, args.frames, args.crops, rng):
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
