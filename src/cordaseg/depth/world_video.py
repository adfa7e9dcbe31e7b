"""Frame sequences of the synthetic street world, for monocular self-supervised depth (docs/method.md,
"Self-supervised depth").

The world (:mod:`cordaseg.world`) renders single frames and stereo pairs. A sequence here is
one street seen from a camera that drives forward along the lane, ``step_m`` metres per frame,
with the frame's light, textures and exposure fixed (only the sensor noise changes), so the
photometric consistency a monocular method relies on holds. :func:`write_world_video` writes the
video layout of :mod:`cordaseg.depth.data` (``{sequence}/images``, ``right``, ``intrinsics.json``
with the baseline) and returns the metric ground-truth depth of every left frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cordaseg.data import formats
from cordaseg.depth.data import INTRINSICS_FILE, VIDEO_IMAGE_DIR, VIDEO_RIGHT_DIR
from cordaseg.world import Camera, cast_rays, sample_scene, target_domain
from cordaseg.world.domains import Domain, sample_camera, shade


@dataclass
class WorldSequence:
    """One rendered sequence: uint8 RGB left and right frames and metric depth (inf = sky)."""

    left: list[np.ndarray]
    right: list[np.ndarray]
    depth: list[np.ndarray]
    camera: Camera


def render_sequence(domain: Domain, size: tuple[int, int], frames: int, step_m: float,
                    rng: np.random.Generator) -> WorldSequence:
    """``frames`` stereo frames of one street, the camera moving ``step_m`` forward per frame."""
    width, height = size
    scene = sample_scene(domain.scene, rng)
    camera = sample_camera(domain, width, height, scene, rng)
    look = domain.appearance
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    elevation = np.radians(look.sun_elevation_deg + rng.uniform(-8.0, 8.0))
    sun = np.array([np.cos(elevation) * np.cos(azimuth), np.sin(elevation), np.cos(elevation) * np.sin(azimuth)])
    seed = int(rng.integers(2**31))
    exposure = 1.0 + look.exposure_jitter * rng.uniform(-1.0, 1.0)
    sequence = WorldSequence([], [], [], camera)
    for k in range(frames):
        x, y, z = camera.position
        moved = replace(camera, position=(x, y, z + k * step_m))
        left = cast_rays(scene, moved)
        right = cast_rays(scene, moved.right())
        sequence.left.append(shade(scene, left, look, sun, seed, rng, exposure))
        sequence.right.append(shade(scene, right, look, sun, seed, rng, exposure))
        sequence.depth.append(left.depth)
    return sequence


def write_world_video(out_dir: str | Path, sequences: int, frames: int, size: tuple[int, int] = (128, 64),
                      step_m: float = 1.0, shift: float = 1.0, seed: int = 0) -> list[list[np.ndarray]]:
    """Write ``sequences`` target-domain sequences in the video layout; returns their depth maps."""
    out_dir = Path(out_dir)
    domain = target_domain(shift)
    truth = []
    for s in range(sequences):
        sequence = render_sequence(domain, size, frames, step_m, np.random.default_rng([seed, 11, s]))
        root = out_dir / f"seq{s:03d}"
        for k, (left, right) in enumerate(zip(sequence.left, sequence.right)):
            formats.write_rgb_png(root / VIDEO_IMAGE_DIR / f"{k:05d}.png", left)
            formats.write_rgb_png(root / VIDEO_RIGHT_DIR / f"{k:05d}.png", right)
        cam = sequence.camera
        (root / INTRINSICS_FILE).write_text(json.dumps(
            {"fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy, "baseline": cam.baseline}, indent=2))
        truth.append(sequence.depth)
    return truth
