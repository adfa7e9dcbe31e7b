"""One CorDA adaptation iteration (docs/method.md, "Training step", steps 2-8) as a function:
``adaptation_step(student, teacher, batch, cfg, iteration, generator) -> StepOutput``.

The optimiser, the EMA update, DDP, autocast and logging live in the engine around it. The step
is vectorised over any batch size, takes all its randomness from the generator (drawn first, see
:mod:`cordaseg.adaptation.draws`), and never reads a tensor on the host: every term it returns
is a 0-d device tensor, to be turned into a number only at the logging interval. How the networks
run (the teacher on a second CUDA stream, one merged student pass) is :mod:`.passes`' business.

Model variants: a field of the model output that is None is skipped. Without a source depth
decoder (the "simple auxiliary depth" multitask model, the reference's no-attention layout) the
target decoder D also serves the source losses and there is no depth-based weighting; without
depth outputs at all (DeepLabV2) only ``method: dacs`` and ``method: source_only`` apply.

DAFormer's and MIC's options hook in where the paper's step has room for them: the feature
distance joins the source loss, the pseudo-label row crop the pixel weight, and the masked-image
loss the total (:mod:`.feature_distance`, :mod:`.pseudo_label_crop`, :mod:`.mic`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from cordaseg.adaptation.augment import strong_augment
from cordaseg.adaptation.classmix import classmix_mask, mix
from cordaseg.adaptation.config import AdaptationConfig
from cordaseg.adaptation.draws import StepDraws, draw_step_randomness
from cordaseg.adaptation.feature_distance import feature_distance
from cordaseg.adaptation.losses import berhu, cross_entropy, weighted_cross_entropy
from cordaseg.adaptation.mic import draw_mic, masked_image_consistency
from cordaseg.adaptation.passes import launch_pseudo_labels, source_pass, student_passes
from cordaseg.adaptation.pseudo_label_crop import crop_target_weight, target_pseudo_weight
from cordaseg.adaptation.weights import confidence_fraction, confidence_weight, depth_weight, pixel_weight
from cordaseg.data.formats import INVALID_DEPTH
from cordaseg.data.labels import IGNORE_INDEX
from cordaseg.data.normalization import CAFFE_MEAN_BGR
from cordaseg.errors import CordasegError, DataError
from cordaseg.models.output import CordaOutput


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
class MixedBatch:
    """Step 4: the source pasted onto the target by ClassMix."""

    mask: torch.Tensor
    """(B, H, W) float, 1 where the source pixel is pasted."""
    image: torch.Tensor
    """(B, 3, H, W) the mixed images after strong augmentation."""
    depth: torch.Tensor | None
    """(B, H, W) the mixed depth targets (CorDA only)."""


def sanitize_label(label: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Map every value outside 0..num_classes-1 to ``ignore_index`` (docs/data-formats.md, "Labels")."""
    outside = (label < 0) | (label >= num_classes)
    return label.masked_fill(outside, ignore_index)


def _source_depth_pair(pred: CordaOutput) -> tuple[torch.Tensor | None, torch.Tensor | None]:
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
    pred: CordaOutput, label: torch.Tensor, depth: torch.Tensor | None, cfg: AdaptationConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_src = CE(S, ys) + CE(S_init, ys) + w_d * (berHu(D_src_init, ds) + berHu(D_src, ds))."""
    terms = {"source_ce": cross_entropy(pred.semantic, label, IGNORE_INDEX)}
    if pred.semantic_initial is not None:
        terms["source_ce_initial"] = cross_entropy(pred.semantic_initial, label, IGNORE_INDEX)
    total = sum(terms.values())
    if cfg.uses_depth and depth is not None:
        final, initial = _source_depth_pair(pred)
        for name, prediction in (("source_depth", final), ("source_depth_initial", initial)):
            if prediction is not None:
                terms[name] = berhu(prediction, depth, cfg.berhu_threshold, INVALID_DEPTH)
                total = total + cfg.source_depth_weight * terms[name]
    return total, terms


def mix_batch(label: torch.Tensor, source_image: torch.Tensor, target_image: torch.Tensor,
              source_depth: torch.Tensor | None, target_depth: torch.Tensor | None, draws: StepDraws,
              cfg: AdaptationConfig, mean_bgr: tuple[float, float, float]) -> MixedBatch:
    """Step 4: ClassMix (source pasted on target) and strong augmentation of the mixed image (whose
    normalisation mean is ``mean_bgr``), in the input precision even under the engine's autocast
    (the blur is a convolution)."""
    with torch.autocast(device_type=source_image.device.type, enabled=False):
        mask = classmix_mask(label, draws.class_scores, IGNORE_INDEX, cfg.classmix_ignore_as_class)  # (B, H, W)
        image = strong_augment(mix(mask, source_image, target_image), draws, cfg.augmentation, mean_bgr)
        depth = mix(mask, source_depth, target_depth) if cfg.uses_depth else None
    return MixedBatch(mask, image, depth)


def mixed_pixel_weight(pred_mix: CordaOutput, mixed: MixedBatch, fraction: torch.Tensor, cfg: AdaptationConfig
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step 6: the (B, H, W) weight of the mixed-image loss and, where CorDA weights by depth, the
    depth-based part of it (no gradient)."""
    conf_w = confidence_weight(mixed.mask, fraction)
    top, bottom = cfg.pseudo_label_ignore_top, cfg.pseudo_label_ignore_bottom
    if top or bottom:
        conf_w = crop_target_weight(conf_w, mixed.mask, top, bottom)
    depth_w = None
    if cfg.uses_depth and cfg.depth_weighting and pred_mix.depth_source is not None and pred_mix.depth is not None:
        depth_w = depth_weight(pred_mix.depth_source, pred_mix.depth, mixed.depth, cfg.depth_weight_floor,
                               INVALID_DEPTH, cfg.depth_weight)
    return pixel_weight(conf_w, depth_w), depth_w


def mixed_loss(pred_mix: CordaOutput, mixed_label: torch.Tensor, weight: torch.Tensor, mixed: MixedBatch,
               cfg: AdaptationConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step 7: L_tgt = wCE(S, y_mix) + wCE(S_init, y_mix) + w_t * (berHu(mix(D_src, D), d_mix) +
    berHu(mix(D_src_init, D_init), d_mix))."""
    terms = {"target_ce": weighted_cross_entropy(pred_mix.semantic, mixed_label, weight, IGNORE_INDEX)}
    if pred_mix.semantic_initial is not None:
        terms["target_ce_initial"] = weighted_cross_entropy(pred_mix.semantic_initial, mixed_label, weight,
                                                            IGNORE_INDEX)
    total = sum(terms.values())
    if cfg.uses_depth:
        pairs = (
            ("target_depth", pred_mix.depth_source, pred_mix.depth),
            ("target_depth_initial", pred_mix.depth_source_initial, pred_mix.depth_initial),
        )
        for name, from_source, from_target in pairs:
            prediction = _mixed_depth(mixed.mask, from_source, from_target)
            if prediction is not None:
                terms[name] = berhu(prediction, mixed.depth, cfg.berhu_threshold, INVALID_DEPTH)
                total = total + cfg.target_depth_weight * terms[name]
    return total, terms


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


def _detached(loss: torch.Tensor, terms: dict[str, torch.Tensor], visuals: dict[str, torch.Tensor]) -> StepOutput:
    return StepOutput(loss=loss, terms={k: v.detach() for k, v in terms.items()}, visuals=visuals)


def source_only_step(student: nn.Module, source_image: torch.Tensor, source_label: torch.Tensor,
                     cfg: AdaptationConfig, with_visuals: bool, feature_reference: nn.Module | None) -> StepOutput:
    """``method: source_only``: the source loss alone (step 2), no teacher and no target."""
    output, source_features = source_pass(student, source_image, cfg)
    pred_src = output.upsampled(tuple(source_image.shape[-2:]))
    label = sanitize_label(source_label, pred_src.semantic.shape[1], IGNORE_INDEX)
    loss, terms = source_loss(pred_src, label, None, cfg)
    if cfg.feature_distance_weight:
        terms["feature_distance"] = _feature_distance(student, feature_reference, source_image, label, cfg,
                                                      source_features)
        loss = loss + cfg.feature_distance_weight * terms["feature_distance"]
    terms["source_loss"] = loss
    terms["loss"] = loss
    visuals = {"source_predictions": pred_src.semantic.detach().argmax(dim=1)} if with_visuals else {}
    return _detached(loss, terms, visuals)


def step_visuals(mixed: MixedBatch, mixed_label: torch.Tensor, pseudo_label: torch.Tensor, weight: torch.Tensor,
                 depth_w: torch.Tensor | None, pred_src: CordaOutput, pred_mix: CordaOutput,
                 mic_image: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The tensors of the engine's image panels (detached)."""
    visuals = {
        "mixed_image": mixed.image.detach(),
        "mix_mask": mixed.mask,
        "mixed_label": mixed_label,
        "pseudo_label": pseudo_label,
        "pixel_weight": weight.detach(),
        "predictions": pred_mix.semantic.detach().argmax(dim=1),
        "source_predictions": pred_src.semantic.detach().argmax(dim=1),
    }
    if depth_w is not None:
        visuals["depth_weight"] = depth_w
    if mic_image is not None:
        visuals["mic_image"] = mic_image.detach()
    if mixed.depth is not None:
        visuals["mixed_depth"] = mixed.depth
    return visuals


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
    mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR,
) -> StepOutput:
    """One iteration of docs/method.md, "Training step" (steps 2-8): the loss (with gradient) and its parts.

    ``batch``: ``source_image`` (B, 3, H, W) normalised, ``source_label`` (B, H, W) long,
    ``source_depth`` (B, H, W), ``target_image`` (B, 3, H, W), ``target_depth`` (B, H, W); depth keys
    may be absent or None for DACS and source-only. Both models are expected in train() mode
    (the reference runs the teacher in train mode too; this step does not change modes).
    ``draws`` replaces the generator's draws (for tests that replay them). ``teacher_stream``:
    on CUDA, overlap the teacher's forward with the student's work on a second stream
    (:func:`~cordaseg.adaptation.passes.launch_pseudo_labels`). ``feature_reference``: the frozen
    initial network of ``adaptation.feature_distance_weight``. ``mean_bgr``: the mean the images were
    normalised with (``source.mean_bgr``; docs/data-formats.md, "Images"), which the strong
    augmentation removes and restores.
    """
    source_image = _require(batch, "source_image")
    source_label = _require(batch, "source_label").long()
    if not cfg.uses_target:
        return source_only_step(student, source_image, source_label, cfg, with_visuals, feature_reference)
    if teacher is None:
        raise CordasegError(f"adaptation.method '{cfg.method}' needs a teacher model")
    target_image = _require(batch, "target_image")
    target_depth = _require(batch, "target_depth") if cfg.uses_depth else None
    source_depth = _require(batch, "source_depth") if cfg.uses_depth else None
    b, crop = source_image.shape[0], tuple(source_image.shape[-2:])
    if draws is None:
        draws = draw_step_randomness(b, cfg.augmentation, generator, cfg.augment_decision)
    draws = draws.to(source_image.device)
    mic_draws = draw_mic(b, *crop, cfg, generator).to(source_image.device) if cfg.mic.enabled else None

    # Step 3: pseudo-labels from the EMA teacher on the unaugmented target (not read before join()).
    pseudo = launch_pseudo_labels(teacher, target_image, iteration, cfg, overlap=teacher_stream)
    label = sanitize_label(source_label, pseudo.num_classes, IGNORE_INDEX)
    # Step 4: ClassMix and strong augmentation.
    mixed = mix_batch(label, source_image, target_image, source_depth, target_depth, draws, cfg, mean_bgr)
    # Steps 2 and 5: the student on the source and on the mixed images.
    pred_src, pred_mix, source_features = student_passes(student, source_image, mixed.image, cfg)
    if cfg.uses_depth and pred_mix.depth is None and pred_mix.depth_source is None:
        raise CordasegError("adaptation.method 'corda' needs a model with depth outputs; use method 'dacs' for a "
                            "DeepLabV2 model without depth")
    fd = None
    if cfg.feature_distance_weight:
        fd = _feature_distance(student, feature_reference, source_image, label, cfg, source_features)

    with torch.autocast(device_type=source_image.device.type, enabled=False):
        src_total, terms = source_loss(pred_src, label, source_depth, cfg)
        if fd is not None:
            terms["feature_distance"] = fd
            src_total = src_total + cfg.feature_distance_weight * fd
        pseudo.join()  # from here on the teacher's pseudo-labels are read
        mixed_label = mix(mixed.mask, label, pseudo.label)  # (B, H, W) long
        # Step 6: pixel weights (no gradient).
        fraction = confidence_fraction(pseudo.confidence, cfg.confidence_threshold)
        weight, depth_w = mixed_pixel_weight(pred_mix, mixed, fraction, cfg)
        if depth_w is not None:
            terms["depth_weight_mean"] = depth_w.mean()
        terms["confidence_fraction"] = fraction
        # Step 7: the mixed-image loss.
        tgt_total, tgt_terms = mixed_loss(pred_mix, mixed_label, weight, mixed, cfg)
        terms.update(tgt_terms)
        # Step 8: the total.
        loss = src_total + tgt_total
    terms["source_loss"] = src_total
    terms["target_loss"] = tgt_total
    mic_image = None
    if mic_draws is not None:
        pseudo_weight = target_pseudo_weight(fraction, pseudo.label.shape, cfg.pseudo_label_ignore_top,
                                             cfg.pseudo_label_ignore_bottom)
        mic_total, mic_terms, mic_image = masked_image_consistency(
            lambda image: student(image).upsampled(crop), target_image, pseudo.label, pseudo_weight, mic_draws, cfg,
            mean_bgr)
        terms.update(mic_terms)
        terms["mic_loss"] = mic_total
        loss = loss + cfg.mic.weight * mic_total
    terms["loss"] = loss
    visuals = {}
    if with_visuals:
        visuals = step_visuals(mixed, mixed_label, pseudo.label, weight, depth_w, pred_src, pred_mix, mic_image)
    return _detached(loss, terms, visuals)
