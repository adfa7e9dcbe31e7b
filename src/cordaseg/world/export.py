"""Writing the synthetic street world as real dataset trees.

- The **source** domain becomes a GTA5 tree (``images/``, ``labels/`` palette PNGs of Cityscapes
  label IDs, ``disparity/`` uint16 PNGs). Its rendered metric depth ``Z`` is mapped to the
  loader's inverse-depth-like value with the *same* formula as the Cityscapes stereo decode
  (docs/data-formats.md, "Depth values"), ``655.36 / (Z + 0.01)``, then encoded the GTA way, ``round((v - 1) * 256)``.
  So both domains' depth lives on one scale. Sky is invalid (encoded 0, decoded exactly 1.0);
  the 16-bit code saturates below ``655.36 / 257 - 0.01 = 2.54`` m, nearer points read as 2.54 m.
- The **target** domain becomes a Cityscapes tree: ``leftImg8bit``/``rightImg8bit`` for train and
  val, ``gtFine`` labelIds for both splits (val is the evaluation set; train labels exist so a
  target oracle can be trained as the upper bound), ``camera`` JSON files, and for train the
  stereo depth ``depth/train/.../*_depth_stereoscopic.mat`` computed from the rendered pair with
  the flaws of real stereo (:func:`stereo_depth`).

:func:`generate_world` renders both, in parallel processes, and records what it made in
``world.json``; a second call with the same specification returns at once.

:func:`export_exact_depth` writes a view of the target tree whose stereo ``.mat`` files hold the
renderer's exact depth instead of the simulated matcher's (train and val frames): the upper bound
of target depth quality, for measuring how much CorDA depends on it and for scoring val
predictions per range of distance.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cordaseg.data import formats
from cordaseg.errors import DataError
from cordaseg.world.domains import SOURCE, Frame, render_frame, target_domain
from cordaseg.world.render import Camera

# Bumped whenever the world's content changes, so cached worlds are regenerated.
WORLD_VERSION = 2
MANIFEST = "world.json"
TRAIN_CITY = "synthtown"
VAL_CITY = "synthvale"
# Stereo matching quality, in pixels of a 2048-wide sensor (Cityscapes' resolution), scaled to the
# rendered width: disparity noise sigma and the smallest disparity a matcher resolves.
STEREO_NOISE_PX_AT_2048 = 0.3
STEREO_MIN_DISPARITY_PX_AT_2048 = 1.0
# Seed streams of the three frame sets: each frame's generator is seeded (seed, stream, index).
STREAMS = {"source": 0, "train": 1, "val": 2}


@dataclass
class WorldConfig:
    """Which synthetic world to render (the ``world`` section of a demo or benchmark config)."""

    num_source: int = 500
    """Source frames, written as a GTA5 tree."""
    num_target_train: int = 500
    """Target train frames (stereo pairs with stereo depth and labels), a Cityscapes train split."""
    num_target_val: int = 100
    """Target val frames with labels, the Cityscapes val split the methods are scored on."""
    size: tuple[int, int] = (256, 128)
    """Frame size (W, H) in pixels."""
    shift: float = 1.0
    """Strength of the domain gap: 0 none (the target looks like the source), 1 the full gap."""
    seed: int = 0
    """Seed of the layouts; each frame set has its own seed stream."""

    def __post_init__(self) -> None:
        for key in ("num_source", "num_target_train", "num_target_val"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: {getattr(self, key)} must be >= 0")
        if min(self.size) < 16:
            raise ValueError(f"size: {tuple(self.size)} must be at least 16x16 (W, H)")
        if not np.isfinite(self.shift) or self.shift < 0:
            raise ValueError(f"shift: {self.shift} must be a finite number >= 0")


def generate_world_from_config(out_dir: str | Path, cfg: WorldConfig, progress: bool = True,
                               workers: int | None = None) -> tuple[Path, Path]:
    """:func:`generate_world` with the fields of ``cfg``."""
    return generate_world(out_dir, cfg.num_source, cfg.num_target_train, cfg.num_target_val, size=cfg.size,
                          shift=cfg.shift, seed=cfg.seed, progress=progress, workers=workers)


def stereo_depth(left_depth: np.ndarray, right_depth: np.ndarray, camera: Camera,
                 rng: np.random.Generator) -> np.ndarray:
    """What a stereo matcher would measure from the rendered pair: metres, 0 where invalid.

    Flaws of real stereo depth: no depth in the sky; none where the left pixel is hidden in the
    right view (occlusions) or falls outside it (left border), and a pixel either side of every
    depth discontinuity; Gaussian disparity noise, so the depth error grows with the square of the
    distance; nothing beyond the smallest resolvable disparity.
    """
    h, w = left_depth.shape
    focal_baseline = camera.fx * camera.baseline  # px * m
    scale = w / 2048.0
    finite = np.isfinite(left_depth)
    z = np.where(finite, left_depth, 1.0)
    disparity = np.where(finite, focal_baseline / z, 0.0)  # (H, W) px
    u_right = np.arange(w)[None, :] - disparity
    valid = finite & (u_right >= 0)
    col = np.clip(np.rint(u_right), 0, w - 1).astype(np.intp)
    seen = np.take_along_axis(right_depth, col, axis=1)
    valid &= seen > z * 0.97  # something nearer covers the point in the right view: occluded
    log_z = np.log(np.where(finite, z, 1e4))
    edge = np.zeros((h, w), dtype=bool)
    jump = np.abs(np.diff(log_z, axis=1)) > 0.15
    edge[:, 1:] |= jump
    edge[:, :-1] |= jump
    valid &= ~edge
    noisy = disparity + rng.normal(0.0, STEREO_NOISE_PX_AT_2048 * scale, size=(h, w))
    valid &= noisy > STEREO_MIN_DISPARITY_PX_AT_2048 * scale
    return np.where(valid, focal_baseline / np.where(valid, noisy, 1.0), 0.0).astype(np.float32)


def _frame_id(split: str, index: int) -> tuple[str, str]:
    city = TRAIN_CITY if split == "train" else VAL_CITY
    return city, f"{city}_{index:06d}_000019"


def _frame_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], index])


def _write_source(root: Path, index: int, frame: Frame) -> None:
    paths = formats.gta5_paths(root, f"{index + 1:05d}")
    formats.write_rgb_png(paths.image, frame.rgb)
    formats.write_palette_label_png(paths.label, frame.label_ids)
    formats.write_uint16_png(paths.depth, formats.encode_gta_disparity(formats.depth_value_from_metres(frame.depth)))


def _write_target(root: Path, split: str, index: int, frame: Frame, rng: np.random.Generator) -> None:
    city, frame_id = _frame_id(split, index)
    paths = formats.cityscapes_paths(root, split, city, frame_id, depth="stereo")
    formats.write_rgb_png(paths.image, frame.rgb)
    formats.write_gray_label_png(paths.label, frame.label_ids)
    formats.write_rgb_png(formats.cityscapes_right_image_path(root, split, city, frame_id), frame.right_rgb)
    cam = frame.camera
    camera_path = formats.cityscapes_camera_path(root, split, city, frame_id)
    formats.write_camera_json(camera_path, baseline=cam.baseline, fx=cam.fx, fy=cam.fy, u0=cam.cx, v0=cam.cy)
    # Record this frame's own pose too: Cityscapes' extrinsic pitch (radians) and height above the road.
    camera_json = json.loads(camera_path.read_text())
    camera_json["extrinsic"].update(pitch=float(cam.pitch), x=0.0, y=0.0, z=float(cam.position[1]))
    camera_path.write_text(json.dumps(camera_json, indent=2))
    if split == "train":
        formats.write_stereo_depth_mat(paths.depth, stereo_depth(frame.depth, frame.right_depth, cam, rng))


def _run_jobs(fn, jobs: list[tuple], workers: int | None, desc: str, progress: bool) -> None:
    """Run ``fn`` on every job, in a process pool of ``workers`` (None: one per CPU; 0: in this
    process; fewer than 4 jobs also run here), with a progress bar counting frames."""
    workers = os.cpu_count() or 1 if workers is None else int(workers)
    with tqdm(total=len(jobs), desc=desc, unit="frame", disable=not progress) as bar:
        if workers <= 0 or len(jobs) < 4:
            for job in jobs:
                fn(job)
                bar.update()
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(fn, jobs, chunksize=8):
                bar.update()


def _make_frame(job: tuple) -> None:
    """Render and write one frame; a top-level function so worker processes can run it."""
    stream, index, root, size, shift, seed = job
    rng = _frame_rng(seed, stream, index)
    if stream == "source":
        _write_source(Path(root), index, render_frame(SOURCE, size, rng))
    else:
        frame = render_frame(target_domain(shift), size, rng, stereo=True)
        _write_target(Path(root), stream, index, frame, rng)


EXACT_DEPTH_MANIFEST = "exact_depth.json"


def _write_exact_depth(job: tuple) -> None:
    """Render one target frame again (same seed stream, so the same scene and camera) and write its
    exact depth; a top-level function so worker processes can run it."""
    split, index, root, size, shift, seed = job
    frame = render_frame(target_domain(shift), size, _frame_rng(seed, split, index))
    city, frame_id = _frame_id(split, index)
    path = formats.cityscapes_paths(root, split, city, frame_id, depth="stereo").depth
    # The sky (infinite depth) becomes 0, the stereo files' "no depth".
    formats.write_stereo_depth_mat(path, np.where(np.isfinite(frame.depth), frame.depth, 0.0))


def export_exact_depth(world_dir: str | Path, cfg: WorldConfig, out_dir: str | Path | None = None,
                       splits: tuple[str, ...] = ("train", "val"), progress: bool = True,
                       workers: int | None = None) -> Path:
    """A Cityscapes tree at ``out_dir`` (default ``world_dir/target_exact_depth``) that shares the
    target tree's images, labels and cameras by symbolic links and holds the exact rendered depth
    of ``splits`` as stereo ``.mat`` files (metres, 0 in the sky).

    Exact depth is the best target depth a method can get: no matcher noise, no holes at
    occlusions, borders or far away; the geometry the labels were rendered from. The frames are
    rendered again from their seeds (the world writes no exact target depth), which costs about
    as much as rendering them the first time; ``exact_depth.json`` records what was written, so a
    second call for the same splits (or fewer) returns at once. ``world_dir`` must hold the world ``cfg`` describes.
    """
    world_dir = Path(world_dir)
    target_root = world_dir / "target"
    spec = _spec(cfg.num_source, cfg.num_target_train, cfg.num_target_val, cfg.size, cfg.shift, cfg.seed)
    try:
        recorded = json.loads((world_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        recorded = None
    if recorded != spec:
        raise DataError(f"{world_dir}: no finished world of this specification (render it first)")
    for split in splits:
        if split not in ("train", "val"):
            raise DataError(f"exact depth splits are 'train' and 'val', got {split!r}")
    out = Path(out_dir) if out_dir is not None else world_dir / "target_exact_depth"
    manifest = out / EXACT_DEPTH_MANIFEST
    try:
        written = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        written = {}
    if {k: v for k, v in written.items() if k != "splits"} == spec and set(splits) <= set(written.get("splits", [])):
        return out
    wanted = {**spec, "splits": sorted(splits)}
    manifest.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for child in target_root.resolve().iterdir():
        link = out / child.name
        if child.name != "depth" and not (link.exists() or link.is_symlink()):
            os.symlink(child, link, target_is_directory=child.is_dir())
    counts = {"train": cfg.num_target_train, "val": cfg.num_target_val}
    jobs = [(split, i, str(out), tuple(cfg.size), cfg.shift, cfg.seed) for split in splits for i in range(counts[split])]
    _run_jobs(_write_exact_depth, jobs, workers, "exact target depth", progress)
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(wanted, indent=2))
    tmp.replace(manifest)
    return out


def _spec(num_source, num_target_train, num_target_val, size, shift, seed) -> dict:
    return {"version": WORLD_VERSION, "num_source": num_source, "num_target_train": num_target_train,
            "num_target_val": num_target_val, "size": list(size), "shift": float(shift), "seed": seed}


def preview(path: str | Path, frames: int = 4, size: tuple[int, int] = (256, 128), shift: float = 1.0,
            seed: int = 0) -> Path:
    """Write a PNG grid of the first ``frames`` source and target train frames of a world.

    Columns: source image, source labels, target image, target labels, target stereo depth
    (brighter is nearer, black is invalid).
    """
    from cordaseg.data.labels import CITYSCAPES_ID_TO_TRAIN, colorize

    rows = []
    for index in range(frames):
        src = render_frame(SOURCE, size, _frame_rng(seed, "source", index))
        rng = _frame_rng(seed, "train", index)
        tgt = render_frame(target_domain(shift), size, rng, stereo=True)
        depth = stereo_depth(tgt.depth, tgt.right_depth, tgt.camera, rng)
        shade = np.where(depth > 0, 255.0 * np.clip(5.0 / np.maximum(depth, 1e-3), 0.0, 1.0) ** 0.5, 0.0)
        rows.append(np.concatenate([
            src.rgb, colorize(CITYSCAPES_ID_TO_TRAIN[src.label_ids]),
            tgt.rgb, colorize(CITYSCAPES_ID_TO_TRAIN[tgt.label_ids]),
            np.repeat(shade.astype(np.uint8)[..., None], 3, axis=-1),
        ], axis=1))
    path = Path(path)
    formats.write_rgb_png(path, np.concatenate(rows, axis=0))
    return path


def generate_world(out_dir: str | Path, num_source: int, num_target_train: int, num_target_val: int,
                   size: tuple[int, int] = (256, 128), shift: float = 1.0, seed: int = 0,
                   progress: bool = True, workers: int | None = None) -> tuple[Path, Path]:
    """Render the world into ``out_dir/source`` (GTA5 tree) and ``out_dir/target`` (Cityscapes tree).

    ``size`` is (W, H); ``shift`` the strength of the domain gap (0: none, 1: full); ``seed`` picks
    the layouts (each frame set has its own seed stream, so adding frames keeps the old ones).
    ``workers`` processes render in parallel (default: one per CPU; 0 renders in this process).
    The specification is written to ``out_dir/world.json`` when everything is written; if that
    file already holds the same specification, nothing is rendered. Returns the two tree roots.
    """
    out_dir = Path(out_dir)
    width, height = (int(v) for v in size)
    for name, value in (("num_source", num_source), ("num_target_train", num_target_train),
                        ("num_target_val", num_target_val)):
        if int(value) < 0:
            raise DataError(f"{name} must be >= 0, got {value}")
    if width < 16 or height < 16:
        raise DataError(f"size must be at least 16x16 (W, H), got {width}x{height}")
    try:
        target_domain(shift)
    except ValueError as err:
        raise DataError(str(err)) from err
    source_root, target_root = out_dir / "source", out_dir / "target"
    spec = _spec(int(num_source), int(num_target_train), int(num_target_val), (width, height), shift, int(seed))
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text()) == spec:
                return source_root, target_root
        except json.JSONDecodeError:
            pass  # a damaged manifest: render again
        manifest.unlink()

    jobs = [("source", i, str(source_root), (width, height), shift, seed) for i in range(spec["num_source"])]
    jobs += [("train", i, str(target_root), (width, height), shift, seed) for i in range(spec["num_target_train"])]
    jobs += [("val", i, str(target_root), (width, height), shift, seed) for i in range(spec["num_target_val"])]
    _run_jobs(_make_frame, jobs, workers, "rendering world", progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(spec, indent=2))
    tmp.replace(manifest)
    return source_root, target_root
