"""Evaluation on a labelled validation set (docs/method.md, "Evaluation"): the paper's protocol by default.

The paper's protocol: Cityscapes val, input resized to 1024x512, semantic logits upsampled
bilinearly (``align_corners=True``) to the full 2048x1024 labels, mIoU from one confusion
matrix over 19 classes, with the 16- and 13-class SYNTHIA protocols read from the same
matrix. ``output_size="input"`` is the reference's cheaper variant: the labels are resized
(nearest) to the input size instead. The confusion matrix and the depth sums stay on the
device and are summed over processes with one ``all_reduce`` each, so the loop has no host
sync (except for the few samples kept for pictures). Where the items carry ground-truth depth,
the mIoU is also reported per range of distance (:class:`~cordaseg.evaluation.metrics.DepthBinnedConfusion`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from cordaseg.config import ConfigError
from cordaseg.data.labels import CLASS_NAMES, NUM_CLASSES, PROTOCOLS
from cordaseg.data.normalization import to_display_rgb
from cordaseg.evaluation.inference import InferenceConfig, infer, model_callable
from cordaseg.evaluation.metrics import (
    DEFAULT_DEPTH_BINS,
    ConfusionMatrix,
    DepthBinnedConfusion,
    DepthBinScores,
    DepthMeter,
    depth_bin_scores,
    segmentation_scores,
)
from cordaseg.models.output import SEMANTIC, upsample
from cordaseg.runtime.distributed import all_reduce_sum, rank_and_world_size


@dataclass
class EvalSample:
    """One validation image kept for the report's panels (host numpy arrays)."""

    name: str
    """Sample name from the dataset item (or its index)."""
    image: np.ndarray
    """(h, w, 3) uint8 RGB of the network input."""
    label: np.ndarray
    """(H, W) uint8 train IDs at the scored size, 255 = ignore."""
    prediction: np.ndarray
    """(H, W) uint8 predicted train IDs at the scored size."""
    depth: np.ndarray | None = None
    """(H, W) float32 output of the target depth head, if the model has one."""


@dataclass
class EvalResult:
    """Scores of one evaluation run."""

    confusion: np.ndarray
    """(C, C) int64 confusion matrix, rows = ground truth, columns = prediction."""
    iou: np.ndarray
    """(C,) per-class IoU in percent (NaN where a class never occurs)."""
    miou: dict[int, float]
    """Protocol (19, 16, 13) -> mIoU in percent."""
    pixel_accuracy: float
    """Correctly predicted / scored pixels, in percent."""
    depth: dict[str, dict[str, float]]
    """Depth head name -> {"abs_rel", "rmse", "delta1", "pixels"}; empty without depth ground truth."""
    num_images: int
    """Images evaluated (over all processes)."""
    class_names: tuple[str, ...] = CLASS_NAMES
    """Name of each class."""
    samples: list[EvalSample] = field(default_factory=list)
    """The first images of this process, for pictures (not part of the saved scores)."""
    depth_bins: list[DepthBinScores] = field(default_factory=list)
    """mIoU per range of ground-truth distance; empty without depth ground truth."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe scores (NaN becomes None)."""

        def number(x: float) -> float | None:
            return None if math.isnan(x) else round(float(x), 4)

        return {
            "num_images": self.num_images,
            "miou": {str(k): number(v) for k, v in self.miou.items()},
            "pixel_accuracy": number(self.pixel_accuracy),
            "iou": {name: number(v) for name, v in zip(self.class_names, self.iou)},
            "depth": {
                head: {k: (v if k == "pixels" else number(v)) for k, v in values.items()}
                for head, values in self.depth.items()
            },
            "depth_bins": [
                {"range": b.name, "min_m": b.low, "max_m": b.high, "pixels": b.pixels,
                 "miou": {str(k): number(v) for k, v in b.miou.items()},
                 "iou": {name: number(v) for name, v in zip(self.class_names, b.iou)}}
                for b in self.depth_bins
            ],
            "confusion_matrix": self.confusion.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        """The scores :meth:`to_dict` saved (values rounded as saved; no samples)."""

        def number(x: float | None) -> float:
            return float("nan") if x is None else float(x)

        names = tuple(data["iou"])
        bins = [DepthBinScores(b["min_m"], b["max_m"], int(b["pixels"]),
                               np.array([number(b["iou"][n]) for n in names]),
                               {int(k): number(v) for k, v in b["miou"].items()})
                for b in data.get("depth_bins", [])]
        return cls(
            confusion=np.asarray(data["confusion_matrix"], dtype=np.int64),
            iou=np.array([number(data["iou"][n]) for n in names]),
            miou={int(k): number(v) for k, v in data["miou"].items()},
            pixel_accuracy=number(data["pixel_accuracy"]),
            depth={head: {k: (v if k == "pixels" else number(v)) for k, v in values.items()}
                   for head, values in data["depth"].items()},
            num_images=int(data["num_images"]),
            class_names=names,
            depth_bins=bins,
        )

    def format_table(self) -> str:
        """The per-class table, mIoU per protocol, pixel accuracy and depth metrics, as text."""
        protocols = {k: set(v) for k, v in PROTOCOLS.items()} if len(self.iou) == NUM_CLASSES else {}
        width = max(len(n) for n in self.class_names)
        columns = "".join(f"  in {k}" for k in protocols)
        lines = [f"{'class':<{width}}    IoU{columns}"]
        for index, (name, value) in enumerate(zip(self.class_names, self.iou)):
            marks = "".join(f"  {'x' if index in members else '-':>4}" for members in protocols.values())
            text = "   n/a" if math.isnan(value) else f"{value:6.2f}"
            lines.append(f"{name:<{width}} {text}{marks}")
        lines.append("")
        for k, v in self.miou.items():
            lines.append(f"mIoU ({k} classes): {v:.2f}")
        lines.append(f"pixel accuracy: {self.pixel_accuracy:.2f}")
        for head, values in self.depth.items():
            lines.append(
                f"depth head {head}: AbsRel {values['abs_rel']:.4f}  RMSE {values['rmse']:.4f}  "
                f"delta<1.25 {values['delta1']:.2f}%  ({values['pixels']} px)"
            )
        if self.depth_bins:
            first = max(self.miou)  # all classes (19)
            lines.append(f"mIoU ({first} classes) by ground-truth depth:")
            for b in self.depth_bins:
                value = b.miou[first]
                text = "   n/a" if math.isnan(value) else f"{value:6.2f}"
                lines.append(f"  {b.name:<10} {text}  ({b.pixels} px)")
        lines.append(f"images: {self.num_images}")
        return "\n".join(lines)


def write_json(result: EvalResult, path: str | Path) -> Path:
    """Write :meth:`EvalResult.to_dict` as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def write_csv(result: EvalResult, path: str | Path) -> Path:
    """Write the per-class table (class, IoU, protocol membership) plus mIoU rows as CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    protocols = PROTOCOLS if len(result.iou) == NUM_CLASSES else {}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "train_id", "iou", *[f"in_{k}" for k in protocols]])
        for index, (name, value) in enumerate(zip(result.class_names, result.iou)):
            membership = [int(index in members) for members in protocols.values()]
            writer.writerow([name, index, "" if math.isnan(value) else f"{value:.4f}", *membership])
        for k, v in result.miou.items():
            writer.writerow([f"mIoU{k}", "", f"{v:.4f}"])
        writer.writerow(["pixel_accuracy", "", f"{result.pixel_accuracy:.4f}"])
        for b in result.depth_bins:
            for k, v in b.miou.items():
                writer.writerow([f"mIoU{k} depth {b.name}", "", "" if math.isnan(v) else f"{v:.4f}"])
    return path


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the arrays evaluation needs; keep names as a list (other metadata is dropped)."""

    def stack(key: str) -> torch.Tensor:
        return torch.stack([torch.as_tensor(np.asarray(item[key])) for item in items])

    batch: dict[str, Any] = {"image": stack("image"), "label": stack("label")}
    if all("depth" in item and item["depth"] is not None for item in items):
        batch["depth"] = stack("depth")
    batch["name"] = [str(item.get("name", "")) for item in items]
    return batch


def evaluation_loader(dataset: Dataset | Sequence[dict[str, Any]], batch_size: int = 1, num_workers: int = 0, distributed: bool = False) -> DataLoader:
    """A sequential loader; under a process group each rank takes every world_size-th sample.

    Unlike ``DistributedSampler`` this never pads the dataset with repeated samples, so every
    image is scored exactly once over all ranks.
    """
    if distributed:
        rank, world_size = rank_and_world_size()
        dataset = Subset(dataset, list(range(rank, len(dataset), world_size)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=_collate, pin_memory=torch.cuda.is_available())


def _to_scored_size(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of (B, H, W) labels or depth, sampling pixel centres like PIL's NEAREST."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    resized = F.interpolate(target[:, None].float(), size=size, mode="nearest-exact")[:, 0]
    return resized.to(target.dtype)


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    dataset_or_loader: Dataset | DataLoader | Iterable[dict[str, Any]],
    *,
    device: torch.device | str,
    num_classes: int = NUM_CLASSES,
    output_size: Literal["full", "input"] = "full",
    precision: Literal["fp32", "bf16"] = "fp32",
    batch_size: int = 1,
    distributed: bool = False,
    progress: bool = True,
    inference: InferenceConfig | None = None,
    num_workers: int = 0,
    keep_samples: int = 0,
    class_names: tuple[str, ...] | None = None,
    depth_bins: Sequence[float] | None = DEFAULT_DEPTH_BINS,
) -> EvalResult:
    """Score ``model`` (a CordaNet) on labelled items: mIoU per protocol, per-class IoU, pixel
    accuracy, and depth metrics of every depth head where items carry ``"depth"``.

    ``dataset_or_loader`` is a dataset (or list) of items (``image`` (3, h, w) normalised, ``label``
    (H, W) train IDs, optional ``depth`` (H, W), ``name``) or a loader of such batches. With
    ``distributed=True`` a dataset is sharded over the ranks (a loader must already be) and the
    scores are summed over all of them. ``precision`` is overridden by ``inference.precision``
    when an :class:`InferenceConfig` is given. ``depth_bins`` are the lower edges in metres of the
    depth ranges scored separately where items carry depth (None: no depth-binned mIoU). The
    model's train/eval mode is restored after.
    """
    if output_size not in ("full", "input"):
        raise ConfigError(f"output_size: {output_size!r} is not one of 'full', 'input'")
    inference = inference or InferenceConfig(precision=precision)
    device = torch.device(device)
    if isinstance(dataset_or_loader, (Dataset, Sequence)) and not isinstance(dataset_or_loader, DataLoader):
        # a dataset, or a plain list of items
        loader: Iterable[dict[str, Any]] = evaluation_loader(dataset_or_loader, batch_size, num_workers, distributed)
    else:
        loader = dataset_or_loader
    rank, _ = rank_and_world_size() if distributed else (0, 1)

    was_training = model.training
    model.eval()
    run = model_callable(model, inference.precision)
    tally = _Tally(num_classes, device, depth_bins, keep_samples)
    total = len(loader) if hasattr(loader, "__len__") else None
    try:
        for batch in tqdm(loader, total=total, desc="evaluate", disable=not progress or rank != 0, leave=False):
            image = batch["image"].to(device, non_blocking=True)  # (B, 3, h, w)
            label = batch["label"].to(device, non_blocking=True)  # (B, H, W)
            out_size = tuple(label.shape[-2:]) if output_size == "full" else tuple(image.shape[-2:])
            label = _to_scored_size(label, out_size)
            outputs = infer(run, image, inference, out_size)
            depth = batch.get("depth")
            if depth is not None:
                depth = _to_scored_size(depth.to(device, non_blocking=True).float(), out_size)
            tally.update(image, label, depth, outputs, batch.get("name"))
    finally:
        model.train(was_training)
    if distributed:
        tally.all_reduce()
    return tally.result(class_names)


class _Tally:
    """What :func:`evaluate_segmentation` accumulates on the device: the confusion matrix, the
    depth-binned matrices, the depth sums of every depth head, the image count, and the first
    ``keep_samples`` images (on the host) for pictures."""

    def __init__(self, num_classes: int, device: torch.device, depth_bins: Sequence[float] | None,
                 keep_samples: int) -> None:
        self.confusion = ConfusionMatrix(num_classes, device)
        self.binned = DepthBinnedConfusion(depth_bins, num_classes, device) if depth_bins is not None else None
        self.depth_meters: dict[str, DepthMeter] = {}
        self.image_count = torch.zeros((), dtype=torch.int64, device=device)
        self.samples: list[EvalSample] = []
        self.keep_samples = keep_samples
        self.device = device

    def update(self, image: torch.Tensor, label: torch.Tensor, depth_target: torch.Tensor | None,
               outputs: dict[str, torch.Tensor], names: list[str] | None) -> None:
        """One batch: (B, 3, h, w) images, (B, H, W) labels and depth at the scored size, the heads'
        outputs at that size."""
        prediction = outputs[SEMANTIC].argmax(1)  # (B, H, W)
        self.confusion.update(prediction, label)
        self.image_count += image.shape[0]
        if depth_target is not None:
            if self.binned is not None:
                self.binned.update(prediction, label, depth_target)
            for head, value in outputs.items():
                if head == SEMANTIC:
                    continue
                meter = self.depth_meters.setdefault(head, DepthMeter(self.device))
                meter.update(upsample(value, tuple(depth_target.shape[-2:]))[:, 0], depth_target)
        for i in range(min(image.shape[0], self.keep_samples - len(self.samples))):
            depth = outputs.get("depth")
            self.samples.append(EvalSample(
                name=(names or [""] * image.shape[0])[i] or str(len(self.samples)),
                image=to_display_rgb(image[i]),
                label=label[i].clamp(0, 255).to(torch.uint8).cpu().numpy(),
                prediction=prediction[i].to(torch.uint8).cpu().numpy(),
                depth=None if depth is None else depth[i, 0].cpu().numpy(),
            ))

    def all_reduce(self) -> None:
        """Sum everything over the processes (the samples stay each process's own)."""
        self.confusion.all_reduce()
        if self.binned is not None:
            self.binned.all_reduce()
        for meter in self.depth_meters.values():
            meter.all_reduce()
        all_reduce_sum(self.image_count)

    def result(self, class_names: tuple[str, ...] | None) -> EvalResult:
        scores = segmentation_scores(self.confusion.numpy(), class_names)
        bins = depth_bin_scores(self.binned.numpy(), self.binned.edges) if self.binned is not None else []
        return EvalResult(
            confusion=scores.confusion,
            iou=scores.iou,
            miou=scores.miou,
            pixel_accuracy=scores.pixel_accuracy,
            # heads scored on no valid pixel (e.g. val items without depth files) are left out
            depth={head: values for head, meter in sorted(self.depth_meters.items())
                   if (values := meter.compute())["pixels"] > 0},
            num_images=int(self.image_count.item()),
            class_names=scores.class_names,
            samples=self.samples,
            # no range at all without a single pixel of valid depth (items without depth files)
            depth_bins=bins if sum(b.pixels for b in bins) > 0 else [],
        )
