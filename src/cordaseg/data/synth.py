"""Small format-faithful dataset trees (the file formats of :mod:`cordaseg.data.formats`) for tests
and for trying the tool.

:func:`generate_tree` writes GTA5, SYNTHIA-RAND-CITYSCAPES or Cityscapes trees in exactly the real
layouts and encodings (palette label PNGs, 16-bit PNGs, SYNTHIA's multi-channel 16-bit labels and
depth (in three equal channels), the stereo ``.mat`` and the mono disparity PNGs, right images and
camera files), filled with simple street scenes: a ground plane (road, sidewalk, terrain) under
the horizon, building facades, vegetation, poles, signs, cars and people standing on the ground,
and sky. Depth is consistent with that geometry (a pinhole camera 1.5 m above a flat ground), so
the depth of an object equals the ground depth at its foot and nearer objects occlude farther ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cordaseg.config import ConfigError
from cordaseg.data import formats
from cordaseg.data.labels import IGNORE_INDEX, PALETTE, SYNTHIA_TO_TRAIN, TRAIN_TO_CITYSCAPES_ID

FORMATS = ("gta5", "synthia", "cityscapes")
# The real frame sizes (W, H), used when no size is given.
REAL_SIZES: dict[str, tuple[int, int]] = {
    "gta5": (1914, 1052),
    "synthia": (1280, 760),
    "cityscapes": (2048, 1024),
}
CITYSCAPES_CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum"),
    "val": ("frankfurt", "lindau"),
}
CAMERA_HEIGHT_M = 1.5
# Cityscapes stereo rig at 2048 px width (its camera files); scaled with the image width.
CITYSCAPES_BASELINE_M = 0.21
CITYSCAPES_FX_AT_2048 = 2262.52
MAX_DEPTH_M = 400.0

# Train ID -> SYNTHIA class ID; ignore -> 0 (void).
TRAIN_TO_SYNTHIA_ID = np.zeros(256, dtype=np.uint16)
for _synthia_id, _train_id in SYNTHIA_TO_TRAIN.items():
    TRAIN_TO_SYNTHIA_ID[_train_id] = _synthia_id
TRAIN_TO_SYNTHIA_ID.setflags(write=False)

# Cityscapes void IDs the scenes use for ignored pixels: ego vehicle at the bottom, static elsewhere.
EGO_VEHICLE_ID = 1
STATIC_ID = 4


@dataclass
class Scene:
    """One synthetic frame before encoding."""

    train_ids: np.ndarray  # (H, W) uint8, 255 = ignore
    instance_ids: np.ndarray  # (H, W) uint16, 0 = no instance
    depth_m: np.ndarray  # (H, W) float64 metres, inf for sky
    rgb: np.ndarray  # (H, W, 3) uint8
    ego_rows: int  # bottom rows covered by the ego vehicle (ignored label)


class _Canvas:
    """The label, depth and instance images of one scene as it is drawn, with the pinhole camera
    1.5 m above a flat ground that places everything in it."""

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.focal = 0.6 * width
        self.horizon = height * rng.uniform(0.38, 0.5)
        self.rows = np.arange(height, dtype=np.float64)[:, None] + 0.5  # (H, 1)
        self.cols = np.arange(width, dtype=np.float64)[None, :] + 0.5  # (1, W)
        self.centre = width * rng.uniform(0.4, 0.6)
        self.train_ids = np.full((height, width), 10, dtype=np.uint8)  # sky
        self.depth = np.full((height, width), np.inf)
        self.instance_ids = np.zeros((height, width), dtype=np.uint16)

    def paint(self, mask: np.ndarray, class_id: int, object_depth: float, instance: int = 0) -> None:
        """Paint where the object is nearer than what is already there (z-buffer)."""
        visible = mask & (object_depth < self.depth)
        self.train_ids[visible] = class_id
        self.depth[visible] = object_depth
        if instance:
            self.instance_ids[visible] = instance

    def foot_row(self, distance_m: float) -> float:
        return self.horizon + self.focal * CAMERA_HEIGHT_M / distance_m

    def upright(self, distance_m: float, lateral: float, width_m: float, height_m: float) -> np.ndarray:
        """Mask of an upright box standing on the ground at ``distance_m``."""
        scale = self.focal / distance_m
        bottom = self.foot_row(distance_m)
        x0 = self.centre + lateral * scale
        rows, cols = self.rows, self.cols
        return ((rows < bottom) & (rows >= bottom - height_m * scale)
                & (cols >= x0 - 0.5 * width_m * scale) & (cols < x0 + 0.5 * width_m * scale))


def make_scene(rng: np.random.Generator, width: int, height: int) -> Scene:
    """Draw a random street scene of ``width`` x ``height`` pixels: the ground, the facades along
    the street, the objects standing on it, and the ego vehicle's bonnet (void)."""
    canvas = _Canvas(rng, width, height)
    road_half_m, sidewalk_m = _ground(canvas, rng)
    _facades(canvas, rng, sidewalk_m)
    _street_objects(canvas, rng, road_half_m, sidewalk_m)
    # The ego vehicle's bonnet at the bottom is void in the labels, like in Cityscapes.
    ego_rows = max(1, int(round(height * rng.uniform(0.0, 0.08))))
    label = canvas.train_ids.copy()
    label[height - ego_rows:] = IGNORE_INDEX
    rgb = _render(rng, canvas.train_ids, canvas.depth, ego_rows)
    return Scene(label, canvas.instance_ids, canvas.depth, rgb, ego_rows)


def _ground(canvas: _Canvas, rng: np.random.Generator) -> tuple[float, float]:
    """The ground plane below the horizon: road in the middle, then sidewalk, then terrain;
    returns (half the road's width, the sidewalk's outer edge) in metres."""
    rows, cols, focal = canvas.rows, canvas.cols, canvas.focal
    below = np.maximum(rows - canvas.horizon, 1e-6)
    ground_depth = np.minimum(focal * CAMERA_HEIGHT_M / below, MAX_DEPTH_M)  # (H, 1)
    lateral_m = np.abs(cols - canvas.centre) * ground_depth / focal  # (H, W)
    road_half_m = rng.uniform(3.0, 6.0)
    sidewalk_m = road_half_m + rng.uniform(2.0, 4.0)
    ground = (rows > canvas.horizon) & np.ones_like(cols, dtype=bool)
    ground_class = np.where(lateral_m < road_half_m, 0, np.where(lateral_m < sidewalk_m, 1, 9))
    canvas.train_ids[ground] = ground_class[ground]
    canvas.depth[ground] = np.broadcast_to(ground_depth, canvas.depth.shape)[ground]
    return road_half_m, sidewalk_m


def _facades(canvas: _Canvas, rng: np.random.Generator, sidewalk_m: float) -> None:
    """Facades along both sides of the street: buildings, some walls, fences and vegetation."""
    rows, cols, focal, horizon, centre = canvas.rows, canvas.cols, canvas.focal, canvas.horizon, canvas.centre
    train_ids, depth = canvas.train_ids, canvas.depth
    for side in (-1.0, 1.0):
        distance = rng.uniform(4.0, 12.0)
        while distance < 120.0:
            length = rng.uniform(6.0, 25.0)
            facade_class = int(rng.choice([2, 2, 2, 3, 4, 8]))
            lateral = side * (sidewalk_m + rng.uniform(0.5, 3.0))
            height_m = rng.uniform(2.0, 4.0) if facade_class in (3, 4) else rng.uniform(6.0, 30.0)
            # A facade parallel to the street: its depth at column x follows the lateral offset.
            with np.errstate(divide="ignore", invalid="ignore"):
                facade_depth = np.where((cols - centre) * side > 0,
                                        focal * abs(lateral) / np.abs(cols - centre), np.inf)  # (1, W)
            near, far = distance, distance + length
            in_span = (facade_depth >= near) & (facade_depth < far)
            top = horizon - focal * (height_m - CAMERA_HEIGHT_M) / np.where(in_span, facade_depth, 1.0)
            bottom = horizon + focal * CAMERA_HEIGHT_M / np.where(in_span, facade_depth, 1.0)
            mask = in_span & (rows >= top) & (rows < bottom)
            visible = mask & (facade_depth < depth)
            train_ids[visible] = facade_class
            depth[visible] = np.broadcast_to(facade_depth, depth.shape)[visible]
            distance = far + rng.uniform(0.0, 4.0)


def _street_objects(canvas: _Canvas, rng: np.random.Generator, road_half_m: float, sidewalk_m: float) -> None:
    """Objects standing on the ground, drawn with the z-buffer: cars, people, riders, poles, signs."""
    instance = 1
    for _ in range(int(rng.integers(3, 9))):
        class_id = int(rng.choice([13, 13, 13, 11, 11, 12, 14, 15, 17, 18]))
        distance = rng.uniform(5.0, 60.0)
        if class_id in (13, 14, 15):
            lateral = rng.uniform(-road_half_m, road_half_m)
            size = {13: (1.8, 1.5), 14: (2.5, 3.0), 15: (2.6, 3.2)}[class_id]
        else:
            lateral = rng.choice([-1.0, 1.0]) * rng.uniform(road_half_m, sidewalk_m)
            size = (0.6, 1.8) if class_id in (11, 12) else (0.8, 1.4)
        canvas.paint(canvas.upright(distance, lateral, *size), class_id, distance, instance)
        instance += 1
    for _ in range(int(rng.integers(1, 4))):
        distance = rng.uniform(5.0, 50.0)
        lateral = rng.choice([-1.0, 1.0]) * (road_half_m + 0.5)
        canvas.paint(canvas.upright(distance, lateral, 0.25, 4.5), 5, distance)
        sign_mask = canvas.upright(distance, lateral, 0.9, 4.5) & ~canvas.upright(distance, lateral, 0.9, 3.6)
        canvas.paint(sign_mask, int(rng.choice([6, 7])), distance - 0.05)


def _render(rng: np.random.Generator, train_ids: np.ndarray, depth: np.ndarray, ego_rows: int) -> np.ndarray:
    """Class colours with haze growing with depth and a little noise."""
    height, width = train_ids.shape
    colors = np.zeros((256, 3), dtype=np.float32)
    colors[: len(PALETTE)] = PALETTE
    colors[IGNORE_INDEX] = (40, 40, 40)
    rgb = colors[train_ids]  # (H, W, 3)
    haze = (1.0 - np.exp(-np.nan_to_num(depth, posinf=MAX_DEPTH_M) / 150.0)).astype(np.float32)[..., None]
    rgb = rgb * (1.0 - 0.5 * haze) + 200.0 * 0.5 * haze
    rgb[height - ego_rows:] = (40, 40, 40)
    rgb += rng.normal(0.0, 6.0, size=(height, width, 1)).astype(np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _cityscapes_label_ids(scene: Scene) -> np.ndarray:
    ids = TRAIN_TO_CITYSCAPES_ID[scene.train_ids].copy()
    ids[scene.train_ids == IGNORE_INDEX] = STATIC_ID
    ids[-scene.ego_rows:] = EGO_VEHICLE_ID
    return ids


def _write_gta5(out: Path, index: int, scene: Scene) -> None:
    paths = formats.gta5_paths(out, f"{index + 1:05d}")
    formats.write_rgb_png(paths.image, scene.rgb)
    formats.write_palette_label_png(paths.label, _cityscapes_label_ids(scene))
    formats.write_uint16_png(paths.depth, formats.encode_gta_disparity(formats.depth_value_from_metres(scene.depth_m)))


def _write_synthia(out: Path, index: int, scene: Scene) -> None:
    stem = f"{index:07d}"
    class_ids = TRAIN_TO_SYNTHIA_ID[scene.train_ids]
    raw = formats.synthia_paths(out, stem, "raw")
    mapped = formats.synthia_paths(out, stem, "mapped")
    formats.write_rgb_png(raw.image, scene.rgb)
    formats.write_synthia_label_png(raw.label, class_ids, scene.instance_ids)
    formats.write_gray_label_png(mapped.label, class_ids.astype(np.uint8))
    depth_m = np.where(np.isfinite(scene.depth_m), scene.depth_m, 1000.0)  # sky saturates 16 bits
    # Three equal channels, as the real files: the reference's greyscale read equals the red channel.
    formats.write_synthia_depth_png(raw.depth, formats.encode_synthia_depth(depth_m), equal_channels=True)


def _write_cityscapes(out: Path, split: str, city: str, frame_id: str, scene: Scene, depth: str,
                      layout: str) -> None:
    stereo = formats.cityscapes_paths(out, split, city, frame_id, layout, "stereo")
    mono = formats.cityscapes_paths(out, split, city, frame_id, layout, "mono")
    formats.write_rgb_png(stereo.image, scene.rgb)
    formats.write_gray_label_png(stereo.label, _cityscapes_label_ids(scene))
    height, width = scene.train_ids.shape
    fx = CITYSCAPES_FX_AT_2048 * width / 2048.0
    if depth in ("stereo", "both"):
        # Stereo matching finds nothing in the sky or on the ego vehicle: 0 there, as in the real files.
        depth_m = np.where(np.isfinite(scene.depth_m), scene.depth_m, 0.0).astype(np.float32)
        depth_m[-scene.ego_rows:] = 0.0
        formats.write_stereo_depth_mat(stereo.depth, depth_m)
    if depth in ("mono", "both"):
        formats.write_uint16_png(mono.depth, formats.encode_mono_disparity(formats.depth_value_from_metres(scene.depth_m)))
    # The right view: every pixel moves left by its disparity fx * baseline / depth (backward
    # warp with the left disparity, good enough for tests of stereo self-supervision).
    disparity_px = fx * CITYSCAPES_BASELINE_M / np.where(np.isfinite(scene.depth_m), scene.depth_m, np.inf)
    source_cols = np.clip(np.rint(np.arange(width)[None, :] + disparity_px), 0, width - 1).astype(np.intp)
    right = np.take_along_axis(scene.rgb, source_cols[..., None], axis=1)
    formats.write_rgb_png(formats.cityscapes_right_image_path(out, split, city, frame_id), right)
    formats.write_camera_json(
        formats.cityscapes_camera_path(out, split, city, frame_id),
        baseline=CITYSCAPES_BASELINE_M, fx=fx, fy=fx, u0=width / 2.0, v0=height / 2.0,
    )


def generate_tree(
    format: str,
    out: str | Path,
    num: int,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    depth: str = "both",
    splits: tuple[str, ...] = ("train", "val"),
    layout: str = "official",
) -> Path:
    """Write a ``format`` tree of ``num`` frames (per split for Cityscapes) under ``out``.

    ``size`` is (W, H), default the real frame size of the format. For Cityscapes, ``depth``
    ("stereo", "mono" or "both") picks the depth files to write, ``splits`` the splits and
    ``layout`` "official" or "trainvaltest" (the reference's folder names). Returns ``out``.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {format!r}")
    if depth not in ("stereo", "mono", "both"):
        raise ConfigError(f"depth must be 'stereo', 'mono' or 'both', got {depth!r}")
    if num < 1:
        raise ConfigError(f"num must be at least 1, got {num}")
    width, height = size or REAL_SIZES[format]
    if width < 8 or height < 8:
        raise ConfigError(f"size must be at least 8x8, got {width}x{height}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if format == "gta5":
        for index in range(num):
            _write_gta5(out, index, make_scene(rng, width, height))
    elif format == "synthia":
        for index in range(num):
            _write_synthia(out, index, make_scene(rng, width, height))
    else:
        for split in splits:
            cities = CITYSCAPES_CITIES.get(split, (split,))
            for index in range(num):
                city = cities[index % len(cities)]
                frame_id = f"{city}_{index // len(cities):06d}_{19 + index:06d}"
                _write_cityscapes(out, split, city, frame_id, make_scene(rng, width, height), depth, layout)
    return out
