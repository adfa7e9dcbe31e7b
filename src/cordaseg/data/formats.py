"""File encodings and tree layouts of GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes (docs/data-formats.md).

Low-level readers and writers of every real file kind, with the decoding formulas of docs/data-formats.md, and the
path helpers of each tree layout. The readers avoid the traps listed there ("Reading traps"):

- label PNGs may be palette ("P" mode) images, so IDs are read with PIL as the raw index plane
  (``cv2.imread`` would return palette colours and ``convert('L')`` would destroy the IDs);
- 16-bit multi-channel PNGs (SYNTHIA ``GT/LABELS`` and depth) are read with
  ``cv2.IMREAD_UNCHANGED`` (PIL reads them as 8-bit; ``IMREAD_ANYDEPTH`` averages channels),
  taking the R channel, which is index 2 of OpenCV's BGR(A) order;
- inverse-depth-like values use exactly 1.0 for "invalid".

Every reader raises :class:`DataError` naming the file when it is missing or cannot be decoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.io
from PIL import Image

from cordaseg.errors import DataError

# OpenCV's own thread pool does not survive fork(): a loader worker forked after the pool has
# started waits forever as soon as it touches it (even in cv2.setNumThreads). Data loading
# parallelises over worker processes, so the processes that read and resize frames keep OpenCV
# single-threaded from the start and never start that pool.
cv2.setNumThreads(1)

# Invalid depth marker of the loader's inverse-depth-like values (docs/data-formats.md, "Depth values").
INVALID_DEPTH = 1.0
# Numerator and offset of the metric-depth -> inverse-depth-like conversion (docs/data-formats.md, "Depth values").
INVERSE_DEPTH_SCALE = 655.36
INVERSE_DEPTH_OFFSET = 0.01
# Stereo depth: clip range in metres and the smallest valid depth.
STEREO_MAX_DEPTH_M = 655.35
STEREO_MIN_DEPTH_M = 0.1

# Colours of the Cityscapes label IDs 0..33 (the official label table), used as the palette of
# label PNGs written in "P" mode, like the GTA5 label files.
CITYSCAPES_ID_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81),
    (128, 64, 128), (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70),
    (102, 102, 156), (190, 153, 153), (180, 165, 180), (150, 100, 100), (150, 120, 90),
    (153, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35),
    (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


def _cityscapes_palette() -> list[int]:
    flat = [channel for color in CITYSCAPES_ID_COLORS for channel in color]
    return flat + [0] * (768 - len(flat))


CITYSCAPES_ID_PALETTE: list[int] = _cityscapes_palette()


# ---------------------------------------------------------------------------------------------
# Writers


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _cv2_write(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise DataError(f"{path}: could not write the file")


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write (H, W, 3) uint8 RGB as an 8-bit RGB PNG."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    _cv2_write(_prepare(path), np.ascontiguousarray(rgb[..., ::-1]))


def write_palette_label_png(path: str | Path, label_ids: np.ndarray) -> None:
    """Write (H, W) uint8 Cityscapes label IDs as a palette ("P" mode) PNG, like GTA5's labels."""
    label_ids = np.asarray(label_ids)
    if label_ids.dtype != np.uint8 or label_ids.ndim != 2:
        raise ValueError(f"expected (H, W) uint8 label IDs, got {label_ids.dtype} {label_ids.shape}")
    height, width = label_ids.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(label_ids).tobytes())
    image.putpalette(CITYSCAPES_ID_PALETTE)
    image.save(_prepare(path))


def write_gray_label_png(path: str | Path, label_ids: np.ndarray) -> None:
    """Write (H, W) uint8 IDs as an 8-bit greyscale PNG (Cityscapes ``*_labelIds.png``, SYNTHIA mapped)."""
    label_ids = np.asarray(label_ids)
    if label_ids.dtype != np.uint8 or label_ids.ndim != 2:
        raise ValueError(f"expected (H, W) uint8 IDs, got {label_ids.dtype} {label_ids.shape}")
    _cv2_write(_prepare(path), np.ascontiguousarray(label_ids))


def write_uint16_png(path: str | Path, array: np.ndarray) -> None:
    """Write (H, W) uint16 as a single-channel 16-bit PNG."""
    array = np.asarray(array)
    if array.dtype != np.uint16 or array.ndim != 2:
        raise ValueError(f"expected (H, W) uint16, got {array.dtype} {array.shape}")
    _cv2_write(_prepare(path), np.ascontiguousarray(array))


def write_synthia_label_png(path: str | Path, class_ids: np.ndarray, instance_ids: np.ndarray) -> None:
    """Write SYNTHIA ``GT/LABELS``: 16-bit RGB, class ID in R, instance ID in G, B zero."""
    class_ids = np.asarray(class_ids)
    instance_ids = np.asarray(instance_ids)
    if class_ids.ndim != 2 or class_ids.shape != instance_ids.shape:
        raise ValueError(f"class and instance IDs must be (H, W) of one shape: {class_ids.shape}, "
                         f"{instance_ids.shape}")
    bgr = np.zeros((*class_ids.shape, 3), dtype=np.uint16)  # (H, W, 3) in OpenCV's BGR order
    bgr[..., 2] = class_ids
    bgr[..., 1] = instance_ids
    _cv2_write(_prepare(path), bgr)


def write_synthia_depth_png(path: str | Path, depth_cm: np.ndarray, *, equal_channels: bool = False) -> None:
    """Write SYNTHIA ``Depth/Depth``: 16-bit RGB with the depth in centimetres in R, G and B zero.

    Zero G/B channels make the file fail loudly with readers that average channels
    (``IMREAD_ANYDEPTH``), which is the trap the real files set. ``equal_channels`` writes the
    depth in all three channels instead, as the real files are described, so that such readers
    (the reference code's) also get the right value: what a depth export writes.
    """
    depth_cm = np.asarray(depth_cm)
    if depth_cm.dtype != np.uint16 or depth_cm.ndim != 2:
        raise ValueError(f"expected (H, W) uint16 centimetres, got {depth_cm.dtype} {depth_cm.shape}")
    bgr = np.zeros((*depth_cm.shape, 3), dtype=np.uint16)
    bgr[..., 2] = depth_cm
    if equal_channels:
        bgr[..., 0] = bgr[..., 1] = depth_cm
    _cv2_write(_prepare(path), bgr)


def write_stereo_depth_mat(path: str | Path, depth_m: np.ndarray) -> None:
    """Write a Cityscapes stereo depth file: MATLAB v5 ``.mat`` with variable ``depth_map`` in metres."""
    depth_m = np.asarray(depth_m, dtype=np.float32)
    if depth_m.ndim != 2:
        raise ValueError(f"expected (H, W) depth in metres, got shape {depth_m.shape}")
    scipy.io.savemat(str(_prepare(path)), {"depth_map": depth_m})


def write_camera_json(
    path: str | Path, *, baseline: float, fx: float, fy: float, u0: float, v0: float
) -> None:
    """Write a Cityscapes ``*_camera.json`` with ``extrinsic.baseline`` and ``intrinsic.fx, fy, u0, v0``."""
    camera = {
        "extrinsic": {"baseline": baseline, "pitch": 0.0, "roll": 0.0, "yaw": 0.0,
                      "x": 1.7, "y": 0.0, "z": 1.2},
        "intrinsic": {"fx": fx, "fy": fy, "u0": u0, "v0": v0},
    }
    _prepare(path).write_text(json.dumps(camera, indent=2))


def encode_gta_disparity(inverse_depth: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_gta_disparity`: value ``x`` -> uint16 ``round((x - 1) * 256)``."""
    inverse_depth = np.asarray(inverse_depth, dtype=np.float64)
    return np.clip(np.rint((inverse_depth - 1.0) * 256.0), 0, 65535).astype(np.uint16)


encode_mono_disparity = encode_gta_disparity


def encode_synthia_depth(depth_m: np.ndarray) -> np.ndarray:
    """Metric depth in metres -> SYNTHIA's uint16 centimetres (clipped to 0..65535)."""
    depth_m = np.asarray(depth_m, dtype=np.float64)
    return np.clip(np.rint(depth_m * 100.0), 0, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# Readers


def _cv2_read(path: str | Path, flags: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    array = cv2.imread(str(path), flags)
    if array is None:
        raise DataError(f"{path}: cannot decode the file (unreadable or truncated)")
    return array


def read_image_bgr(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 in BGR order, the order the normalisation needs."""
    image = _cv2_read(path, cv2.IMREAD_COLOR)
    return image


def read_image_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    return np.ascontiguousarray(read_image_bgr(path)[..., ::-1])


def read_label_ids(path: str | Path) -> np.ndarray:
    """(H, W) uint8 IDs of an 8-bit label PNG, palette or greyscale (the index plane, not colours)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DataError(f"{path}: label PNG has mode {image.mode}, expected a single 8-bit "
                                "channel (palette or greyscale)")
            ids = np.asarray(image)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode the label file ({err})") from err
    return ids


def read_uint16_png(path: str | Path, channel: int | None = None) -> np.ndarray:
    """(H, W) uint16 of a 16-bit PNG. Multi-channel files give ``channel`` of OpenCV's BGR(A)
    order (default: R, index 2)."""
    array = _cv2_read(path, cv2.IMREAD_UNCHANGED)
    if array.dtype != np.uint16:
        raise DataError(f"{path}: expected a 16-bit PNG, got {array.dtype}")
    if array.ndim == 3:
        array = array[..., 2 if channel is None else channel]
    return array


def read_synthia_label(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHIA ``GT/LABELS`` -> (class IDs (H, W) uint16, instance IDs (H, W) uint16)."""
    array = _cv2_read(path, cv2.IMREAD_UNCHANGED)
    if array.dtype != np.uint16 or array.ndim != 3 or array.shape[2] < 3:
        raise DataError(f"{Path(path)}: expected a 16-bit PNG with at least 3 channels, got "
                        f"{array.dtype} with shape {array.shape}")
    return array[..., 2], array[..., 1]


def read_stereo_depth_mat(path: str | Path) -> np.ndarray:
    """(H, W) metric depth (metres, float) from a ``*_depth_stereoscopic.mat`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        contents = scipy.io.loadmat(str(path), variable_names=["depth_map"])
    except NotImplementedError:
        return _read_mat_v73(path)
    except Exception as err:  # scipy's parser raises many kinds (IndexError, MatReadError, ...) on bad files
        raise DataError(f"{path}: cannot read the MATLAB file ({type(err).__name__}: {err})") from err
    if "depth_map" not in contents:
        raise DataError(f"{path}: no variable 'depth_map' in the MATLAB file")
    depth = np.asarray(contents["depth_map"])
    if depth.ndim != 2:
        raise DataError(f"{path}: 'depth_map' has shape {depth.shape}, expected (H, W)")
    return depth


def _read_mat_v73(path: Path) -> np.ndarray:
    """MATLAB v7.3 files are HDF5; read them with h5py when it is installed."""
    try:
        import h5py
    except ImportError as err:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) file; install h5py to read it") from err
    try:
        with h5py.File(path, "r") as handle:
            if "depth_map" not in handle:
                raise DataError(f"{path}: no variable 'depth_map' in the MATLAB file")
            return np.asarray(handle["depth_map"]).T  # HDF5 stores MATLAB arrays transposed
    except OSError as err:
        raise DataError(f"{path}: cannot read the MATLAB file ({err})") from err


def read_camera_json(path: str | Path) -> dict[str, float]:
    """Cityscapes camera file -> {"baseline", "fx", "fy", "u0", "v0"}."""
    path = Path(path)
    try:
        camera = json.loads(path.read_text())
        return {
            "baseline": float(camera["extrinsic"]["baseline"]),
            **{key: float(camera["intrinsic"][key]) for key in ("fx", "fy", "u0", "v0")},
        }
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a Cityscapes camera file (missing or bad {err})") from err


# ---------------------------------------------------------------------------------------------
# Decoders: raw file values -> the loader's inverse-depth-like float32 values (invalid = 1.0)


def depth_value_from_metres(depth_m: np.ndarray) -> np.ndarray:
    """Metric depth -> the loader's value ``655.36 / (Z + 0.01)`` (float64); non-finite depth (the
    sky) -> :data:`INVALID_DEPTH`."""
    depth_m = np.asarray(depth_m, dtype=np.float64)
    finite = np.isfinite(depth_m)
    value = np.full_like(depth_m, INVALID_DEPTH)
    value[finite] = INVERSE_DEPTH_SCALE / (depth_m[finite] + INVERSE_DEPTH_OFFSET)
    return value


def _build_synthia_table() -> np.ndarray:
    depth_m = np.arange(65536, dtype=np.float64) / 100.0
    table = (INVERSE_DEPTH_SCALE / (depth_m + INVERSE_DEPTH_OFFSET)).astype(np.float32)
    table.setflags(write=False)
    return table


# 65536-entry lookup table: decoding a uint16 map is one indexing operation.
_SYNTHIA_TABLE = _build_synthia_table()


def _disparity(raw: np.ndarray) -> np.ndarray:
    """uint16 -> ``v / 256 + 1`` in float32 arithmetic, which is exact: v / 256 only shifts the
    exponent, and v / 256 + 1 < 257 needs 17 significant bits of float32's 24. So the values
    equal the float64 formula rounded to float32, in one conversion and two in-place passes
    (several times faster than a 65536-entry table lookup on a full frame)."""
    disparity = np.asarray(raw, dtype=np.uint16).astype(np.float32)
    disparity *= np.float32(1 / 256)
    disparity += np.float32(1)
    return disparity


def decode_gta_disparity(raw: np.ndarray) -> np.ndarray:
    """GTA5 ``disparity/`` uint16 -> ``v / 256 + 1`` (float32; 0 gives the invalid 1.0)."""
    return _disparity(raw)


def decode_mono_disparity(raw: np.ndarray) -> np.ndarray:
    """Cityscapes mono ``disparity/`` uint16 -> ``v / 256 + 1`` (float32)."""
    return _disparity(raw)


def decode_synthia_depth(raw_cm: np.ndarray) -> np.ndarray:
    """SYNTHIA depth (uint16 cm) -> ``655.36 / (v / 100 + 0.01)`` (float32; 65535 gives 1.0)."""
    return _SYNTHIA_TABLE[np.asarray(raw_cm, dtype=np.uint16)]


def decode_stereo_depth(depth_m: np.ndarray) -> np.ndarray:
    """Cityscapes stereo depth (metres) -> ``655.36 / (clip(d, 0, 655.35) + 0.01)`` with
    ``d < 0.1`` (and non-finite values) first set to 655.35, i.e. exactly the invalid 1.0."""
    depth = np.asarray(depth_m, dtype=np.float64)
    invalid = ~(depth >= STEREO_MIN_DEPTH_M)  # also catches NaN
    depth = np.clip(np.nan_to_num(depth, nan=STEREO_MAX_DEPTH_M, posinf=STEREO_MAX_DEPTH_M),
                    0.0, STEREO_MAX_DEPTH_M)
    inverse = (INVERSE_DEPTH_SCALE / (depth + INVERSE_DEPTH_OFFSET)).astype(np.float32)
    inverse[invalid] = INVALID_DEPTH
    return inverse


# ---------------------------------------------------------------------------------------------
# Tree layouts


@dataclass(frozen=True)
class SamplePaths:
    """The files of one frame; ``None`` where the layout has no such file."""

    image: Path
    label: Path | None
    depth: Path | None


GTA5_IMAGE_DIR = "images"
GTA5_LABEL_DIR = "labels"
GTA5_DEPTH_DIR = "disparity"


def gta5_paths(root: str | Path, stem: str) -> SamplePaths:
    """``images/NNNNN.png``, ``labels/NNNNN.png``, ``disparity/NNNNN.png``."""
    root = Path(root)
    name = f"{stem}.png"
    return SamplePaths(root / GTA5_IMAGE_DIR / name, root / GTA5_LABEL_DIR / name, root / GTA5_DEPTH_DIR / name)


SYNTHIA_IMAGE_DIR = "RGB"
SYNTHIA_MAPPED_LABEL_DIR = "synthia_mapped_to_cityscapes"
SYNTHIA_RAW_LABEL_DIR = "GT/LABELS"
SYNTHIA_DEPTH_DIR = "Depth/Depth"


def synthia_paths(root: str | Path, stem: str, labels: str = "mapped") -> SamplePaths:
    """``RGB/N.png``; labels ``synthia_mapped_to_cityscapes/N.png`` ("mapped") or
    ``GT/LABELS/N.png`` ("raw"); depth ``Depth/Depth/N.png``."""
    if labels not in ("mapped", "raw"):
        raise ValueError(f"synthia labels must be 'mapped' or 'raw', got {labels!r}")
    root = Path(root)
    name = f"{stem}.png"
    label_dir = SYNTHIA_MAPPED_LABEL_DIR if labels == "mapped" else SYNTHIA_RAW_LABEL_DIR
    return SamplePaths(root / SYNTHIA_IMAGE_DIR / name, root / label_dir / name, root / SYNTHIA_DEPTH_DIR / name)


CITYSCAPES_LAYOUTS = ("official", "trainvaltest")


def _cityscapes_package_dir(root: str | Path, name: str, layout: str) -> Path:
    """``root/name`` (official) or ``root/name_trainvaltest/name`` (the reference tree's zip names)."""
    if layout == "official":
        return Path(root) / name
    if layout == "trainvaltest":
        return Path(root) / f"{name}_trainvaltest" / name
    raise ValueError(f"cityscapes layout must be one of {CITYSCAPES_LAYOUTS}, got {layout!r}")


def cityscapes_image_dir(root: str | Path, layout: str = "official") -> Path:
    """``leftImg8bit`` (official) or ``leftImg8bit_trainvaltest/leftImg8bit`` (reference tree)."""
    return _cityscapes_package_dir(root, "leftImg8bit", layout)


def cityscapes_label_dir(root: str | Path, layout: str = "official") -> Path:
    """``gtFine`` (official) or ``gtFine_trainvaltest/gtFine`` (reference tree)."""
    return _cityscapes_package_dir(root, "gtFine", layout)


def detect_cityscapes_layout(root: str | Path) -> str:
    """The layout whose image folder exists under ``root`` ("official" when neither does)."""
    for layout in CITYSCAPES_LAYOUTS:
        if cityscapes_image_dir(root, layout).is_dir():
            return layout
    return "official"


def cityscapes_paths(
    root: str | Path, split: str, city: str, frame_id: str, layout: str = "official", depth: str = "stereo"
) -> SamplePaths:
    """Paths of frame ``{city}_{seq}_{frame}`` (``frame_id``) of ``split``.

    depth "stereo": ``depth/{split}/{city}/{id}_depth_stereoscopic.mat``; "mono":
    ``disparity/{split}/{city}/{id}_leftImg8bit.png``; "none": no depth file.
    """
    root = Path(root)
    image = cityscapes_image_dir(root, layout) / split / city / f"{frame_id}_leftImg8bit.png"
    label = cityscapes_label_dir(root, layout) / split / city / f"{frame_id}_gtFine_labelIds.png"
    if depth == "stereo":
        depth_path: Path | None = root / "depth" / split / city / f"{frame_id}_depth_stereoscopic.mat"
    elif depth == "mono":
        depth_path = root / "disparity" / split / city / f"{frame_id}_leftImg8bit.png"
    elif depth == "none":
        depth_path = None
    else:
        raise ValueError(f"cityscapes depth must be 'stereo', 'mono' or 'none', got {depth!r}")
    return SamplePaths(image, label, depth_path)


def cityscapes_right_image_path(root: str | Path, split: str, city: str, frame_id: str) -> Path:
    """``rightImg8bit/{split}/{city}/{id}_rightImg8bit.png``."""
    return Path(root) / "rightImg8bit" / split / city / f"{frame_id}_rightImg8bit.png"


def cityscapes_camera_path(root: str | Path, split: str, city: str, frame_id: str) -> Path:
    """``camera/{split}/{city}/{id}_camera.json``."""
    return Path(root) / "camera" / split / city / f"{frame_id}_camera.json"


def cityscapes_sgm_disparity_path(root: str | Path, split: str, city: str, frame_id: str) -> Path:
    """The dataset's own SGM disparity ``disparity/{split}/{city}/{id}_disparity.png`` (not the mono
    depth CorDA uses; only named in error messages to tell the two apart)."""
    return Path(root) / "disparity" / split / city / f"{frame_id}_disparity.png"
