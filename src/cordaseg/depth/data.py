"""Training data for self-supervised depth (docs/method.md, "Self-supervised depth"): stereo pairs and frame sequences.

Two layouts:

- **Cityscapes stereo** (``layout: cityscapes``): ``leftImg8bit/{split}/{city}/{id}_leftImg8bit.png``
  (or the reference's ``leftImg8bit_trainvaltest/leftImg8bit``), ``rightImg8bit/{split}/{city}/
  {id}_rightImg8bit.png`` and ``camera/{split}/{city}/{id}_camera.json`` (``extrinsic.baseline`` in
  metres, ``intrinsic.fx, fy, u0, v0`` in pixels of the full image). Stereo supervision only.
- **Video folder** (``layout: video``): one or more sequences, each a folder holding
  ``images/`` (frames in temporal order: sorted file names, ``.png`` or ``.jpg``), optionally
  ``right/`` (the stereo partner of each frame, same file names) and ``intrinsics.json``
  (or one ``intrinsics.json`` at the root for every sequence). The root may itself be a sequence.
  ``intrinsics.json`` holds ``fx, fy, cx, cy`` in pixels of the stored frames, or fractions of
  the width / height with ``"normalized": true`` (the GTA5 video convention of docs/data-formats.md, "Trees for self-supervised depth":
  ``fx = 1.206285, fy = 2.144507, cx = cy = 0.5``), plus ``baseline`` (metres) when ``right/``
  exists.

Items are dicts: ``image`` (3, H, W) float32 RGB in [0, 1] (the target view), ``stereo`` (3, H, W)
the right view (stereo modes), ``frames`` (S, 3, H, W) the frames at ``frame_offsets`` (monocular
modes), ``K`` (3, 3) intrinsics at the item's size, ``baseline`` () metres (signed: negative
after a horizontal flip, where the partner camera is on the left), ``name``.

Intrinsics follow the pixel-centre convention: resizing W -> W' maps ``fx -> fx W'/W`` and
``cx -> (cx + 0.5) W'/W - 0.5``; a horizontal flip maps ``cx -> W - 1 - cx`` and negates the
baseline, so the target, its neighbouring frames and its stereo partner stay consistent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from cordaseg.config import ConfigError
from cordaseg.data import formats
from cordaseg.data.check import CheckReport, Problem
from cordaseg.errors import DataError

VIDEO_IMAGE_DIR = "images"
VIDEO_RIGHT_DIR = "right"
INTRINSICS_FILE = "intrinsics.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class DepthDataConfig:
    """Where the training frames come from and how they are prepared."""

    layout: Literal["cityscapes", "video"] = "cityscapes"
    """``cityscapes``: stereo pairs with camera files; ``video``: folders of ordered frames + intrinsics."""
    root: str = ""
    """Root folder of the tree."""
    split: str = "train"
    """Cityscapes split folder (ignored for video)."""
    size: tuple[int, int] = (512, 256)
    """Training size (W, H); multiples of 32, at least 64."""
    frame_offsets: tuple[int, ...] = (-1, 1)
    """Source frames of the monocular mode, relative to the target frame."""
    flip: float = 0.5
    """Probability of a horizontal flip of all views of an item (the stereo baseline changes sign)."""
    list_file: str | None = None
    """Cityscapes only: text file of frame IDs to use (default: every frame found)."""

    def __post_init__(self) -> None:
        if self.size[0] % 32 or self.size[1] % 32 or min(self.size) < 64:
            raise ConfigError(f"data.size: {self.size} must be multiples of 32 and at least 64 (W, H)")
        if 0 in self.frame_offsets or len(set(self.frame_offsets)) != len(self.frame_offsets):
            raise ConfigError(f"data.frame_offsets: {self.frame_offsets} must be distinct and non-zero")
        if not 0.0 <= self.flip <= 1.0:
            raise ConfigError(f"data.flip: {self.flip} must be a probability")


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in pixels of an image of ``width`` x ``height``, plus the stereo baseline."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    baseline: float | None = None

    def resized(self, width: int, height: int) -> Camera:
        sx, sy = width / self.width, height / self.height
        return Camera(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                      width, height, self.baseline)

    def flipped(self) -> Camera:
        return Camera(self.fx, self.fy, self.width - 1 - self.cx, self.cy, self.width, self.height, self.baseline)

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float32)


@dataclass(frozen=True)
class DepthRecord:
    """One target frame: its image, optional stereo partner, neighbouring frames and camera file."""

    name: str
    image: Path
    right: Path | None
    neighbours: tuple[Path, ...]  # in the order of frame_offsets; empty for stereo-only trees
    camera: Path  # camera json (Cityscapes) or intrinsics.json (video)


# ---------------------------------------------------------------------------------------------
# Camera files


def read_intrinsics_json(path: str | Path, width: int, height: int) -> Camera:
    """A video layout's ``intrinsics.json`` for frames of ``width`` x ``height``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        normalized = bool(data.get("normalized", False))
        fx, fy, cx, cy = (float(data[k]) for k in ("fx", "fy", "cx", "cy"))
        baseline = float(data["baseline"]) if data.get("baseline") is not None else None
    except FileNotFoundError as err:
        raise DataError(f"{path}: intrinsics file not found") from err
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not an intrinsics file with fx, fy, cx, cy (missing or bad {err})") from err
    if normalized:
        fx, fy, cx, cy = fx * width, fy * height, cx * width - 0.5, cy * height - 0.5
    if fx <= 0 or fy <= 0:
        raise DataError(f"{path}: focal lengths must be positive, got fx={fx}, fy={fy}")
    if baseline is not None and baseline <= 0:
        raise DataError(f"{path}: baseline must be positive metres, got {baseline}")
    return Camera(fx, fy, cx, cy, width, height, baseline)


def read_cityscapes_camera(path: str | Path, width: int, height: int) -> Camera:
    """A Cityscapes ``*_camera.json`` (intrinsics in pixels of the stored image)."""
    cam = formats.read_camera_json(path)
    if cam["fx"] <= 0 or cam["fy"] <= 0 or cam["baseline"] <= 0:
        raise DataError(f"{path}: fx, fy and baseline must be positive, got fx={cam['fx']}, fy={cam['fy']}, "
                        f"baseline={cam['baseline']}")
    return Camera(cam["fx"], cam["fy"], cam["u0"], cam["v0"], width, height, cam["baseline"])


# ---------------------------------------------------------------------------------------------
# Discovery


def _list_file_ids(list_file: str, root: Path) -> list[str]:
    path = Path(list_file) if Path(list_file).is_file() else root / list_file
    if not path.is_file():
        raise DataError(f"list_file not found: {list_file}")
    ids = [Path(line.strip()).name.removesuffix(".png").removesuffix("_leftImg8bit")
           for line in path.read_text().splitlines()]
    return [i for i in ids if i and not i.startswith("#")]


def find_cityscapes_stereo(root: str | Path, split: str = "train", list_file: str | None = None) -> list[DepthRecord]:
    """Stereo records of a Cityscapes tree (existence of partners is checked by :func:`check_depth_tree`)."""
    root = Path(root)
    layout = formats.detect_cityscapes_layout(root)
    image_dir = formats.cityscapes_image_dir(root, layout) / split
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: Cityscapes {split} image folder not found")
    if list_file:
        ids = _list_file_ids(list_file, root)
    else:
        ids = sorted(p.name.removesuffix("_leftImg8bit.png") for p in image_dir.glob("*/*_leftImg8bit.png"))
    records = []
    for frame_id in ids:
        city = frame_id.split("_")[0]
        records.append(DepthRecord(
            frame_id, image_dir / city / f"{frame_id}_leftImg8bit.png",
            formats.cityscapes_right_image_path(root, split, city, frame_id), (),
            formats.cityscapes_camera_path(root, split, city, frame_id)))
    return records


def video_sequences(root: str | Path) -> list[Path]:
    """Sequence folders of a video tree: the root itself if it has ``images/``, else its children that do."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: video root not found")
    if (root / VIDEO_IMAGE_DIR).is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if (p / VIDEO_IMAGE_DIR).is_dir())


def _frames(sequence: Path) -> list[Path]:
    return sorted(p for p in (sequence / VIDEO_IMAGE_DIR).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _intrinsics_path(root: Path, sequence: Path) -> Path:
    own = sequence / INTRINSICS_FILE
    return own if own.is_file() else root / INTRINSICS_FILE


def find_video(root: str | Path, frame_offsets: tuple[int, ...] = (-1, 1)) -> list[DepthRecord]:
    """Target frames of every sequence that have all their neighbours at ``frame_offsets``."""
    root = Path(root)
    sequences = video_sequences(root)
    if not sequences:
        raise DataError(f"{root}: no sequence folders with an '{VIDEO_IMAGE_DIR}/' folder")
    low, high = min(0, *frame_offsets), max(0, *frame_offsets)
    records = []
    for sequence in sequences:
        frames = _frames(sequence)
        camera = _intrinsics_path(root, sequence)
        right_dir = sequence / VIDEO_RIGHT_DIR
        for i in range(-low, len(frames) - high):
            right = right_dir / frames[i].name if right_dir.is_dir() else None
            name = f"{sequence.name}/{frames[i].stem}" if sequence != root else frames[i].stem
            records.append(DepthRecord(name, frames[i], right,
                                       tuple(frames[i + o] for o in frame_offsets), camera))
    return records


def find_depth_records(cfg: DepthDataConfig) -> list[DepthRecord]:
    if not cfg.root:
        raise DataError("data.root: no root folder given for the depth training data")
    if cfg.layout == "cityscapes":
        return find_cityscapes_stereo(cfg.root, cfg.split, cfg.list_file)
    return find_video(cfg.root, cfg.frame_offsets)


def read_camera(cfg_layout: str, record: DepthRecord, width: int, height: int) -> Camera:
    if cfg_layout == "cityscapes":
        return read_cityscapes_camera(record.camera, width, height)
    return read_intrinsics_json(record.camera, width, height)


# ---------------------------------------------------------------------------------------------
# Dataset


def load_rgb(path: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) float32 RGB in [0, 1] resized to ``size`` (W, H; None keeps it), and the stored (W, H)."""
    rgb = formats.read_image_rgb(path)
    h, w = rgb.shape[:2]
    if size is not None and (w, h) != tuple(size):
        shrink = size[0] < w and size[1] < h
        rgb = cv2.resize(rgb, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return rgb.astype(np.float32) / 255.0, (w, h)


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))  # (3, H, W)


class SelfSupervisedDepthDataset(torch.utils.data.Dataset):
    """Training items of :class:`DepthDataConfig` (see the module docstring for the item keys).

    ``stereo`` / ``mono`` choose which views are loaded. The flip of item ``i`` in epoch ``e`` is
    drawn from a generator seeded with (seed, e, i), so runs repeat with any number of workers.
    """

    def __init__(self, cfg: DepthDataConfig, *, stereo: bool, mono: bool, train: bool = True, seed: int = 0):
        if not stereo and not mono:
            raise ConfigError("at least one of stereo and monocular supervision is needed")
        if mono and cfg.layout == "cityscapes":
            raise ConfigError("data.layout: 'cityscapes' has stereo pairs only; monocular supervision needs "
                              "the 'video' layout")
        self.cfg, self.stereo, self.mono, self.train, self.seed = cfg, stereo, mono, train, seed
        self.records = find_depth_records(cfg)
        if not self.records:
            raise DataError(f"{cfg.root}: no {cfg.layout} training frames found")
        if stereo and any(r.right is None for r in self.records):
            raise DataError(f"{cfg.root}: stereo supervision needs a '{VIDEO_RIGHT_DIR}/' folder in every sequence")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        width, height = self.cfg.size
        image, stored = load_rgb(record.image, (width, height))
        camera = read_camera(self.cfg.layout, record, *stored).resized(width, height)
        if self.stereo and camera.baseline is None:
            raise DataError(f"{record.camera}: stereo supervision needs 'baseline' in metres")
        right = load_rgb(record.right, (width, height))[0] if self.stereo else None
        frames = [load_rgb(p, (width, height))[0] for p in record.neighbours] if self.mono else []
        flip = False
        if self.train and self.cfg.flip > 0:
            flip = bool(np.random.default_rng([self.seed, self.epoch, index]).random() < self.cfg.flip)
        baseline = camera.baseline or 0.0
        if flip:
            # Mirror every view and keep their roles: in the mirrored scene the partner camera sits
            # on the other side, which the negative baseline says (Monodepth2 does the same).
            image, camera, baseline = image[:, ::-1], camera.flipped(), -baseline
            frames = [f[:, ::-1] for f in frames]
            right = None if right is None else right[:, ::-1]
        item = {"image": _to_tensor(image), "K": torch.from_numpy(camera.matrix()),
                "baseline": torch.tensor(baseline, dtype=torch.float32), "name": record.name}
        if right is not None:
            item["stereo"] = _to_tensor(right)
        if frames:
            item["frames"] = torch.stack([_to_tensor(f) for f in frames])  # (S, 3, H, W)
        return item


# ---------------------------------------------------------------------------------------------
# Tree checks (the part of ``cordaseg data check`` for depth training layouts)


def _image_size(path: Path, problems: list[Problem]) -> tuple[int, int] | None:
    if not path.is_file():
        problems.append(Problem(path, "missing", "missing file"))
        return None
    array = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if array is None:
        problems.append(Problem(path, "unreadable", "cannot decode the image (unreadable or truncated)"))
        return None
    return array.shape[1], array.shape[0]


def _check_pair(image: Path, right: Path | None, decode: bool, problems: list[Problem]) -> tuple[int, int] | None:
    """Existence (and with ``decode`` the size) of a view and its stereo partner."""
    if not decode:
        problems += [Problem(p, "missing", "missing file") for p in (image, right) if p is not None and not p.is_file()]
        return None
    size = _image_size(image, problems)
    if right is not None:
        right_size = _image_size(right, problems)
        if size and right_size and size != right_size:
            problems.append(Problem(right, "size", f"right view is {right_size[0]}x{right_size[1]}, left view "
                                                   f"{size[0]}x{size[1]}"))
    return size


def _check_camera(layout: str, path: Path, size: tuple[int, int] | None, has_right: bool,
                  problems: list[Problem]) -> None:
    try:
        width, height = size or (1, 1)
        if layout == "cityscapes-stereo":
            camera = read_cityscapes_camera(path, width, height)
        else:
            camera = read_intrinsics_json(path, width, height)
    except DataError as err:
        kind = "missing" if not path.is_file() else "format"
        problems.append(Problem(path, kind, str(err).removeprefix(f"{path}: ")))
        return
    if has_right and camera.baseline is None:
        problems.append(Problem(path, "format", "a right view exists but the file has no 'baseline'"))


def _check_cityscapes_stereo(root: Path, split: str, decode: bool, report: CheckReport) -> None:
    records = find_cityscapes_stereo(root, split)
    if not records:
        report.problems.append(Problem(root, "tree", f"no Cityscapes {split} images found"))
    report.counts["frames"] = len(records)
    for record in records:
        size = _check_pair(record.image, record.right, decode, report.problems)
        _check_camera("cityscapes-stereo", record.camera, size, True, report.problems)


def _check_video(root: Path, frame_offsets: tuple[int, ...], decode: bool, report: CheckReport) -> None:
    sequences = video_sequences(root)
    if not sequences:
        report.problems.append(Problem(root, "tree", f"no sequence folders with an '{VIDEO_IMAGE_DIR}/' folder"))
    span = max(0, *frame_offsets) - min(0, *frame_offsets)
    for sequence in sequences:
        frames = _frames(sequence)
        report.counts["frames"] += len(frames)
        if len(frames) <= span:
            report.problems.append(Problem(sequence, "tree", f"{len(frames)} frames, too few for frame offsets "
                                                             f"{frame_offsets}"))
        right_dir = sequence / VIDEO_RIGHT_DIR
        first = None
        for frame in frames:
            right = right_dir / frame.name if right_dir.is_dir() else None
            size = _check_pair(frame, right, decode, report.problems)
            if size is not None and first is None:
                first = size
            elif size is not None and size != first:
                report.problems.append(Problem(frame, "size", f"frame is {size[0]}x{size[1]}, the sequence's "
                                                              f"first frame {first[0]}x{first[1]}"))
        intrinsics = _intrinsics_path(root, sequence)
        if not intrinsics.is_file():
            report.problems.append(Problem(sequence / INTRINSICS_FILE, "missing",
                                           "missing intrinsics file (also none at the root)"))
        else:
            _check_camera("video", intrinsics, first, right_dir.is_dir(), report.problems)


def check_depth_tree(layout: str, root: str | Path, split: str = "train",
                     frame_offsets: tuple[int, ...] = (-1, 1), decode: bool = True) -> CheckReport:
    """Check a depth training tree: ``layout`` "cityscapes-stereo" or "video".

    Reports missing right views, camera / intrinsics files that are missing, malformed or have
    non-positive focal lengths or baseline, left and right views of different sizes, frames of
    one sequence with different sizes, and sequences too short for ``frame_offsets``. With
    ``decode`` False images are not decoded (existence and camera files only). Never raises
    DataError; this is the function ``cordaseg data check`` calls for these layouts.
    """
    report = CheckReport()
    root = Path(root)
    try:
        if layout == "cityscapes-stereo":
            _check_cityscapes_stereo(root, split, decode, report)
        elif layout == "video":
            _check_video(root, frame_offsets, decode, report)
        else:
            raise ValueError(f"depth tree layout must be 'cityscapes-stereo' or 'video', got {layout!r}")
    except DataError as err:
        report.problems.append(Problem(root, "tree", str(err).removeprefix(f"{root}: ")))
    return report
