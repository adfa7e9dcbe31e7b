"""The optimised adaptation step equals a plain, per-image implementation of docs/method.md,
"Training step".

The plain version below is written straight from the method's description, the way the reference works: image by
image, with ``torch.unique`` for the ClassMix classes, kornia's ``ColorJiggle`` module and
``gaussian_blur2d`` per image, boolean indexing in berHu. It consumes the same draws (from
:func:`draw_step_randomness` with the same seed), and both must give the same loss and the same
gradients in float32.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from kornia.augmentation import ColorJiggle
from kornia.filters import gaussian_blur2d

from cordaseg.adaptation import AdaptationConfig, StepDraws, adaptation_step, draw_step_randomness
from cordaseg.data.normalization import CAFFE_MEAN_BGR
from cordaseg.models.corda import ModelConfig, build_model

SIZE = 64


def plain_berhu(prediction, target):
    valid = target != 1.0
    error = (prediction - target).abs()[valid]
    c = 0.2 * error.max().detach()
    return torch.where(error <= c, error, (error**2 + c**2) / (2 * c)).mean()


def reference_kernel_side(side: int) -> int:
    # ~10% of the side, odd: the reference's rounding, 51 for 512
    tenth = math.ceil(0.1 * side)
    return int(math.floor(tenth - 0.5 + tenth % 2))


def plain_step(student, teacher, batch, cfg: AdaptationConfig, iteration: int, draws: StepDraws):
    xs, ys, ds = batch["source_image"], batch["source_label"], batch["source_depth"]
    xt, dt = batch["target_image"], batch["target_depth"]
    n_images, _, height, width = xs.shape

    def up(t):
        return F.interpolate(t, (height, width), mode="bilinear", align_corners=True)

    # 2. source
    out = student(xs)
    s, s_init = up(out.semantic), up(out.semantic_initial)
    d_src, d_src_init = up(out.depth_source)[:, 0], up(out.depth_source_initial)[:, 0]
    loss_src = (
        F.cross_entropy(s, ys, ignore_index=255)
        + F.cross_entropy(s_init, ys, ignore_index=255)
        + 0.01 * (plain_berhu(d_src_init, ds) + plain_berhu(d_src, ds))
    )

    # 3. teacher on the unaugmented target
    with torch.no_grad():
        t_out = teacher(xt)
        logits = t_out.semantic_initial if iteration < cfg.initial_head_until else t_out.semantic
        confidence, pseudo = torch.softmax(up(logits), dim=1).max(dim=1)

    # 4. ClassMix and strong augmentation, image by image
    mean = torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    masks, mixed = [], []
    for k in range(n_images):
        classes = torch.unique(ys[k])
        n = len(classes)
        chosen = classes[draws.class_scores[k][classes].argsort()[: (n + n % 2) // 2]]
        mask = torch.isin(ys[k], chosen).float()
        image = (mask * xs[k] + (1 - mask) * xt[k])[None]
        if draws.jitter_gate[k]:
            jiggle = ColorJiggle(0.25, 0.25, 0.25, 0.25, p=1.0)
            params = jiggle.forward_parameters(image.shape)
            params.update(
                brightness_factor=draws.brightness[k : k + 1],
                contrast_factor=draws.contrast[k : k + 1],
                saturation_factor=draws.saturation[k : k + 1],
                hue_factor=draws.hue[k : k + 1],
                order=draws.jitter_order[k],
            )
            image = jiggle((image + mean) / 255.0, params=params) * 255.0 - mean
        if draws.blur_gate[k]:
            sigma = float(draws.blur_sigma[k])
            kernel = (reference_kernel_side(height), reference_kernel_side(width))
            image = gaussian_blur2d(image, kernel, (sigma, sigma))
        masks.append(mask)
        mixed.append(image)
    mask = torch.stack(masks)
    mixed_image = torch.cat(mixed)
    mixed_label = torch.where(mask.bool(), ys, pseudo)
    mixed_depth = mask * ds + (1 - mask) * dt

    # 5. student on the mixed image
    out = student(mixed_image)
    s, s_init = up(out.semantic), up(out.semantic_initial)
    d, d_init = up(out.depth)[:, 0], up(out.depth_initial)[:, 0]
    d_src, d_src_init = up(out.depth_source)[:, 0], up(out.depth_source_initial)[:, 0]

    # 6. weights
    q = (confidence >= cfg.confidence_threshold).sum() / confidence.numel()
    w_conf = mask + (1 - mask) * q
    with torch.no_grad():
        if cfg.depth_weight == "per_image":
            score = torch.relu(1 - (d_src - d).abs() / mixed_depth) + 1e-3
            w_depth = torch.clip(score + (mixed_depth == 1.0).float(), 0, 1)
        else:
            # As the reference broadcasts it: predictions (B, 1, H, W) against the target (B, H, W)
            # give (B, B, H, W), indexed [i, j] by the predicting image i and the target image j.
            diff = (d_src - d).abs()[:, None]
            score = torch.relu(1 - diff / mixed_depth) + 1e-3
            w_depth = torch.clip(score + (mixed_depth == 1.0).float(), 0, 1)
    weight = w_conf * w_depth / w_depth.mean()  # (B, H, W), or (B, B, H, W) broadcast over i

    # 7. mixed loss
    def weighted_ce(logits):
        return (weight * F.cross_entropy(logits, mixed_label, ignore_index=255, reduction="none")).mean()

    loss_tgt = (
        weighted_ce(s)
        + weighted_ce(s_init)
        + 0.001
        * (
            plain_berhu(mask * d_src + (1 - mask) * d, mixed_depth)
            + plain_berhu(mask * d_src_init + (1 - mask) * d_init, mixed_depth)
        )
    )
    return loss_src + loss_tgt, q


def make_batch(seed: int, n_images: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 19, (n_images, 4, 4), generator=g)
    blocks[blocks > 15] = 255  # a few ignore regions
    label = F.interpolate(blocks[:, None].float(), size=(SIZE, SIZE), mode="nearest")[:, 0].long()

    def depth():
        values = 1.0 + 20.0 * torch.rand(n_images, SIZE, SIZE, generator=g)
        values[torch.rand(n_images, SIZE, SIZE, generator=g) < 0.1] = 1.0  # invalid pixels
        return values

    return {
        "source_image": torch.rand(n_images, 3, SIZE, SIZE, generator=g) * 255 - 115,
        "source_label": label,
        "source_depth": depth(),
        "target_image": torch.rand(n_images, 3, SIZE, SIZE, generator=g) * 255 - 115,
        "target_depth": depth(),
    }


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    student = build_model(ModelConfig(backbone_depth=18, head_width=32, backbone_width=16))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return student.train(), teacher.train()


@pytest.mark.slow
@pytest.mark.parametrize("iteration,depth_weight", [(10, "reference_cross_batch"), (30_000, "per_image")])
def test_optimised_step_equals_plain_implementation(models, iteration, depth_weight):
    student, teacher = models
    batch = make_batch(seed=iteration)
    # A threshold at the teacher's median confidence makes the confidence fraction non-trivial.
    with torch.no_grad():
        out = copy.deepcopy(teacher)(batch["target_image"])
        logits = out.semantic_initial if iteration < 25_001 else out.semantic
        probability = torch.softmax(F.interpolate(logits, (SIZE, SIZE), mode="bilinear", align_corners=True), 1)
        threshold = float(probability.max(dim=1).values.median())
    cfg = AdaptationConfig(confidence_threshold=threshold, depth_weight=depth_weight)

    seed = 1234 + iteration
    draws = draw_step_randomness(3, cfg.augmentation, torch.Generator().manual_seed(seed))
    # cover both sides of each gate whatever the seed gave
    draws = dataclasses.replace(
        draws, jitter_gate=torch.tensor([True, False, True]), blur_gate=torch.tensor([True, True, False])
    )

    fast_student, fast_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    fast = adaptation_step(fast_student, fast_teacher, batch, cfg, iteration, torch.Generator(), draws=draws)
    fast.loss.backward()

    plain_student, plain_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    plain_loss, plain_q = plain_step(plain_student, plain_teacher, batch, cfg, iteration, draws)
    plain_loss.backward()

    assert 0.0 < plain_q.item() < 1.0
    torch.testing.assert_close(fast.terms["confidence_fraction"], plain_q.float())
    torch.testing.assert_close(fast.loss, plain_loss, rtol=1e-5, atol=1e-6)
    for (name, p_fast), p_plain in zip(fast_student.named_parameters(), plain_student.parameters()):
        if p_plain.grad is None:
            assert p_fast.grad is None or not p_fast.grad.any(), name
            continue
        torch.testing.assert_close(p_fast.grad, p_plain.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_step_with_generator_equals_step_with_its_draws(models):
    """The generator path draws exactly ``draw_step_randomness`` first, so tests can replay it."""
    student, teacher = models
    batch = make_batch(seed=5)
    cfg = AdaptationConfig()
    from_generator = adaptation_step(
        copy.deepcopy(student), copy.deepcopy(teacher), batch, cfg, 10, torch.Generator().manual_seed(99),
        with_visuals=True,
    )
    draws = draw_step_randomness(3, cfg.augmentation, torch.Generator().manual_seed(99), cfg.augment_decision)
    from_draws = adaptation_step(
        copy.deepcopy(student), copy.deepcopy(teacher), batch, cfg, 10, torch.Generator(), draws=draws,
        with_visuals=True,
    )
    assert torch.equal(from_generator.loss, from_draws.loss)
    assert torch.equal(from_generator.visuals["mixed_image"], from_draws.visuals["mixed_image"])
