"""GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes datasets with depth (the paper's experimental data,
read and preprocessed as the reference code's ``data/*_dataset.py`` and ``data/cityscapes_loader.py``).

:class:`DatasetConfig` selects a tree, its split, depth and label files and the preprocessing
(defaults: the reference recipe of the format). :func:`find_samples` lists the frames with their
file paths; :func:`build_dataset` returns a :class:`SegmentationDataset` whose items are dicts:

- ``image``: (3, H, W) float32, BGR minus the caffe mean (no scaling);
- ``label``: (H, W) int64 train IDs, 255 = ignore;
- ``depth``: (H, W) float32 inverse-depth-like value, exactly ``formats.INVALID_DEPTH`` (1.0) =
  invalid (all invalid when the config has ``depth: none``);
- ``name`` (str), ``image_path`` (str), ``original_size`` ((2,) int64: H, W of the file) and
  ``index`` (int).

Training items (``train=True``) are resized and randomly cropped; the randomness of item ``i``
in epoch ``e`` comes only from a generator seeded with (seed, e, i), so a run is reproducible
with any number of loader workers. Evaluation items (``train=False``) have the image resized to
``eval_size`` (by default Cityscapes 1024x512, GTA5 and SYNTHIA 1280x720) and the label and
depth at full resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cordaseg.config import ConfigError
from cordaseg.data import formats, transforms
from cordaseg.data.labels import CITYSCAPES_ID_TO_TRAIN, IGNORE_INDEX, SYNTHIA_ID_TO_TRAIN
from cordaseg.data.memory import keep_freed_memory
from cordaseg.data.normalization import CAFFE_MEAN_BGR
from cordaseg.errors import DataError

# Reference geometry per format: fixed resize (W, H), or a scale of the frame.
DEFAULT_RESIZE: dict[str, tuple[int, int] | None] = {"gta5": (1280, 720), "synthia": (1280, 720), "cityscapes": None}
DEFAULT_RESIZE_SCALE: dict[str, float | None] = {"gta5": None, "synthia": None, "cityscapes": 0.5}
# Evaluation image size (W, H): the paper's Cityscapes protocol, and for source-domain evaluation
# the training resize of GTA5 and SYNTHIA (the reference evaluates GTA5 at 1280x720).
DEFAULT_EVAL_SIZE: dict[str, tuple[int, int]] = {"gta5": (1280, 720), "synthia": (1280, 720),
                                                 "cityscapes": (1024, 512)}
# Interpolation per modality and format, as the reference code resizes each file.
IMAGE_RESAMPLE = {"gta5": "bicubic", "synthia": "bicubic", "cityscapes": "bilinear"}
LABEL_RESAMPLE = "nearest"
DEPTH_RESAMPLE = {"gta5": "bilinear", "synthia": "nearest", "cityscapes": "nearest"}
# The library the reference resizes depth with: cv2.resize for GTA5 and SYNTHIA, PIL (through
# scipy.misc.imresize and its crop transforms) for Cityscapes.
REFERENCE_DEPTH_RESIZE: dict[str, transforms.Backend] = {"gta5": "opencv", "synthia": "opencv", "cityscapes": "pil"}
# mmseg's RandomCrop tests at most this many crops against cat_max_ratio.
CAT_MAX_TRIES = 10
# Which depth file "native" means.
NATIVE_DEPTH = {"gta5": "disparity", "synthia": "synthia", "cityscapes": "stereo"}


@dataclass
class RareClassSamplingConfig:
    """Rare-class sampling of a labelled training set (Hoyer et al., "DAFormer", CVPR 2022;
    :mod:`cordaseg.data.rare_class`): draw a class c with P(c) = softmax((1 - f_c) / temperature),
    f_c the class's share of the set's labelled pixels, then a frame uniformly among those with
    more than ``min_pixels`` pixels of c."""

    enabled: bool = False
    """Sample source frames by class instead of one shuffled pass per epoch."""
    temperature: float = 0.01
    """T of the softmax; smaller favours rare classes more (DAFormer: 0.01)."""
    min_pixels: int = 3000
    """A frame is a candidate for class c when its full-resolution label has more than this many
    pixels of c (DAFormer: 3000)."""
    min_crop_ratio: float = 0.5
    """Crop again (up to 10 times) until the crop holds more than min_pixels * min_crop_ratio
    pixels of the sampled class; 0 = never (DAFormer: 0.5)."""
    stats_file: str | None = None
    """JSON cache of each frame's class pixel counts; None = ``cordaseg_class_stats.json`` in the
    dataset root, or ``source_class_stats.json`` in the run folder when the root is not writable."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"rare_class_sampling.temperature: {self.temperature} must be > 0")
        if self.min_pixels < 0 or self.min_crop_ratio < 0:
            raise ConfigError("rare_class_sampling: min_pixels and min_crop_ratio must be >= 0")


@dataclass
class DatasetConfig:
    """One dataset tree and its preprocessing. Defaults are the reference recipe of the format."""

    format: Literal["gta5", "synthia", "cityscapes"] = "gta5"
    """Dataset kind, which fixes the layout, encodings and default preprocessing."""
    root: str = ""
    """Root folder of the tree (the layout of ``format``; see :mod:`cordaseg.data.formats`)."""
    split: Literal["train", "val"] = "train"
    """Cityscapes split folder; GTA5 and SYNTHIA have no split folders (use ``list_file``)."""
    depth: Literal["none", "native", "stereo", "mono"] = "native"
    """Depth files: "native" = GTA5 ``disparity/``, SYNTHIA ``Depth/Depth``, Cityscapes stereo
    ``.mat``; "stereo" / "mono" choose the Cityscapes kind; "none" gives all-invalid depth."""
    synthia_labels: Literal["mapped", "raw"] = "mapped"
    """SYNTHIA labels from ``synthia_mapped_to_cityscapes/`` or from the raw 16-bit ``GT/LABELS/``."""
    layout: Literal["auto", "official", "trainvaltest"] = "auto"
    """Cityscapes folder names: official, the reference's ``*_trainvaltest``, or detect."""
    list_file: str | None = None
    """Optional text file of frames, one per line (file names or stems); default: all found."""
    use_labels: bool = True
    """Read the label files; False gives all-ignore labels (unlabelled target training)."""
    resize: tuple[int, int] | None = None
    """Training resize (W, H); None with ``resize_scale`` None = the format default."""
    resize_scale: float | None = None
    """Training resize as a factor of the frame size (Cityscapes default 0.5)."""
    crop: tuple[int, int] | None = (512, 512)
    """Random crop (W, H) after the resize; None = the whole resized frame."""
    scale_range: tuple[float, float] = (1.0, 1.0)
    """Random scale jitter on top of the resize (the paper uses none)."""
    cat_max_ratio: float = 1.0
    """Crop again while one class covers this share or more of the crop's labelled pixels, or the
    crop shows a single class: mmseg's ``RandomCrop(cat_max_ratio)`` rule, which DAFormer and MIC
    use with 0.75 (at most 10 new crops; the last is kept unchecked). Needs labels
    (``use_labels``); 1.0 = off (CorDA's recipe)."""
    flip: bool = False
    """Random horizontal flip (the paper uses none)."""
    depth_resize: Literal["reference", "opencv", "pil"] = "reference"
    """Library of the training depth resize: "opencv" (``cv2.resize``, no antialiasing: the reference
    for GTA5 and SYNTHIA), "pil" (PIL, antialiased, only the crop window is resampled: the reference
    for Cityscapes), or "reference" = the reference's choice for ``format``."""
    mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR
    """Mean subtracted from the BGR image on the 0..255 scale."""
    eval_size: tuple[int, int] | Literal["auto"] | None = "auto"
    """Evaluation: the image is resized to this (W, H); labels and depth stay at full resolution.
    "auto" = the format's size: Cityscapes 1024x512 (the paper), GTA5 and SYNTHIA 1280x720 (their
    training resize); None = the file's own size."""
    rare_class_sampling: RareClassSamplingConfig = field(default_factory=RareClassSamplingConfig)
    """Sample frames by class (DAFormer's rare-class sampling); only for a labelled training set."""

    def __post_init__(self) -> None:
        if self.depth in ("stereo", "mono") and self.format != "cityscapes":
            raise ConfigError(f"depth: {self.depth!r} is a Cityscapes depth kind; use 'native' or 'none' "
                              f"for {self.format}")
        if self.resize is not None and self.resize_scale is not None:
            raise ConfigError("resize and resize_scale are alternatives; set only one")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ConfigError(f"scale_range: {self.scale_range} must satisfy 0 < low <= high")
        for key in ("resize", "crop", "eval_size"):
            size = getattr(self, key)
            if size is not None and size != "auto" and min(size) < 1:
                raise ConfigError(f"{key}: {size} must be positive (W, H)")
        if self.resize_scale is not None and self.resize_scale <= 0:
            raise ConfigError(f"resize_scale: {self.resize_scale} must be positive")
        if not 0.0 < self.cat_max_ratio <= 1.0:
            raise ConfigError(f"cat_max_ratio: {self.cat_max_ratio} must lie in (0, 1] (1 = off)")
        if self.cat_max_ratio < 1.0 and not self.use_labels:
            raise ConfigError(f"cat_max_ratio: {self.cat_max_ratio} needs the labels of the frames, but use_labels "
                              "is false (set cat_max_ratio: 1.0 for an unlabelled set)")

    @property
    def depth_kind(self) -> str:
        """"none", "disparity" (GTA5), "synthia", "stereo" or "mono"."""
        return NATIVE_DEPTH[self.format] if self.depth == "native" else self.depth

    @property
    def depth_backend(self) -> transforms.Backend:
        """"opencv" or "pil": the library that resizes training depth."""
        return REFERENCE_DEPTH_RESIZE[self.format] if self.depth_resize == "reference" else self.depth_resize

    def target_eval_size(self) -> tuple[int, int] | None:
        """(W, H) the evaluation image is resized to, or None for the file's size."""
        return DEFAULT_EVAL_SIZE[self.format] if self.eval_size == "auto" else self.eval_size

    def target_resize(self) -> tuple[tuple[int, int] | None, float | None]:
        if self.resize is None and self.resize_scale is None:
            return DEFAULT_RESIZE[self.format], DEFAULT_RESIZE_SCALE[self.format]
        return self.resize, self.resize_scale


@dataclass(frozen=True)
class SampleRecord:
    """One frame and its files; ``label`` / ``depth`` are None where the config reads none."""

    name: str
    image: Path
    label: Path | None
    depth: Path | None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. Cityscapes city, split


# ---------------------------------------------------------------------------------------------
# Discovery


def _read_list_file(list_file: str, root: Path) -> list[str]:
    path = Path(list_file)
    if not path.is_file() and (root / list_file).is_file():
        path = root / list_file
    if not path.is_file():
        raise DataError(f"list_file not found: {list_file}")
    lines = [line.strip() for line in path.read_text().splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise DataError(f"{path}: list file has no entries")
    return entries


def _require_dir(directory: Path, what: str) -> None:
    if not directory.is_dir():
        raise DataError(f"{directory}: {what} folder not found")


def _cityscapes_frame_id(entry: str) -> str:
    stem = Path(entry).name
    for suffix in (".png", "_leftImg8bit", "_gtFine_labelIds"):
        stem = stem.removesuffix(suffix)
    return stem


def find_samples(cfg: DatasetConfig) -> list[SampleRecord]:
    """The frames of the tree, sorted, with their file paths (existence is not checked here
    beyond the image folder; :mod:`cordaseg.data.check` reports missing partners)."""
    if not cfg.root:
        raise DataError(f"no root folder given for the {cfg.format} dataset")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    entries = _read_list_file(cfg.list_file, root) if cfg.list_file else None
    records = []
    depth_kind = cfg.depth_kind
    if cfg.format in ("gta5", "synthia"):
        image_dir = root / (formats.GTA5_IMAGE_DIR if cfg.format == "gta5" else formats.SYNTHIA_IMAGE_DIR)
        _require_dir(image_dir, "image")
        stems = [Path(e).stem for e in entries] if entries else sorted(p.stem for p in image_dir.glob("*.png"))
        for stem in stems:
            if cfg.format == "gta5":
                paths = formats.gta5_paths(root, stem)
            else:
                paths = formats.synthia_paths(root, stem, cfg.synthia_labels)
            records.append(SampleRecord(stem, paths.image, paths.label if cfg.use_labels else None,
                                        paths.depth if depth_kind != "none" else None))
        return records
    layout = formats.detect_cityscapes_layout(root) if cfg.layout == "auto" else cfg.layout
    image_dir = formats.cityscapes_image_dir(root, layout) / cfg.split
    _require_dir(image_dir, f"Cityscapes {cfg.split} image")
    if entries:
        frame_ids = [_cityscapes_frame_id(e) for e in entries]
    else:
        frame_ids = sorted(_cityscapes_frame_id(p.name) for p in image_dir.glob("*/*_leftImg8bit.png"))
    cs_depth = depth_kind if depth_kind in ("stereo", "mono") else "none"
    for frame_id in frame_ids:
        city = frame_id.split("_")[0]
        paths = formats.cityscapes_paths(root, cfg.split, city, frame_id, layout, cs_depth)
        records.append(SampleRecord(frame_id, paths.image, paths.label if cfg.use_labels else None,
                                    paths.depth, {"city": city, "split": cfg.split, "layout": layout}))
    return records


# ---------------------------------------------------------------------------------------------
# Decoding one frame


def read_label_raw(cfg: DatasetConfig, path: Path) -> np.ndarray:
    """(H, W) label IDs as stored: uint8 Cityscapes / SYNTHIA IDs, or uint16 raw SYNTHIA classes."""
    if cfg.format == "synthia" and cfg.synthia_labels == "raw":
        class_ids, _ = formats.read_synthia_label(path)
        return class_ids
    return formats.read_label_ids(path)


def label_table(cfg: DatasetConfig) -> np.ndarray:
    """Lookup table from the stored label IDs of ``cfg`` to train IDs (255 = ignore)."""
    if cfg.format == "synthia":
        return SYNTHIA_ID_TO_TRAIN if cfg.synthia_labels == "raw" else SYNTHIA_ID_TO_TRAIN[:256]
    return CITYSCAPES_ID_TO_TRAIN


def read_label_train_ids(cfg: DatasetConfig, path: Path) -> np.ndarray:
    """(H, W) uint8 train IDs (255 = ignore) from the config's label file kind."""
    return label_table(cfg)[read_label_raw(cfg, path)]


def read_depth_raw(depth_kind: str, path: Path) -> np.ndarray:
    """(H, W) depth values as stored: uint16 PNG values, or metres from the stereo ``.mat``."""
    if depth_kind in ("disparity", "mono", "synthia"):
        return formats.read_uint16_png(path)
    if depth_kind == "stereo":
        return formats.read_stereo_depth_mat(path)
    raise ValueError(f"unknown depth kind {depth_kind!r}")


DEPTH_DECODERS = {
    "disparity": formats.decode_gta_disparity,
    "mono": formats.decode_mono_disparity,
    "synthia": formats.decode_synthia_depth,
    "stereo": formats.decode_stereo_depth,
}


def read_depth(depth_kind: str, path: Path) -> np.ndarray:
    """(H, W) float32 inverse-depth-like values (invalid = 1.0) of one depth file."""
    return DEPTH_DECODERS[depth_kind](read_depth_raw(depth_kind, path))


@dataclass
class RawFrame:
    """A frame as stored, before ID mapping, depth decoding and geometry (None = not read)."""

    image_bgr: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray | None  # (H, W) stored label IDs
    depth: np.ndarray | None  # (H, W) stored depth values


def read_frame(cfg: DatasetConfig, record: SampleRecord) -> RawFrame:
    image = formats.read_image_bgr(record.image)
    label = read_label_raw(cfg, record.label) if record.label is not None else None
    depth = read_depth_raw(cfg.depth_kind, record.depth) if record.depth is not None else None
    return RawFrame(image, label, depth)


def _normalize_bgr(image_bgr: np.ndarray, mean_bgr: tuple[float, float, float]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 minus the mean, in one pass (the values of
    ``image.astype(float32) - mean``)."""
    image = np.empty((3, *image_bgr.shape[:2]), dtype=np.float32)  # (3, H, W)
    mean = np.asarray(mean_bgr, dtype=np.float32)[:, None, None]
    np.subtract(image_bgr.transpose(2, 0, 1), mean, out=image, dtype=np.float32)
    return torch.from_numpy(image)


class SegmentationDataset(torch.utils.data.Dataset):
    """Frames of one tree with the reference preprocessing; see the module docstring for items.

    Keys may be an index or an ``(epoch, index)`` pair (what :class:`EpochSampler` yields, so the
    epoch reaches loader workers that hold their own copy of the dataset); further integers after
    the index (``(epoch, index, draw, attempt)``, :mod:`cordaseg.data.rare_class`) join the seed.
    """

    def __init__(self, cfg: DatasetConfig, records: list[SampleRecord], *, train: bool, seed: int = 0):
        self.cfg = cfg
        self.records = records
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.resize, self.resize_scale = cfg.target_resize()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        keep_freed_memory()  # once per process: the frame buffers below are reused, not page-faulted again
        # Extra key parts (a draw and an attempt of rare-class sampling) give the crop its own seed.
        epoch, index, *draw = key if isinstance(key, tuple) else (self.epoch, key)
        record = self.records[index]
        frame = read_frame(self.cfg, record)
        height, width = frame.image_bgr.shape[:2]
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index, *draw])
            image, label, depth = self._train_geometry(frame, rng)
        else:
            image, label, depth = self._eval_geometry(frame)
        return {
            "image": _normalize_bgr(image, self.cfg.mean_bgr),
            "label": torch.from_numpy(label.astype(np.int64)),
            "depth": torch.from_numpy(depth),
            "name": record.name,
            "image_path": str(record.image),
            "original_size": torch.tensor([height, width], dtype=torch.int64),
            "index": index,
        }

    def _train_geometry(self, frame: RawFrame, rng: np.random.Generator):
        fmt = self.cfg.format
        source_size = (frame.image_bgr.shape[1], frame.image_bgr.shape[0])
        target = transforms.resized_size(source_size, self.resize, self.resize_scale)
        geometry = transforms.sample_geometry(rng, source_size, target, self.cfg.crop,
                                              self.cfg.scale_range, self.cfg.flip)
        label = None
        if self.cfg.cat_max_ratio < 1.0 and self.cfg.crop is not None and frame.label is not None:
            geometry, label = self._class_balanced_window(frame.label, geometry, rng)
        # Padding: the mean colour (about 0 after normalisation), ignore label, invalid depth.
        fill = tuple(int(round(m)) for m in self.cfg.mean_bgr)
        image = transforms.apply_geometry(frame.image_bgr, geometry, IMAGE_RESAMPLE[fmt], fill)
        out_h, out_w = image.shape[:2]
        # ID mapping and depth decoding run inside apply_geometry (on the cropped region only with PIL).
        if frame.label is None:
            label = np.full((out_h, out_w), IGNORE_INDEX, dtype=np.uint8)
        elif label is None:  # (the crop rule has the accepted window's labels already)
            label = self._crop_label(frame.label, geometry)
        if frame.depth is None:
            depth = np.full((out_h, out_w), formats.INVALID_DEPTH, dtype=np.float32)
        else:
            depth = transforms.apply_geometry(frame.depth, geometry, DEPTH_RESAMPLE[fmt], formats.INVALID_DEPTH,
                                              convert=DEPTH_DECODERS[self.cfg.depth_kind],
                                              backend=self.cfg.depth_backend)
        return image, label, depth

    def _crop_label(self, raw_label: np.ndarray, geometry: transforms.Geometry) -> np.ndarray:
        """Train-ID labels of the crop ``geometry`` (ID mapping on the cropped region only)."""
        table = label_table(self.cfg)
        return transforms.apply_geometry(raw_label, geometry, LABEL_RESAMPLE, IGNORE_INDEX,
                                         convert=lambda ids: table[ids])

    def _class_balanced_window(self, raw_label: np.ndarray, geometry: transforms.Geometry,
                               rng: np.random.Generator) -> tuple[transforms.Geometry, np.ndarray | None]:
        """mmseg's ``RandomCrop`` with ``cat_max_ratio``: test the crop's train-ID labels up to 10
        times, drawing a new window (same scale and flip) after each failed test; the window drawn
        after the 10th failure is kept unchecked. Returns the window and its labels (None for the
        unchecked window, whose labels were not computed)."""
        for _ in range(CAT_MAX_TRIES):
            label = self._crop_label(raw_label, geometry)
            if not transforms.dominated(label, self.cfg.cat_max_ratio, IGNORE_INDEX):
                return geometry, label
            window = transforms.draw_window(rng, geometry.target_size, self.cfg.crop)
            geometry = dataclasses.replace(geometry, window=window)
        return geometry, None

    def _eval_geometry(self, frame: RawFrame):
        height, width = frame.image_bgr.shape[:2]
        image = frame.image_bgr
        eval_size = self.cfg.target_eval_size()
        if eval_size is not None:
            image = transforms.resize(image, eval_size, IMAGE_RESAMPLE[self.cfg.format])
        if frame.label is None:
            label = np.full((height, width), IGNORE_INDEX, np.uint8)
        else:
            label = label_table(self.cfg)[frame.label]
        if frame.depth is None:
            depth = np.full((height, width), formats.INVALID_DEPTH, dtype=np.float32)
        else:
            depth = DEPTH_DECODERS[self.cfg.depth_kind](frame.depth)
        return image, label, depth


def build_dataset(cfg: DatasetConfig, *, train: bool, seed: int = 0) -> SegmentationDataset:
    """The dataset of ``cfg``; raises :class:`DataError` when the tree has no frames."""
    records = find_samples(cfg)
    if not records:
        raise DataError(f"{cfg.root}: no {cfg.format} frames found (split {cfg.split!r})")
    return SegmentationDataset(cfg, records, train=train, seed=seed)
