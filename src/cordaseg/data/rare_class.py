"""Rare-class sampling of the labelled source set (Hoyer et al., "DAFormer", CVPR 2022, section 3.3
of the paper; ``get_rcs_class_probs`` and ``UDADataset`` in its ``mmseg/datasets/uda_dataset.py``,
the statistics of its ``tools/convert_datasets/gta.py``).

Self-training drifts towards the classes it sees most; DAFormer samples source frames so that
rare classes come up more often::

    n_c  = pixels of class c in the set's full-resolution labels (train IDs, ignore excluded)
    f_c  = n_c / sum_c' n_c'                      over the classes present in the set
    P(c) = exp((1 - f_c) / T) / sum_c' exp((1 - f_c') / T)          T = temperature (0.01)
    draw c ~ P, then a frame uniformly among those with n_c(frame) > min_pixels (3000)

then, as DAFormer, the frame is cropped again (at most 10 more times) while its crop holds no more
than ``min_pixels * min_crop_ratio`` pixels of c; the last crop is kept whatever it holds.

Statistics: every label file is read once (a progress bar), its per-class pixel counts cached in
a JSON file (``cordaseg_class_stats.json`` in the dataset root, as DAFormer keeps its
``sample_class_stats.json`` there, or in the run folder when the root is read-only). An entry is
reused while its label file keeps its size and modification time.

Randomness and resume: :class:`RareClassSampler` is an :class:`~cordaseg.data.loader.EpochSampler`
whose epoch of ``per_rank * world_size`` draws comes from a generator seeded with (seed, epoch)
only, drawn in one go (all classes, then one uniform per draw for the frame) and sharded across
ranks like the shuffled order; the position in the epoch is the resume point, as before. It
yields ``(epoch, frame, draw, class)``; :class:`RareClassDataset` crops frame ``i`` of draw ``g``,
attempt ``a``, with the seed (seed, epoch, i, g, a), so a frame drawn twice in an epoch gets two
crops, and every worker and every resumed run crops it the same way.

Differences from DAFormer: the probabilities are computed in float64 (DAFormer: float32); a class
without any frame above ``min_pixels`` is left out with a warning and the others renormalised
(DAFormer stops on an assertion); the classes are ordered by train ID.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cordaseg.data.datasets import DatasetConfig, SampleRecord, SegmentationDataset, read_label_train_ids
from cordaseg.data.labels import IGNORE_INDEX
from cordaseg.data.loader import EpochSampler
from cordaseg.errors import DataError

STATS_FILE = "cordaseg_class_stats.json"
"""Name of the statistics cache in the dataset root."""
RUN_STATS_FILE = "source_class_stats.json"
"""Name of the statistics cache in the run folder (when the dataset root is read-only)."""
MAX_RECROPS = 10
"""DAFormer crops a sampled frame again at most this many times."""
_FORMAT = "cordaseg class stats"
_SAMPLER_STREAM = 0x7C5A11  # keeps these draws apart from the shuffled order's stream


# ---------------------------------------------------------------------------------------------
# Per-frame statistics


def label_class_counts(cfg: DatasetConfig, label_path: Path) -> dict[int, int]:
    """{train ID: pixels} of one full-resolution label file (ignored pixels left out)."""
    counts = np.bincount(read_label_train_ids(cfg, label_path).ravel(), minlength=256)
    return {c: int(n) for c, n in enumerate(counts) if n > 0 and c != IGNORE_INDEX}


def stats_path(cfg: DatasetConfig, run_dir: str | Path) -> Path:
    """Where the statistics of ``cfg`` are cached (see ``rare_class_sampling.stats_file``)."""
    if cfg.rare_class_sampling.stats_file:
        return Path(cfg.rare_class_sampling.stats_file)
    root = Path(cfg.root)
    if os.access(root, os.W_OK):
        return root / STATS_FILE
    return Path(run_dir) / RUN_STATS_FILE


def _key(cfg: DatasetConfig, label: Path) -> str:
    try:
        return label.resolve().relative_to(Path(cfg.root).resolve()).as_posix()
    except ValueError:
        return str(label.resolve())


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        warnings.warn(f"{path}: unreadable class statistics, computing them again ({err})", stacklevel=3)
        return {}
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("frames"), dict):
        warnings.warn(f"{path}: not a cordaseg class-statistics file, computing the statistics again",
                      stacklevel=3)
        return {}
    return data["frames"]


def _write_cache(path: Path, frames: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": _FORMAT, "version": 1, "frames": frames}), encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a file


def class_counts(cfg: DatasetConfig, records: Sequence[SampleRecord], cache: str | Path, *, workers: int = 4,
                 progress: bool = True, write: bool = True) -> list[dict[int, int]]:
    """{train ID: pixels} of every record's label, read from ``cache`` where it is current,
    computed (with a progress bar) and written back otherwise."""
    cache = Path(cache)
    frames = _read_cache(cache)
    results: list[dict[int, int] | None] = [None] * len(records)
    missing: list[tuple[int, str, os.stat_result]] = []
    for i, record in enumerate(records):
        if record.label is None:
            raise DataError(f"{cfg.root}: rare-class sampling needs label files (use_labels is false)")
        try:
            stat = record.label.stat()
        except OSError as err:
            raise DataError(f"{record.label}: label file not readable ({err.strerror})") from None
        key = _key(cfg, record.label)
        entry = frames.get(key)
        if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            results[i] = {int(c): int(n) for c, n in entry["counts"].items()}
        else:
            missing.append((i, key, stat))
    if missing:
        def count(item: tuple[int, str, os.stat_result]) -> dict[int, int]:
            return label_class_counts(cfg, records[item[0]].label)

        # Decoding releases the GIL, so threads read several labels at once.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            computed = tqdm(pool.map(count, missing), total=len(missing), desc="class statistics", unit="label",
                            disable=not progress, dynamic_ncols=True)
            for (i, key, stat), counts in zip(missing, computed, strict=True):
                results[i] = counts
                frames[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                               "counts": {str(c): n for c, n in counts.items()}}
        if write:
            _write_cache(cache, frames)
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Class probabilities and candidate frames


def class_probabilities(totals: dict[int, int], temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(classes, P): the classes with pixels, by train ID, and P(c) = softmax((1 - f_c) / T)."""
    classes = np.array(sorted(c for c, n in totals.items() if n > 0), dtype=np.int64)
    if classes.size == 0:
        raise DataError("rare-class sampling: the labels hold no labelled pixel")
    pixels = np.array([totals[int(c)] for c in classes], dtype=np.float64)
    logits = (1.0 - pixels / pixels.sum()) / temperature
    weights = np.exp(logits - logits.max())  # the same softmax, without overflow
    return classes, weights / weights.sum()


@dataclass
class ClassTable:
    """What rare-class sampling draws from."""

    classes: np.ndarray
    """(K,) train IDs that can be drawn, ascending."""
    probabilities: np.ndarray
    """(K,) float64 P(c), summing to 1."""
    frames: list[np.ndarray]
    """Per class, the dataset indices of its candidate frames (more than min_pixels pixels)."""


def class_table(counts: Sequence[dict[int, int]], temperature: float, min_pixels: int) -> ClassTable:
    """The class probabilities of the set and each class's candidate frames (module docstring)."""
    totals: dict[int, int] = {}
    for frame in counts:
        for c, n in frame.items():
            totals[c] = totals.get(c, 0) + n
    classes, probabilities = class_probabilities(totals, temperature)
    frames = [np.array([i for i, frame in enumerate(counts) if frame.get(int(c), 0) > min_pixels], dtype=np.int64)
              for c in classes]
    has_frames = np.array([len(f) > 0 for f in frames])
    if not has_frames.any():
        raise DataError(f"rare-class sampling: no frame has more than min_pixels={min_pixels} pixels of any class")
    if not has_frames.all():
        left_out = [int(c) for c, ok in zip(classes, has_frames, strict=True) if not ok]
        warnings.warn(f"rare-class sampling: classes {left_out} have no frame with more than min_pixels="
                      f"{min_pixels} pixels and are never drawn", stacklevel=2)
        probabilities = probabilities[has_frames] / probabilities[has_frames].sum()
        classes = classes[has_frames]
        frames = [f for f, ok in zip(frames, has_frames, strict=True) if ok]
    return ClassTable(classes, probabilities, frames)


# ---------------------------------------------------------------------------------------------
# Sampler and dataset


class RareClassSampler(EpochSampler):
    """An epoch of ``per_rank()`` class-driven draws for this rank, yielding ``(epoch, frame, draw, class)``.

    Same arguments and resume behaviour as :class:`EpochSampler` (``shuffle`` has no effect);
    ``table`` says what to draw from.
    """

    def __init__(self, size: int, *, table: ClassTable, **kwargs) -> None:
        super().__init__(size, **kwargs)
        self.table = table
        self._flat = np.concatenate(table.frames)
        self._sizes = np.array([len(f) for f in table.frames], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)[:-1]])

    def draws(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame, class, draw position in the epoch) of this rank's draws, before ``start_index``."""
        total = self.per_rank() * self.world_size
        rng = np.random.default_rng([self.seed, self.epoch, _SAMPLER_STREAM])
        k = rng.choice(len(self.table.classes), size=total, p=self.table.probabilities)  # (total,) class slots
        u = rng.random(total)
        offset = np.minimum((u * self._sizes[k]).astype(np.int64), self._sizes[k] - 1)  # uniform frame of class
        frames = self._flat[self._starts[k] + offset]
        shard = slice(self.rank, None, self.world_size)
        return frames[shard], self.table.classes[k][shard], np.arange(total)[shard]

    def order(self) -> np.ndarray:
        return self.draws()[0]

    def __iter__(self):
        frames, classes, positions = self.draws()
        for i in range(self.start_index, len(frames)):
            yield (self.epoch, int(frames[i]), int(positions[i]), int(classes[i]))


class RareClassDataset(torch.utils.data.Dataset):
    """Crops a drawn frame until the crop shows its class (DAFormer's ``min_crop_ratio``).

    Keys ``(epoch, frame, draw, class)`` come from :class:`RareClassSampler`; any other key is
    passed to the wrapped dataset unchanged.
    """

    def __init__(self, dataset: SegmentationDataset, min_pixels: int, min_crop_ratio: float) -> None:
        self.dataset = dataset
        self.min_pixels = min_pixels
        self.min_crop_ratio = min_crop_ratio

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 4):
            return self.dataset[key]
        epoch, frame, draw, cls = key
        threshold = self.min_pixels * self.min_crop_ratio
        for attempt in range(MAX_RECROPS):
            item = self.dataset[(epoch, frame, draw, attempt)]
            if self.min_crop_ratio <= 0 or int((item["label"] == cls).sum()) > threshold:
                return item
        return self.dataset[(epoch, frame, draw, MAX_RECROPS)]  # the last crop, whatever it shows


def rare_class_source(dataset: SegmentationDataset, run_dir: str | Path, *, is_main: bool = True,
                      barrier: Callable[[], None] | None = None, workers: int = 4,
                      progress: bool = True) -> tuple[RareClassDataset, Callable[..., RareClassSampler]]:
    """The source dataset and sampler factory for :func:`cordaseg.data.loader.make_loader`.

    The main process computes (or reads) the statistics first and the others read them after
    ``barrier``, so a multi-process run reads every label once.
    """
    cfg = dataset.cfg
    rcs = cfg.rare_class_sampling
    path = stats_path(cfg, run_dir)
    counts = class_counts(cfg, dataset.records, path, workers=workers, progress=progress) if is_main else None
    if barrier is not None:
        barrier()
    if counts is None:
        counts = class_counts(cfg, dataset.records, path, workers=workers, progress=False, write=False)
    table = class_table(counts, rcs.temperature, rcs.min_pixels)
    if is_main and progress:
        shown = ", ".join(f"{int(c)}: {p:.3f}" for c, p in zip(table.classes, table.probabilities, strict=True))
        print(f"train: rare-class sampling (T={rcs.temperature:g}, statistics {path}); P(class) = {shown}",
              flush=True)
    return (RareClassDataset(dataset, rcs.min_pixels, rcs.min_crop_ratio),
            functools.partial(RareClassSampler, table=table))
