"""The network passes of one adaptation step (docs/method.md, "Training step"): the teacher's
pseudo-labels and the student's passes over the source and the mixed images.

How they run is an execution choice that never changes a value the step computes:

- On CUDA the teacher's pass (step 3) can run on a second stream, overlapped with the mixing and
  the student's passes; the current stream waits for it just before the pseudo-labels are first
  read (:meth:`PseudoLabels.join`). The same kernels run on the same inputs either way.
- The student's source and mixed passes are separate by default, so that batch norm sees each
  batch alone as in the reference; ``adaptation.merged_student_pass`` runs them as one batch
  (faster, but batch norm then shares statistics across both, which changes training).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cordaseg.adaptation.config import AdaptationConfig
from cordaseg.adaptation.feature_distance import forward_with_features
from cordaseg.models.output import CordaOutput, upsample


@dataclass
class PseudoLabels:
    """The teacher's prediction on the unaugmented target images."""

    label: torch.Tensor
    """(B, H, W) long: the most probable class of every pixel."""
    confidence: torch.Tensor
    """(B, H, W): its softmax probability."""
    num_classes: int
    """Classes of the teacher's semantic head."""
    join: Callable[[], None] = lambda: None
    """Call before reading ``label`` or ``confidence``: waits for a teacher on a second stream."""


@torch.no_grad()
def pseudo_label(
    teacher: nn.Module, target_image: torch.Tensor, iteration: int, cfg: AdaptationConfig
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Teacher prediction on the unaugmented target: label (B, H, W) long, confidence (B, H, W), C.

    Uses the initial semantic head while ``iteration < cfg.initial_head_until`` (when the model
    has one), the final one afterwards.
    """
    out = teacher(target_image)
    logits = out.semantic
    if iteration < cfg.initial_head_until and out.semantic_initial is not None:
        logits = out.semantic_initial
    probability = torch.softmax(upsample(logits, target_image.shape[-2:]), dim=1)  # (B, C, H, W)
    confidence, label = probability.max(dim=1)
    return label, confidence, probability.shape[1]


@functools.cache
def _side_stream(device_index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device=device_index)


def launch_pseudo_labels(
    teacher: nn.Module, target_image: torch.Tensor, iteration: int, cfg: AdaptationConfig, overlap: bool
) -> PseudoLabels:
    """:func:`pseudo_label`, on a second CUDA stream with ``overlap`` on a CUDA device (its
    ``join`` makes the current stream wait for it), in place elsewhere (``join`` does nothing)."""
    if not overlap or target_image.device.type != "cuda":
        return PseudoLabels(*pseudo_label(teacher, target_image, iteration, cfg))
    device = target_image.device
    main = torch.cuda.current_stream(device)
    side = _side_stream(device.index if device.index is not None else torch.cuda.current_device())
    side.wait_stream(main)  # the target batch (and the EMA-updated teacher) come from the main stream
    with torch.cuda.stream(side):
        label, confidence, num_classes = pseudo_label(teacher, target_image, iteration, cfg)

    def join() -> None:
        main.wait_stream(side)
        # Allocated on the side stream, used on the main one: keep the caching allocator from
        # handing their memory to the side stream before the main stream is done with them.
        label.record_stream(main)
        confidence.record_stream(main)

    return PseudoLabels(label, confidence, num_classes, join)


def source_pass(student: nn.Module, source_image: torch.Tensor, cfg: AdaptationConfig
                ) -> tuple[CordaOutput, torch.Tensor | None]:
    """The student's output on the source images, with its backbone features when the feature
    distance needs them (``adaptation.feature_distance_weight``), else None."""
    if cfg.feature_distance_weight:
        return forward_with_features(student, source_image)
    return student(source_image), None


def student_passes(student: nn.Module, source_image: torch.Tensor, mixed_image: torch.Tensor,
                   cfg: AdaptationConfig) -> tuple[CordaOutput, CordaOutput, torch.Tensor | None]:
    """The student's predictions on the source and on the mixed images, upsampled to the crop
    (:meth:`~cordaseg.models.output.CordaOutput.upsampled`), and the source features of
    :func:`source_pass` (None for a merged pass, whose feature distance encodes the source again).
    """
    crop = tuple(source_image.shape[-2:])
    if cfg.merged_student_pass:
        merged = student(torch.cat([source_image, mixed_image])).upsampled(crop)
        source, mixed = merged.split(source_image.shape[0])
        return source, mixed, None
    output, source_features = source_pass(student, source_image, cfg)
    return output.upsampled(crop), student(mixed_image).upsampled(crop), source_features
