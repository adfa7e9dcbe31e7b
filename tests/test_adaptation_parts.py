"""Pieces of the adaptation step (docs/method.md, "Training step") against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from kornia.augmentation import ColorJiggle
from kornia.filters import gaussian_blur2d

from cordaseg.adaptation import (
    AdaptationConfig,
    AugmentationConfig,
    draw_step_randomness,
    ema_update,
    poly_lr,
)
from cordaseg.adaptation.augment import blur_kernel_size, color_jiggle, gaussian_blur, strong_augment
from cordaseg.adaptation.classmix import classmix_mask, mix
from cordaseg.adaptation.ema import ema_alpha
from cordaseg.adaptation.losses import berhu, cross_entropy, weighted_cross_entropy
from cordaseg.adaptation.weights import confidence_fraction, confidence_weight, depth_weight, pixel_weight
from cordaseg.config import ConfigError, from_dict, to_dict
from cordaseg.data.normalization import CAFFE_MEAN_BGR

# --- pixel weights -------------------------------------------------------------------------------


def test_confidence_weight_is_one_on_pasted_pixels_and_the_batch_fraction_elsewhere():
    confidence = torch.tensor([[[0.99, 0.5], [0.97, 0.968]], [[0.2, 0.3], [0.1, 0.999]]])  # (2, 2, 2)
    fraction = confidence_fraction(confidence, 0.968)
    assert fraction.dim() == 0
    assert fraction.item() == pytest.approx(4 / 8)  # 0.99, 0.97, 0.968 (>=), 0.999 over ALL 8 pixels
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    weight = confidence_weight(mask, fraction)
    expected = torch.tensor([[[1.0, 0.5], [0.5, 0.5]], [[0.5, 0.5], [0.5, 1.0]]])
    torch.testing.assert_close(weight, expected)


def test_depth_weight_hand_computed_with_invalid_depth():
    # pixel: (D_src, D, d_m) -> weight
    #   (2.5, 2.0, 2.0): diff 0.5 -> relu(1 - 0.25) + 1e-3 = 0.751
    #   (5.0, 1.0, 1.0): invalid depth (d_m == 1) -> 0 + 1e-3 + 1 -> clipped to 1
    #   (0.0, 8.0, 4.0): diff 8 > d_m -> 0 + 1e-3
    #   (3.0, 3.0, 2.0): agreement -> 1.001 -> clipped to 1
    depth_source = torch.tensor([[[2.5, 5.0], [0.0, 3.0]]], requires_grad=True)
    depth_target = torch.tensor([[[2.0, 1.0], [8.0, 3.0]]], requires_grad=True)
    mixed_depth = torch.tensor([[[2.0, 1.0], [4.0, 2.0]]])
    weight = depth_weight(depth_source, depth_target, mixed_depth, floor=1e-3, invalid_depth=1.0)
    torch.testing.assert_close(weight, torch.tensor([[[0.751, 1.0], [0.001, 1.0]]]))
    assert not weight.requires_grad  # no gradient through the weight


def test_depth_weight_both_forms_hand_computed_for_a_batch_of_two():
    # One pixel per image. Image 0: D_src 3, D 2 (diff 1), d_m 2; image 1: D_src 1, D 1 (diff 0),
    # d_m 1 (invalid).
    depth_source = torch.tensor([[[3.0]], [[1.0]]])
    depth_target = torch.tensor([[[2.0]], [[1.0]]])
    mixed_depth = torch.tensor([[[2.0]], [[1.0]]])
    per_image = depth_weight(depth_source, depth_target, mixed_depth, 1e-3, 1.0, form="per_image")
    # image 0: relu(1 - 1/2) + 1e-3 = 0.501; image 1: invalid -> 1
    torch.testing.assert_close(per_image, torch.tensor([[[0.501]], [[1.0]]]))
    # cross-batch dw[i, j] = clip(relu(1 - diff_i / d_j) + 1e-3 + [d_j == 1], 0, 1):
    #   dw[0, 0] = 0.501; dw[1, 0] = relu(1 - 0/2) + 1e-3 -> 1; dw[0, 1] = dw[1, 1] = 1 (invalid)
    # image j is weighted by the mean over i: j=0 -> (0.501 + 1) / 2 = 0.7505, j=1 -> 1
    cross = depth_weight(depth_source, depth_target, mixed_depth, 1e-3, 1.0, form="reference_cross_batch")
    torch.testing.assert_close(cross, torch.tensor([[[0.7505]], [[1.0]]]))

    # The loss: mean over i, j, pixels of CE_j * w_conf_j * dw[i, j] / mean(dw), with CE_j and
    # w_conf_j made up; mean(dw) = (0.501 + 1 + 1 + 1) / 4 = 0.87525.
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), 0.0]]).view(2, 2, 1, 1)
    label = torch.tensor([[[0]], [[0]]])
    ce = [math.log(4.0), math.log(1.5)]  # -log softmax of class 0 for each image
    conf = torch.tensor([[[0.5]], [[1.0]]])
    dw = [[0.501, 1.0], [1.0, 1.0]]
    mean_dw = 0.87525
    hand = sum(ce[j] * float(conf[j]) * dw[i][j] / mean_dw for i in range(2) for j in range(2)) / 4
    loss = weighted_cross_entropy(logits, label, pixel_weight(conf, cross), 255)
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    # For a batch of one, both forms agree.
    one = (depth_source[:1], depth_target[:1], mixed_depth[:1])
    torch.testing.assert_close(depth_weight(*one, form="per_image"), depth_weight(*one, form="reference_cross_batch"))


def test_augmentation_decisions_per_batch_are_shared_and_per_image_vary():
    aug = AugmentationConfig()
    shared = [draw_step_randomness(4, aug, torch.Generator().manual_seed(s), "per_batch") for s in range(40)]
    for d in shared:
        assert d.jitter_gate.shape == (4,) and d.blur_gate.shape == (4,)
        assert bool(d.jitter_gate.all()) or not bool(d.jitter_gate.any())
        assert bool(d.blur_gate.all()) or not bool(d.blur_gate.any())
    # the factors are still drawn per image
    assert any(len(set(d.brightness.tolist())) == 4 for d in shared)
    # both outcomes of each gate occur over the iterations
    assert {bool(d.jitter_gate[0]) for d in shared} == {True, False}
    assert {bool(d.blur_gate[0]) for d in shared} == {True, False}
    mixed = [draw_step_randomness(4, aug, torch.Generator().manual_seed(s), "per_image") for s in range(40)]
    assert any(0 < int(d.blur_gate.sum()) < 4 for d in mixed)
    # the step takes the decision from its config
    assert AdaptationConfig().augment_decision == "per_batch"


def test_pixel_weight_normalises_depth_weight_by_its_mean_including_ignore_pixels():
    # The depth weight is computed on every pixel, ignored ones too, and its mean counts them all;
    # the weighted CE then gives ignored pixels a zero loss.
    conf_w = torch.tensor([[[1.0, 0.5], [0.5, 0.5]]])
    depth_w = torch.tensor([[[0.751, 1.0], [0.001, 1.0]]])
    mean = (0.751 + 1.0 + 0.001 + 1.0) / 4
    expected = torch.tensor([[[0.751 / mean, 0.5 / mean], [0.5 * 0.001 / mean, 0.5 / mean]]])
    torch.testing.assert_close(pixel_weight(conf_w, depth_w), expected)
    assert pixel_weight(conf_w, None) is conf_w

    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    label = torch.tensor([[[1, 0], [1, 255]]])
    weight = pixel_weight(conf_w, depth_w)
    w = weight[0]
    loss = weighted_cross_entropy(logits, label, weight, 255)
    hand = (w[0, 0] * math.log(4 / 3) + w[0, 1] * math.log(4) + w[1, 0] * math.log(4 / 3) + 0.0) / 4
    assert loss.item() == pytest.approx(hand.item(), rel=1e-6)


# --- losses --------------------------------------------------------------------------------------


def test_weighted_cross_entropy_averages_over_all_pixels():
    # Two classes, logits (0, ln 3): p(class 1) = 3/4, so CE is ln(4/3) for label 1, ln 4 for label 0.
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1).expand(1, 2, 1, 4).contiguous()
    label = torch.tensor([[[1, 0, 255, 1]]])
    weight = torch.tensor([[[1.0, 0.5, 2.0, 0.25]]])
    loss = weighted_cross_entropy(logits, label, weight, ignore_index=255)
    hand = (1.0 * math.log(4 / 3) + 0.5 * math.log(4) + 0.0 + 0.25 * math.log(4 / 3)) / 4
    assert loss.item() == pytest.approx(hand, rel=1e-6)


def test_cross_entropy_averages_over_labelled_pixels_and_is_zero_when_none():
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1).expand(1, 2, 1, 4).contiguous()
    label = torch.tensor([[[1, 0, 255, 1]]])
    loss = cross_entropy(logits, label, ignore_index=255)
    assert loss.item() == pytest.approx((2 * math.log(4 / 3) + math.log(4)) / 3, rel=1e-6)
    all_ignored = torch.full_like(label, 255)
    assert cross_entropy(logits, all_ignored, 255).item() == 0.0


def test_berhu_hand_computed_value_and_gradient():
    # valid pixels (target != 1): errors 0.5, 0, 5 -> c = 0.2 * 5 = 1
    # 0.5 <= c -> 0.5; 0 -> 0; 5 > c -> (25 + 1) / 2 = 13; mean over 3 valid pixels = 4.5
    prediction = torch.tensor([[[1.5, 3.0], [2.0, 7.0]]], requires_grad=True)
    target = torch.tensor([[[1.0, 2.5], [2.0, 2.0]]])
    loss = berhu(prediction, target, threshold=0.2, invalid_depth=1.0)
    assert loss.item() == pytest.approx(4.5)
    loss.backward()
    # d/dpred: L1 branch sign(e)/3, L2 branch (e / c)/3 with c treated as a constant; invalid pixel 0.
    expected_grad = torch.tensor([[[0.0, 1 / 3], [0.0, 5 / 3]]])
    torch.testing.assert_close(prediction.grad, expected_grad)


def test_berhu_without_error_or_valid_pixels_is_zero_with_finite_gradient():
    target = torch.tensor([[[2.0, 3.0]]])
    prediction = target.clone().requires_grad_(True)
    loss = berhu(prediction, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(prediction.grad).all()
    assert berhu(torch.tensor([[[5.0]]]), torch.tensor([[[1.0]]])).item() == 0.0


# --- ClassMix ------------------------------------------------------------------------------------


def _label_with_values(values: list[int], size: int = 8) -> torch.Tensor:
    label = torch.tensor(values).repeat_interleave(size * size // len(values) + 1)[: size * size]
    return label.view(size, size)


@pytest.mark.parametrize("ignore_as_class", [True, False])
def test_classmix_pastes_exactly_ceil_half_of_the_present_classes(ignore_as_class):
    labels = torch.stack(
        [_label_with_values([0, 3, 7, 255]), _label_with_values([1, 2, 5]), _label_with_values([4])]
    )  # (3, 8, 8)
    for seed in range(20):
        scores = torch.rand(3, 256, generator=torch.Generator().manual_seed(seed))
        mask = classmix_mask(labels, scores, ignore_index=255, ignore_as_class=ignore_as_class)
        for k in range(3):
            present = set(labels[k].unique().tolist())
            if not ignore_as_class:
                present.discard(255)
            pasted = set(labels[k][mask[k] == 1].unique().tolist())
            kept = set(labels[k][mask[k] == 0].unique().tolist())
            assert len(pasted) == math.ceil(len(present) / 2)
            assert pasted <= present
            assert not pasted & kept  # a chosen class is pasted on every one of its pixels
            if not ignore_as_class:
                assert 255 not in pasted


def test_classmix_choice_is_uniform_and_counts_ignore_as_a_class():
    label = _label_with_values([0, 3, 7, 255]).expand(4000, 8, 8)  # one label, many draws at once
    scores = torch.rand(4000, 256, generator=torch.Generator().manual_seed(0))
    mask = classmix_mask(label, scores, ignore_index=255, ignore_as_class=True)
    for value in (0, 3, 7, 255):
        pixel = (label[0] == value).nonzero()[0]
        rate = mask[:, pixel[0], pixel[1]].mean().item()
        assert rate == pytest.approx(0.5, abs=0.04)  # 2 of 4 classes, each with probability 1/2


def test_mix_blends_floats_and_selects_integers():
    mask = torch.tensor([[[1.0, 0.0]]])
    torch.testing.assert_close(mix(mask, torch.tensor([[[5.0, 6.0]]]), torch.tensor([[[7.0, 8.0]]])),
                               torch.tensor([[[5.0, 8.0]]]))
    images = mix(mask, torch.ones(1, 3, 1, 2), torch.zeros(1, 3, 1, 2))
    assert images[:, :, 0, 0].eq(1).all() and images[:, :, 0, 1].eq(0).all()
    labels = mix(mask, torch.tensor([[[255, 1]]]), torch.tensor([[[2, 3]]]))
    assert labels.dtype == torch.int64 and labels.tolist() == [[[255, 3]]]


# --- strong augmentation -------------------------------------------------------------------------


def test_blur_kernel_size_is_odd_tenth_of_the_side():
    assert blur_kernel_size(512) == 51
    assert blur_kernel_size(1024) == 103
    assert blur_kernel_size(64) == 7
    assert blur_kernel_size(65) == 7
    assert blur_kernel_size(128) == 13


def test_color_jiggle_matches_kornia_colorjiggle_image_by_image():
    draws = draw_step_randomness(4, AugmentationConfig(), torch.Generator().manual_seed(3))
    image = torch.rand(4, 3, 12, 16, generator=torch.Generator().manual_seed(1))
    ours = color_jiggle(image, draws)
    module = ColorJiggle(0.25, 0.25, 0.25, 0.25, p=1.0)
    params = module.forward_parameters(torch.Size([1, 3, 12, 16]))
    for b in range(4):
        params.update(
            brightness_factor=draws.brightness[b : b + 1],
            contrast_factor=draws.contrast[b : b + 1],
            saturation_factor=draws.saturation[b : b + 1],
            hue_factor=draws.hue[b : b + 1],
            order=draws.jitter_order[b],
        )
        # bit for bit: clamped flat regions make downstream max-pool routing sensitive to the last ulp
        assert torch.equal(ours[b : b + 1], module(image[b : b + 1], params=params))
    assert len({tuple(row) for row in draws.jitter_order.tolist()}) > 1  # per-image orders were exercised


def test_gaussian_blur_matches_kornia_per_image():
    image = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.15, 0.6, 1.15])
    ours = gaussian_blur(image, sigma, (5, 7))
    for b in range(3):
        s = float(sigma[b])
        torch.testing.assert_close(ours[b : b + 1], gaussian_blur2d(image[b : b + 1], (5, 7), (s, s), "reflect"))


def test_strong_augment_leaves_ungated_images_unchanged_and_changes_gated_ones():
    aug = AugmentationConfig()
    draws = draw_step_randomness(4, aug, torch.Generator().manual_seed(0))
    draws.jitter_gate = torch.tensor([False, True, False, True])
    draws.blur_gate = torch.tensor([False, False, True, True])
    image = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 255 - 120
    out = strong_augment(image, draws, aug, CAFFE_MEAN_BGR)
    assert torch.equal(out[0], image[0])
    for b in (1, 2, 3):
        assert (out[b] - image[b]).abs().max() > 1.0
    # jitter only: stays within the de-normalised [0, 255] range
    bgr = out[1] + torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1)
    assert bgr.min() >= -1e-3 and bgr.max() <= 255 + 1e-3


def test_draws_follow_the_configured_ranges_and_are_reproducible():
    aug = AugmentationConfig()
    first = draw_step_randomness(512, aug, torch.Generator().manual_seed(7))
    again = draw_step_randomness(512, aug, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(vars(first).values(), vars(again).values()))
    for name in ("brightness", "contrast", "saturation"):
        values = getattr(first, name)
        assert values.min() >= 0.75 and values.max() <= 1.25
    assert first.hue.abs().max() <= 0.25
    assert first.blur_sigma.min() >= 0.15 and first.blur_sigma.max() <= 1.15
    assert first.jitter_gate.float().mean().item() == pytest.approx(0.8, abs=0.06)
    assert first.blur_gate.float().mean().item() == pytest.approx(0.5, abs=0.07)
    assert torch.equal(first.jitter_order.sort(dim=1).values, torch.arange(4).expand(512, 4))


# --- EMA and learning rate ----------------------------------------------------------------------


def test_ema_alpha_schedule():
    assert ema_alpha(0, 0.999) == 0.0
    assert ema_alpha(9, 0.999) == pytest.approx(0.9)
    assert ema_alpha(999, 0.999) == pytest.approx(0.999)
    assert ema_alpha(50_000, 0.999) == 0.999


def test_ema_update_lerps_parameters_and_leaves_buffers():
    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))

    teacher, student = net(), net()
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(0.0)
        for p in student.parameters():
            p.fill_(1.0)
        teacher[1].running_mean.fill_(3.0)
        student[1].running_mean.fill_(-3.0)
    assert ema_update(teacher, student, iteration=9, alpha_max=0.999) == pytest.approx(0.9)
    for p in teacher.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.1))  # 0.9 * 0 + 0.1 * 1
    assert teacher[1].running_mean.eq(3.0).all()
    ema_update(teacher, student, iteration=0, alpha_max=0.999)  # alpha 0: a copy of the student
    assert all(p.eq(1.0).all() for p in teacher.parameters())


def test_poly_lr_at_given_steps():
    assert poly_lr(2.5e-4, 0, 250_000, 0.9) == 2.5e-4
    assert poly_lr(2.5e-4, 125_000, 250_000, 0.9) == pytest.approx(2.5e-4 * 0.5**0.9)
    assert poly_lr(2.5e-4, 200_000, 250_000, 0.9) == pytest.approx(2.5e-4 * 0.2**0.9)
    assert poly_lr(2.5e-4, 250_000, 250_000, 0.9) == 0.0
    assert poly_lr(2.5e-4, 300_000, 250_000, 0.9) == 0.0


# --- configuration -------------------------------------------------------------------------------


def test_adaptation_config_round_trips_and_names_bad_keys():
    cfg = from_dict(AdaptationConfig, {"method": "dacs", "augmentation": {"blur_p": 0.25}})
    assert cfg.method == "dacs" and cfg.augmentation.blur_p == 0.25
    assert from_dict(AdaptationConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="method"):
        from_dict(AdaptationConfig, {"method": "fancy"})
    with pytest.raises(ConfigError, match="augmentation.blur_sigma"):
        from_dict(AdaptationConfig, {"augmentation": {"blur_sigmaa": 1.0}})
    with pytest.raises(ConfigError, match="confidence_threshold"):
        AdaptationConfig(confidence_threshold=1.5)
    with pytest.raises(ConfigError, match="jitter_p"):
        AugmentationConfig(jitter_p=2.0)
