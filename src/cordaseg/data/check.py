"""Validation of dataset trees against the formats of docs/data-formats.md (``cordaseg data check``).

:func:`check_tree` decodes every frame of a tree and reports each problem with its file: missing
label or depth partner, unreadable or truncated file, image / label / depth sizes that do not
pair, wrong bit depth or channel count, label values outside the dataset's known IDs, depth that
is all invalid. :func:`quick_check` is the cheap version the trainer runs before it starts: every
partner file must exist, the sizes in the headers of every frame must pair, and the first and last
few frames must decode cleanly. :func:`check_labels` is what ``cordaseg evaluate`` runs first:
every label decoded and checked as ``data check`` does, and refused where it would score wrongly.
"""

from __future__ import annotations

import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from cordaseg.data import formats
from cordaseg.data.datasets import DatasetConfig, SampleRecord, find_samples, label_table, read_depth
from cordaseg.data.labels import CITYSCAPES_KNOWN_LABEL_IDS, IGNORE_INDEX, SYNTHIA_KNOWN_IDS
from cordaseg.errors import DataError

# Problem kinds, in the order the summary lists them.
KINDS = ("tree", "missing", "unreadable", "format", "size", "label_values", "depth_invalid", "error")


@dataclass(frozen=True)
class Problem:
    """One defect of one file."""

    path: Path
    kind: str  # one of KINDS
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class CheckReport:
    """Counts and problems of a checked tree."""

    counts: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        parts = [f"{self.counts['frames']} frames", f"{self.counts['labels']} labels",
                 f"{self.counts['depth']} depth maps"]
        text = ", ".join(parts)
        if self.ok:
            return f"{text}: no problems found"
        by_kind = Counter(p.kind for p in self.problems)
        kinds = ", ".join(f"{by_kind[k]} {k.replace('_', ' ')}" for k in KINDS if by_kind[k])
        return f"{text}: {len(self.problems)} problems ({kinds})"

    def print(self, where: str) -> bool:
        """Print every problem, one line each, then the summary line for ``where``; True when clean."""
        for problem in self.problems:
            print(problem)
        print(f"{where}: {self.summary()}")
        return self.ok


def _known_ids(cfg: DatasetConfig) -> np.ndarray:
    return np.asarray(SYNTHIA_KNOWN_IDS if cfg.format == "synthia" else CITYSCAPES_KNOWN_LABEL_IDS)


def _unknown_values(ids: np.ndarray, known: np.ndarray) -> list[int]:
    present = np.flatnonzero(np.bincount(ids.ravel()))  # values in the image, one pass
    return [int(v) for v in np.setdiff1d(present, known)]


def _check_image(path: Path) -> tuple[list[Problem], tuple[int, int] | None]:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        return [Problem(path, "unreadable", "cannot decode the image (unreadable or truncated)")], None
    size = array.shape[:2]
    if array.dtype != np.uint8:
        return [Problem(path, "format", f"image is {array.dtype}, expected 8-bit")], size
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels != 3:
        return [Problem(path, "format", f"image has {channels} channels, expected 3 (RGB)")], size
    return [], size


def _check_label(cfg: DatasetConfig, path: Path) -> tuple[list[Problem], tuple[int, int] | None]:
    problems, size, _ = _check_label_ids(cfg, path)
    return problems, size


def _check_label_ids(cfg: DatasetConfig, path: Path
                     ) -> tuple[list[Problem], tuple[int, int] | None, np.ndarray | None]:
    """(problems, size, stored label IDs) of one label file; the IDs are None where unreadable."""
    problems, size, ids = _decode_label(cfg, path)
    if ids is not None and not problems:
        unknown = _unknown_values(ids, _known_ids(cfg))
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
            known = _known_ids(cfg)
            problems = [Problem(path, "label_values", f"label values outside the {cfg.format} IDs "
                                                      f"{known.min()}..{known.max()}: {shown}")]
    return problems, size, ids


def _decode_label(cfg: DatasetConfig, path: Path
                  ) -> tuple[list[Problem], tuple[int, int] | None, np.ndarray | None]:
    if cfg.format == "synthia" and cfg.synthia_labels == "raw":
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            return [Problem(path, "unreadable", "cannot decode the label (unreadable or truncated)")], None, None
        channels = 1 if array.ndim == 2 else array.shape[2]
        if array.dtype != np.uint16 or channels < 3:
            return [Problem(path, "format", f"SYNTHIA GT/LABELS must be 16-bit with >= 3 channels, got "
                                            f"{array.dtype} with {channels} channel(s)")], array.shape[:2], None
        ids = array[..., 2]  # class ID in R (index 2 of BGR)
        return [], ids.shape, ids
    try:
        with Image.open(path) as image:
            mode = image.mode
            ids = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as err:
        return [Problem(path, "unreadable", f"cannot decode the label ({err})")], None, None
    if mode not in ("P", "L"):
        return [Problem(path, "format", f"label PNG has mode {mode}, expected one 8-bit channel "
                                        "(palette or greyscale)")], ids.shape[:2], None
    return [], ids.shape, ids


def _check_depth(cfg: DatasetConfig, path: Path) -> tuple[list[Problem], tuple[int, int] | None]:
    kind = cfg.depth_kind
    if kind != "stereo":
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            return [Problem(path, "unreadable", "cannot decode the depth file (unreadable or truncated)")], None
        channels = 1 if array.ndim == 2 else array.shape[2]
        if array.dtype != np.uint16:
            return [Problem(path, "format", f"depth PNG is {array.dtype}, expected 16-bit")], array.shape[:2]
        if kind != "synthia" and channels != 1:
            return [Problem(path, "format", f"depth PNG has {channels} channels, expected 1")], array.shape[:2]
    try:
        depth = read_depth(kind, path)
    except DataError as err:
        return [Problem(path, "unreadable", str(err).removeprefix(f"{path}: "))], None
    if np.all(depth == formats.INVALID_DEPTH):
        return [Problem(path, "depth_invalid", "depth is invalid everywhere")], depth.shape
    return [], depth.shape


def _missing(path: Path, what: str, cfg: DatasetConfig, record: SampleRecord) -> Problem:
    message = f"missing {what} file"
    if cfg.depth_kind == "mono" and what == "depth" and "city" in record.extra:
        sgm = formats.cityscapes_sgm_disparity_path(cfg.root, record.extra["split"], record.extra["city"],
                                                    record.name)
        if sgm.is_file():
            message += (f" (found the dataset's SGM disparity {sgm.name}, which is not the mono depth; "
                        "see docs/data-formats.md, 'Cityscapes')")
    return Problem(path, "missing", f"{message} for image {record.image.name}")


def check_record(cfg: DatasetConfig, record: SampleRecord, decode: bool = True) -> list[Problem]:
    """Problems of one frame; with ``decode`` False only the existence of its files is checked."""
    problems = []
    present = {}
    for what, path in (("image", record.image), ("label", record.label), ("depth", record.depth)):
        if path is None:
            continue
        if not path.is_file():
            problems.append(_missing(path, what, cfg, record))
        else:
            present[what] = path
    if not decode:
        return problems
    sizes = {}
    checkers = {"image": _check_image, "label": lambda p: _check_label(cfg, p),
                "depth": lambda p: _check_depth(cfg, p)}
    for what, path in present.items():
        try:
            found, size = checkers[what](path)
        except Exception as err:  # a checker must report, never crash the scan
            found, size = [Problem(path, "error", f"unexpected error while reading: {err!r}")], None
        problems.extend(found)
        if size is not None:
            sizes[what] = tuple(size)
    if "image" in sizes and len(set(sizes.values())) > 1:
        listed = ", ".join(f"{what} {w}x{h}" for what, (h, w) in sizes.items())
        problems.append(Problem(record.image, "size", f"sizes do not pair: {listed}"))
    return problems


def _partner_files(cfg: DatasetConfig, records: list[SampleRecord], what: str) -> list[Path]:
    """All label or depth files of the kind ``records`` use, found by glob next to the expected ones."""
    expected = [getattr(r, what) for r in records if getattr(r, what) is not None]
    if not expected:
        return []
    if cfg.format == "cityscapes":  # {kind root}/{split}/{city}/{frame_id}{suffix}
        suffix = expected[0].name.removeprefix(records[0].name)
        split_dir = expected[0].parent.parent
        return sorted(split_dir.glob(f"*/*{suffix}")) if split_dir.is_dir() else []
    folder = expected[0].parent
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def find_orphans(cfg: DatasetConfig, records: list[SampleRecord]) -> list[Problem]:
    """Label and depth files whose image is missing (a partner missing the other way round)."""
    problems = []
    for what in ("label", "depth"):
        expected = {getattr(r, what) for r in records}
        for path in _partner_files(cfg, records, what):
            if path not in expected:
                problems.append(Problem(path, "missing", f"{what} file without an image"))
    return problems


def check_tree(cfg: DatasetConfig, workers: int = 4, progress: bool = True) -> CheckReport:
    """Decode every frame of ``cfg``'s tree and collect all problems (never raises DataError)."""
    report = CheckReport()
    try:
        records = find_samples(cfg)
    except DataError as err:
        report.problems.append(Problem(Path(cfg.root), "tree", str(err).removeprefix(f"{cfg.root}: ")))
        return report
    if not records:
        report.problems.append(Problem(Path(cfg.root), "tree", f"no {cfg.format} frames found"))
        return report
    report.counts["frames"] = len(records)
    # Decoders release the GIL, so threads scale over cores.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = zip(records, pool.map(lambda r: check_record(cfg, r), records))
        bar = tqdm(results, total=len(records), desc=f"checking {cfg.format} {cfg.split}", unit="frame",
                   file=sys.stderr, disable=not progress)
        for record, problems in bar:
            missing = {p.path for p in problems if p.kind == "missing"}
            report.counts["labels"] += record.label is not None and record.label not in missing
            report.counts["depth"] += record.depth is not None and record.depth not in missing
            report.problems.extend(problems)
    if not cfg.list_file:
        report.problems.extend(find_orphans(cfg, records))
    return report


def header_size(path: Path) -> tuple[int, int] | None:
    """(H, W) read from an image file's header without decoding its pixels; None where the header
    cannot tell (a ``.mat`` file, a PNG layout PIL does not open)."""
    if path.suffix.lower() != ".png":
        return None
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError):
        return None  # decoding reports it where the frame is decoded
    return height, width


def check_header_sizes(record: SampleRecord) -> list[Problem]:
    """A size problem when the headers of a frame's files disagree (nothing is decoded)."""
    sizes = {}
    for what, path in (("image", record.image), ("label", record.label), ("depth", record.depth)):
        if path is not None and path.is_file():
            size = header_size(path)
            if size is not None:
                sizes[what] = size
    if "image" in sizes and len(set(sizes.values())) > 1:
        listed = ", ".join(f"{what} {w}x{h}" for what, (h, w) in sizes.items())
        return [Problem(record.image, "size", f"sizes do not pair: {listed}")]
    return []


def _refuse(cfg: DatasetConfig, problems: list[Problem]) -> None:
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    raise DataError(f"{problems[0]}{more}; run 'cordaseg data check --format {cfg.format} "
                    f"--root {cfg.root}' for the full list")


def quick_check(cfg: DatasetConfig, decode: int = 2) -> int:
    """Cheap pre-training check: frames exist, every partner file exists, the sizes in the headers
    of every frame pair, and the first and last ``decode`` frames decode without problems.
    Returns the number of frames; raises :class:`DataError` naming the first bad file. Size
    mismatches are tolerated for GTA5 and SYNTHIA, whose fixed training resize makes them
    harmless (the real GTA5 release has frames whose label size differs from the image's)."""
    records = find_samples(cfg)
    if not records:
        raise DataError(f"{cfg.root}: no {cfg.format} frames found (split {cfg.split!r})")
    problems = [p for r in records for p in check_record(cfg, r, decode=False)]
    if not problems:
        problems = [p for r in records for p in check_header_sizes(r)]
    sampled = records[:decode] + records[max(decode, len(records) - decode):]
    problems += [p for r in sampled for p in check_record(cfg, r)]
    if cfg.format in ("gta5", "synthia"):
        problems = [p for p in problems if p.kind != "size"]
    if problems:
        _refuse(cfg, problems)
    return len(records)


def _label_problems(cfg: DatasetConfig, record: SampleRecord) -> list[Problem]:
    if record.label is None:
        return []
    if not record.label.is_file():
        return [_missing(record.label, "label", cfg, record)]
    problems, size, ids = _check_label_ids(cfg, record.label)
    image_size = header_size(record.image) if record.image.is_file() else None
    if size is not None and image_size is not None and tuple(size) != image_size:
        problems.append(Problem(record.label, "size", f"label is {size[1]}x{size[0]}, its image "
                                                      f"{image_size[1]}x{image_size[0]}"))
    if ids is not None and not problems and np.all(label_table(cfg)[ids] == IGNORE_INDEX):
        problems.append(Problem(record.label, "label_values",
                                f"every pixel maps to ignore ({IGNORE_INDEX}): is it a file of train IDs "
                                "saved under the label-ID name?"))
    return problems


def check_labels(cfg: DatasetConfig, records: list[SampleRecord], workers: int = 4) -> int:
    """Decode every label of ``records`` as ``data check`` does; raise :class:`DataError` naming
    the first label that is unreadable, has values outside the dataset's IDs, a size other than
    its image's (Cityscapes), or maps entirely to ignore (train IDs saved under the label-ID name).
    Returns the number of labels checked."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # decoders release the GIL
        problems = [p for found in pool.map(lambda r: _label_problems(cfg, r), records) for p in found]
    if cfg.format in ("gta5", "synthia"):  # as in quick_check: the scored label keeps its own size
        problems = [p for p in problems if p.kind != "size"]
    if problems:
        _refuse(cfg, problems)
    return sum(r.label is not None for r in records)


def check_config_for_split(cfg: DatasetConfig, split: str) -> DatasetConfig:
    """``cfg`` for another Cityscapes split; val has no depth in the reference tree, so none is read."""
    return replace(cfg, split=split, depth=cfg.depth if split == "train" else "none")
