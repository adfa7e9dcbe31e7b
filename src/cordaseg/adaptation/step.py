"""One CorDA adaptation iteration (spec section 3, steps 2-8) as a function:
``adaptation_step(student, teacher, batch, cfg, iteration, generator) -> StepOutput``.

The optimiser, the EMA update, DDP, autocast and logging live in the engine around it. The step
is vectorised over any batch size, takes all its randomness from the generator (drawn first, see
:mod:`cordaseg.adaptation.draws`), and never reads a tensor on the host: every term it returns
is a 0-d device tensor, to be turned into a number only at the logging interval.

Model variants: a field of the model output that is None is skipped. Without a source depth
decoder (the "simple auxiliary depth" multitask model, the reference's no-attention layout) the
target decoder D also serves the source losses and there is no depth-based weighting; without
depth outputs at all (DeepLabV2) only ``method: dacs`` and ``method: source_only`` apply.

On CUDA the teacher's forward (step 3) runs on a second stream, overlapped with the mixing and
the student's passes; the current stream waits for it just before the pseudo-labels are first
read. Nothing else changes: the same kernels on the same inputs, the same generator draws.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cordaseg.adaptation.augment import strong_augment
from cordaseg.adaptation.classmix import classmix_mask, mix
from cordaseg.adaptation.config import AdaptationConfig
from cordaseg.adaptation.draws import StepDraws, draw_step_randomness
from cordaseg.adaptation.feature_distance import feature_distance, forward_with_features
from cordaseg.adaptation.losses import at_least_float32, berhu, cross_entropy, weighted_cross_entropy
from cordaseg.adaptation.mic import draw_mic, masked_image_consistency
from cordaseg.adaptation.pseudo_label_crop import crop_target_weight, target_pseudo_weight
from cordaseg.adaptation.weights import confidence_fraction, confidence_weight, depth_weight, pixel_weight
from cordaseg.errors import CordasegError, DataError


@dataclass
class StepOutput:
    """What one iteration gives the engine."""

    loss: torch.Tensor
    """Scalar loss with gradient: L_src + L_tgt."""
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    """Detached 0-d tensors: every loss term, ``confidence_fraction``, ``depth_weight_mean``."""
    visuals: dict[str, torch.Tensor] = field(default_factory=dict)
    """Detached tensors for image panels (empty unless asked for)."""


@dataclass
class _Predictions:
    """Model outputs upsampled to the crop: logits (B, C, H, W), depth maps (B, H, W)."""

    semantic: torch.Tensor
    semantic_initial: torch.Tensor | None
    depth: torch.Tensor | None
    depth_initial: torch.Tensor | None
    depth_source: torch.Tensor | None
    depth_source_initial: torch.Tensor | None


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, align_corners=True (the reference's interpolation), in float32 or wider."""
    return F.interpolate(at_least_float32(x), size=size, mode="bilinear", align_corners=True)


def _upsampled(output, size: tuple[int, int]) -> _Predictions:
    def up(name: str, depth: bool) -> torch.Tensor | None:
        value = getattr(output, name, None)
        if value is None:
            return None
        value = upsample(value, size)
        return value[:, 0] if depth else value  # depth: (B, 1, H, W) -> (B, H, W)

    return _Predictions(
        semantic=up("semantic", False),
        semantic_initial=up("semantic_initial", False),
        depth=up("depth", True),
        depth_initial=up("depth_initial", True),
        depth_source=up("depth_source", True),
        depth_source_initial=up("depth_source_initial", True),
    )


def _split(output, batch: int):
    """Split every field of a merged-pass model output into (first ``batch``, rest)."""
    first, second = {}, {}
    for name in ("semantic", "semantic_initial", "depth", "depth_initial", "depth_source", "depth_source_initial"):
        value = getattr(output, name, None)
        first[name] = None if value is None else value[:batch]
        second[name] = None if value is None else value[batch:]
    return _Predictions(**first), _Predictions(**second)


def sanitize_label(label: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Map every value outside 0..num_classes-1 to ``ignore_index`` (spec section 5)."""
    outside = (label < 0) | (label >= num_classes)
    return label.masked_fill(outside, ignore_index)


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


def _launch_pseudo_label(
    teacher: nn.Module, target_image: torch.Tensor, iteration: int, cfg: AdaptationConfig, overlap: bool
) -> tuple[torch.Tensor, torch.Tensor, int, Callable[[], None]]:
    """:func:`pseudo_label`, plus ``join``: call it before reading the label or the confidence.

    With ``overlap`` on a CUDA device the teacher runs on a second stream and ``join`` makes the
    current stream wait for it; elsewhere it runs in place and ``join`` does nothing.
    """
    if not overlap or target_image.device.type != "cuda":
        label, confidence, num_classes = pseudo_label(teacher, target_image, iteration, cfg)
        return label, confidence, num_classes, lambda: None
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

    return label, confidence, num_classes, join


def _source_depth_pair(pred: _Predictions) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Decoders supervised on source pixels: D_src and D_src_init, falling back to D and D_init."""
    final = pred.depth_source if pred.depth_source is not None else pred.depth
    initial = pred.depth_source_initial if pred.depth_source_initial is not None else pred.depth_initial
    return final, initial


def _mixed_depth(mask: torch.Tensor, source: torch.Tensor | None, target: torch.Tensor | None):
    """mix(D_src, D): the source decoder on pasted pixels, the target decoder elsewhere."""
    if source is None or target is None:
        return target if target is not None else source
    return mix(mask, source, target)


def source_loss(
    pred: _Predictions, label: torch.Tensor, depth: torch.Tensor | None, cfg: AdaptationConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_src = CE(S, ys) + CE(S_init, ys) + w_d * (berHu(D_src_init, ds) + berHu(D_src, ds))."""
    terms = {"source_ce": cross_entropy(pred.semantic, label, cfg.ignore_index)}
    if pred.semantic_initial is not None:
        terms["source_ce_initial"] = cross_entropy(pred.semantic_initial, label, cfg.ignore_index)
    total = sum(terms.values())
    if cfg.uses_depth and depth is not None:
        final, initial = _source_depth_pair(pred)
        for name, prediction in (("source_depth", final), ("source_depth_initial", initial)):
            if prediction is not None:
                terms[name] = berhu(prediction, depth, cfg.berhu_threshold, cfg.invalid_depth)
                total = total + cfg.source_depth_weight * terms[name]
    return total, terms


def _source_pass(student: nn.Module, source_image: torch.Tensor, cfg: AdaptationConfig):
    """The student's source output, with its backbone features when the feature distance needs them."""
    if cfg.feature_distance_weight:
        return forward_with_features(student, source_image)
    return student(source_image), None


def _feature_distance(student: nn.Module, reference: nn.Module | None, source_image: torch.Tensor,
                      label: torch.Tensor, cfg: AdaptationConfig, features: torch.Tensor | None) -> torch.Tensor:
    if reference is None:
        raise CordasegError("adaptation.feature_distance_weight is set but the step got no feature_reference "
                            "(the frozen initial network)")
    return feature_distance(student, reference, source_image, label, cfg.feature_distance_classes,
                            cfg.feature_distance_min_share, features)


def _require(batch: dict, key: str) -> torch.Tensor:
    value = batch.get(key)
    if value is None:
        raise DataError(f"the adaptation batch has no '{key}' (needed by this adaptation.method)")
    return value


def adaptation_step(
    student: nn.Module,
    teacher: nn.Module | None,
    batch: dict[str, torch.Tensor | None],
    cfg: AdaptationConfig,
    iteration: int,
    generator: torch.Generator,
    *,
    with_visuals: bool = False,
    draws: StepDraws | None = None,
    teacher_stream: bool = True,
    feature_reference: nn.Module | None = None,
) -> StepOutput:
    """One iteration of spec section 3 (steps 2-8): returns the loss (with gradient) and its parts.

    ``batch``: ``source_image`` (B, 3, H, W) normalised, ``source_label`` (B, H, W) long,
    ``source_depth`` (B, H, W), ``target_image`` (B, 3, H, W), ``target_depth`` (B, H, W); depth keys
    may be absent or None for DACS and source-only. Both models are expected in train() mode
    (the reference runs the teacher in train mode too; this step does not change modes).
    ``draws`` replaces the generator's draws (for tests that replay them). ``teacher_stream``:
    on CUDA, overlap the teacher's forward with the student's work on a second stream.
    ``feature_reference``: the frozen initial network of ``adaptation.feature_distance_weight``.
    DAFormer's and MIC's options hook in below: the feature distance joins the source loss, the
    pseudo-label row crop the pixel weight, and the masked-image loss the total
    (:mod:`~cordaseg.adaptation.feature_distance`, :mod:`~cordaseg.adaptation.pseudo_label_crop`,
    :mod:`~cordaseg.adaptation.mic`).
    """
    source_image = _require(batch, "source_image")
    source_label = _require(batch, "source_label").long()
    crop = tuple(source_image.shape[-2:])
    b = source_image.shape[0]
    source_depth = batch.get("source_depth") if cfg.uses_depth else None
    terms: dict[str, torch.Tensor] = {}
    visuals: dict[str, torch.Tensor] = {}

    if not cfg.uses_target:
        output, source_features = _source_pass(student, source_image, cfg)
        pred_src = _upsampled(output, crop)
        label = sanitize_label(source_label, pred_src.semantic.shape[1], cfg.ignore_index)
        loss, src_terms = source_loss(pred_src, label, None, cfg)
        terms.update(src_terms)
        if cfg.feature_distance_weight:
            terms["feature_distance"] = _feature_distance(student, feature_reference, source_image, label, cfg,
                                                          source_features)
            loss = loss + cfg.feature_distance_weight * terms["feature_distance"]
        terms["source_loss"] = loss
        terms["loss"] = loss
        if with_visuals:
            visuals["source_predictions"] = pred_src.semantic.detach().argmax(dim=1)
        return StepOutput(loss=loss, terms={k: v.detach() for k, v in terms.items()}, visuals=visuals)

    if teacher is None:
        raise CordasegError(f"adaptation.method '{cfg.method}' needs a teacher model")
    target_image = _require(batch, "target_image")
    target_depth = _require(batch, "target_depth") if cfg.uses_depth else None
    if cfg.uses_depth:
        _require(batch, "source_depth")
    if draws is None:
        draws = draw_step_randomness(b, cfg.augmentation, generator, cfg.augment_decision)
    draws = draws.to(source_image.device)
    mic_draws = draw_mic(b, *crop, cfg, generator).to(source_image.device) if cfg.mic.enabled else None

    # Step 3: pseudo-labels from the EMA teacher on the unaugmented target (not read before
    # join(): on CUDA the teacher runs alongside what follows).
    target_label, target_confidence, num_classes, join = _launch_pseudo_label(
        teacher, target_image, iteration, cfg, teacher_stream
    )
    label = sanitize_label(source_label, num_classes, cfg.ignore_index)

    # Step 4: ClassMix (source pasted on target) and strong augmentation of the mixed image, in the
    # input precision even under the engine's autocast (the blur is a convolution).
    with torch.autocast(device_type=source_image.device.type, enabled=False):
        mask = classmix_mask(label, draws.class_scores, cfg.ignore_index, cfg.classmix_ignore_as_class)  # (B, H, W)
        mixed_image = strong_augment(mix(mask, source_image, target_image), draws, cfg.augmentation, cfg.mean_bgr)
        mixed_depth = mix(mask, source_depth, target_depth) if cfg.uses_depth else None

    # Steps 2 and 5: student passes, separate (reference BN statistics) or merged (fast option).
    source_features = None
    if cfg.merged_student_pass:
        merged = _upsampled(student(torch.cat([source_image, mixed_image])), crop)
        pred_src, pred_mix = _split(merged, b)
    else:
        output, source_features = _source_pass(student, source_image, cfg)
        pred_src = _upsampled(output, crop)
        pred_mix = _upsampled(student(mixed_image), crop)
    if cfg.uses_depth and pred_mix.depth is None and pred_mix.depth_source is None:
        raise CordasegError(
            "adaptation.method 'corda' needs a model with depth outputs; use method 'dacs' for a "
            "DeepLabV2 model without depth"
        )
    fd = None
    if cfg.feature_distance_weight:
        fd = _feature_distance(student, feature_reference, source_image, label, cfg, source_features)

    with torch.autocast(device_type=source_image.device.type, enabled=False):
        src_total, src_terms = source_loss(pred_src, label, source_depth, cfg)
        terms.update(src_terms)
        if fd is not None:
            terms["feature_distance"] = fd
            src_total = src_total + cfg.feature_distance_weight * fd

        join()  # from here on the teacher's pseudo-labels are read
        mixed_label = mix(mask, label, target_label)  # (B, H, W) long

        # Step 6: pixel weights (no gradient).
        fraction = confidence_fraction(target_confidence, cfg.confidence_threshold)
        conf_w = confidence_weight(mask, fraction)
        top, bottom = cfg.pseudo_label_ignore_top, cfg.pseudo_label_ignore_bottom
        if top or bottom:
            conf_w = crop_target_weight(conf_w, mask, top, bottom)
        depth_w = None
        if (
            cfg.uses_depth
            and cfg.depth_weighting
            and pred_mix.depth_source is not None
            and pred_mix.depth is not None
        ):
            depth_w = depth_weight(
                pred_mix.depth_source, pred_mix.depth, mixed_depth, cfg.depth_weight_floor, cfg.invalid_depth,
                cfg.depth_weight,
            )
            terms["depth_weight_mean"] = depth_w.mean()
        weight = pixel_weight(conf_w, depth_w)
        terms["confidence_fraction"] = fraction

        # Step 7: the mixed-image loss.
        tgt_terms = {"target_ce": weighted_cross_entropy(pred_mix.semantic, mixed_label, weight, cfg.ignore_index)}
        if pred_mix.semantic_initial is not None:
            tgt_terms["target_ce_initial"] = weighted_cross_entropy(
                pred_mix.semantic_initial, mixed_label, weight, cfg.ignore_index
            )
        tgt_total = sum(tgt_terms.values())
        if cfg.uses_depth:
            pairs = (
                ("target_depth", pred_mix.depth_source, pred_mix.depth),
                ("target_depth_initial", pred_mix.depth_source_initial, pred_mix.depth_initial),
            )
            for name, from_source, from_target in pairs:
                prediction = _mixed_depth(mask, from_source, from_target)
                if prediction is not None:
                    tgt_terms[name] = berhu(prediction, mixed_depth, cfg.berhu_threshold, cfg.invalid_depth)
                    tgt_total = tgt_total + cfg.target_depth_weight * tgt_terms[name]
        terms.update(tgt_terms)

        # Step 8: the total.
        loss = src_total + tgt_total
    terms["source_loss"] = src_total
    terms["target_loss"] = tgt_total
    if mic_draws is not None:
        mic_total, mic_terms, mic_image = masked_image_consistency(
            lambda image: _upsampled(student(image), crop), target_image, target_label,
            target_pseudo_weight(fraction, target_label.shape, top, bottom), mic_draws, cfg,
        )
        terms.update(mic_terms)
        terms["mic_loss"] = mic_total
        loss = loss + cfg.mic.weight * mic_total
    terms["loss"] = loss

    if with_visuals:
        visuals = {
            "mixed_image": mixed_image.detach(),
            "mix_mask": mask,
            "mixed_label": mixed_label,
            "pseudo_label": target_label,
            "pixel_weight": weight.detach(),
            "predictions": pred_mix.semantic.detach().argmax(dim=1),
            "source_predictions": pred_src.semantic.detach().argmax(dim=1),
        }
        if depth_w is not None:
            visuals["depth_weight"] = depth_w
        if mic_draws is not None:
            visuals["mic_image"] = mic_image.detach()
        if mixed_depth is not None:
            visuals["mixed_depth"] = mixed_depth
    return StepOutput(loss=loss, terms={k: v.detach() for k, v in terms.items()}, visuals=visuals)
