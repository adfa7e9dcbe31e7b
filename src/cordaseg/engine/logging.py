"""What a training run shows: ``metrics.jsonl``, TensorBoard scalars and image panels, and a
progress bar with iterations/s and ETA.

Only rank 0 writes; on other ranks a :class:`RunLogger` is built with ``enabled=False`` and every
method returns at once. Values reach this module as Python floats: the trainer calls ``.item()``
only at the logging interval, so logging never adds a host-device sync to other iterations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cordaseg.data.labels import IGNORE_INDEX, PALETTE
from cordaseg.data.normalization import to_display_rgb

METRICS_FILE = "metrics.jsonl"


class RunLogger:
    """Appends records to ``<run_dir>/metrics.jsonl`` and mirrors scalars/images to TensorBoard."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 resume_from: int | None = None) -> None:
        """``resume_from``: the iteration of the checkpoint a run resumes from; records and
        TensorBoard events written after it (by the interrupted run) are dropped."""
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer = None
        self._metrics = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is not None:
            truncate_metrics(self.run_dir, resume_from)
        # Append: a resumed run continues the same file (records carry their iteration).
        self._metrics = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_from is None else resume_from + 1
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)

    def log(self, iteration: int, kind: str, values: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` record ``{"iteration", "kind", "time", **values}``; numbers go
        to TensorBoard as ``<kind>/<name>`` (lists of numbers as ``<kind>/<name>/<index>``)."""
        if not self.enabled:
            return
        record = {"iteration": iteration, "kind": kind, "time": round(time.time(), 3), **values}
        self._metrics.write(json.dumps(record, allow_nan=True) + "\n")
        self._metrics.flush()
        if self._writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{kind}/{name}", value, iteration)
            elif isinstance(value, dict):
                for sub, number in value.items():
                    if isinstance(number, (int, float)) and not isinstance(number, bool):
                        self._writer.add_scalar(f"{kind}/{name}/{sub}", number, iteration)

    def log_images(self, iteration: int, panels: dict[str, np.ndarray]) -> None:
        """Each (H, W, 3) uint8 panel as a TensorBoard image ``images/<name>``."""
        if not self.enabled or self._writer is None:
            return
        for name, image in panels.items():
            self._writer.add_image(f"images/{name}", image, iteration, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _parsed_lines(path: Path) -> list[tuple[str, dict[str, Any] | None]]:
    """(line, record) of every line; the record is None for a last line cut off by a killed run."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    parsed = []
    for number, line in enumerate(lines):
        try:
            parsed.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ValueError(f"{path}: line {number + 1} is not a JSON record") from None
            parsed.append((line, None))
    return parsed


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl`` (optionally only those of one kind)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = [record for _, record in _parsed_lines(path) if record is not None]
    return [r for r in records if kind is None or r.get("kind") == kind]


def truncate_metrics(run_dir: str | Path, after_iteration: int) -> int:
    """Drop records past ``after_iteration`` (written by a run that was killed after its last
    checkpoint, which the resumed run is about to write again), and a last line the kill cut
    off; returns how many lines were dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    parsed = _parsed_lines(path)
    lines = [line for line, _ in parsed]
    kept = [line for line, record in parsed if record is not None and record.get("iteration", 0) <= after_iteration]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)
    return len(lines) - len(kept)


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm:
    """A tqdm bar over iterations; tqdm shows iterations/s and the ETA from the rate."""
    return tqdm(total=total, initial=initial, disable=not enabled, unit="it", dynamic_ncols=True,
                desc="train", smoothing=0.05)


# ----------------------------------------------------------------------------------------------
# Image panels: the first sample of each visual, as a picture a person can read.


def _label_rgb(label: torch.Tensor) -> np.ndarray:
    """(H, W) train IDs -> (H, W, 3) colours; ignore and unknown IDs are black."""
    ids = label.detach().cpu().to(torch.int64).numpy()
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    known = (ids >= 0) & (ids < len(PALETTE)) & (ids != IGNORE_INDEX)
    rgb[known] = PALETTE[ids[known]]
    return rgb


def _scalar_map_rgb(values: torch.Tensor) -> np.ndarray:
    """(H, W) real values -> grey (H, W, 3), min..max stretched to black..white."""
    array = values.detach().float().cpu().numpy()
    finite = np.isfinite(array)
    if not finite.any():
        return np.zeros((*array.shape, 3), dtype=np.uint8)
    low, high = float(array[finite].min()), float(array[finite].max())
    scale = (array - low) / (high - low) if high > low else np.zeros_like(array)
    grey = np.nan_to_num(scale, nan=0.0).clip(0.0, 1.0) * 255.0
    return np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=-1)


def visual_to_rgb(name: str, tensor: torch.Tensor) -> np.ndarray | None:
    """The first sample of a batched visual as (H, W, 3) uint8, chosen by what the tensor holds:
    (B, 3, H, W) normalised images, (B, H, W) integer labels, (B, C, H, W) logits (argmax),
    (B, [1,] H, W) real maps (weights, depth). Returns None for anything else."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 3:
        return None
    sample = tensor[0]
    if not sample.is_floating_point():
        return _label_rgb(sample if sample.dim() == 2 else sample[0])
    if sample.dim() == 3 and sample.shape[0] == 3 and "image" in name:
        return to_display_rgb(sample)
    if sample.dim() == 3 and sample.shape[0] > 1:
        return _label_rgb(sample.argmax(0))
    return _scalar_map_rgb(sample if sample.dim() == 2 else sample[0])


def image_panels(visuals: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Convert every visual of a step that :func:`visual_to_rgb` understands."""
    panels = {}
    for name, tensor in visuals.items():
        rgb = visual_to_rgb(name, tensor)
        if rgb is not None:
            panels[name] = rgb
    return panels
