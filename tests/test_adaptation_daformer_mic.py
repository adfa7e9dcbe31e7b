"""DAFormer's feature distance and pseudo-label row crop, and MIC's masked image consistency:
each piece against a hand computation or an independent statement of its rule, then inside the
adaptation step (draws from the step's generator only)."""

from __future__ import annotations

import copy
import functools
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cordaseg.adaptation import AdaptationConfig, adaptation_step
from cordaseg.adaptation.config import THING_CLASSES, MicConfig
from cordaseg.adaptation.feature_distance import (
    feature_distance,
    frozen_reference,
    masked_feature_distance,
    thing_cells,
)
from cordaseg.adaptation.mic import MicDraws, draw_mic, masked_image_consistency, patch_grid, patch_mask
from cordaseg.adaptation.pseudo_label_crop import crop_target_weight, row_keep, target_pseudo_weight
from cordaseg.config import ConfigError
from cordaseg.errors import CordasegError
from cordaseg.models.corda import ModelConfig, build_model

SIZE = 32


# ---------------------------------------------------------------------------------------------
# Feature distance


def majority_cells(label: torch.Tensor, scale: int, min_share: float, num_classes: int) -> torch.Tensor:
    """DAFormer's label downsampling stated directly: per scale x scale cell, the class (ignore
    counted as class ``num_classes``) with the largest share, if that share is >= min_share, else 255."""
    b, h, w = label.shape
    ids = label.clone()
    ids[ids == 255] = num_classes
    out = torch.full((b, h // scale, w // scale), 255, dtype=torch.long)
    for i in range(b):
        for y in range(h // scale):
            for x in range(w // scale):
                cell = ids[i, y * scale:(y + 1) * scale, x * scale:(x + 1) * scale].flatten()
                counts = torch.bincount(cell, minlength=num_classes + 1).double() / cell.numel()
                share, cls = counts.max(0)
                if share >= min_share and cls != num_classes:
                    out[i, y, x] = cls
    return out


@pytest.mark.parametrize("scale", [4, 8])
def test_thing_cells_equal_the_majority_rule(scale):
    g = torch.Generator().manual_seed(scale)
    coarse = torch.randint(0, 20, (3, 64 // 8, 64 // 8), generator=g)
    label = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2).roll((1, 1), (1, 2))  # mixed and pure cells
    label[label == 19] = 255
    noise = torch.rand(label.shape, generator=g) < 0.05
    label = torch.where(noise, torch.randint(0, 19, label.shape, generator=g), label)
    cells = majority_cells(label, scale, 0.75, 19)
    expected = torch.isin(cells, torch.tensor(THING_CLASSES))
    ours = thing_cells(label, (64 // scale, 64 // scale), THING_CLASSES, 0.75)
    assert torch.equal(ours, expected)
    assert 0 < expected.sum() < expected.numel()


def test_thing_cells_by_hand():
    car, person, road, ignore = 13, 11, 0, 255
    label = torch.tensor([[
        [car, car, car, person],
        [car, road, car, person],
        [road, road, ignore, ignore],
        [road, road, ignore, car],
    ]])
    # Cells: 3/4 car (thing), 2/4 car + 2/4 person (none reaches 0.75), all road (no thing),
    # 3/4 ignore (ignored).
    assert thing_cells(label, (2, 2), THING_CLASSES, 0.75).tolist() == [[[True, False], [False, False]]]
    assert thing_cells(label, (2, 2), THING_CLASSES, 1.0).tolist() == [[[False, False], [False, False]]]


def test_masked_feature_distance_by_hand():
    features = torch.tensor([[[[3.0, 1.0]], [[4.0, 1.0]]]], requires_grad=True)  # (1, 2, 1, 2)
    reference = torch.zeros(1, 2, 1, 2)
    both = masked_feature_distance(features, reference, torch.tensor([[[True, True]]]))
    assert both.item() == pytest.approx((5.0 + math.sqrt(2.0)) / 2)
    first = masked_feature_distance(features, reference, torch.tensor([[[True, False]]]))
    assert first.item() == pytest.approx(5.0)
    first.backward()
    assert torch.allclose(features.grad[0, :, 0, 0], torch.tensor([0.6, 0.8])) and features.grad[..., 1].eq(0).all()
    empty = masked_feature_distance(features, reference, torch.zeros(1, 1, 2, dtype=torch.bool))
    assert empty.item() == 0.0 and math.isfinite(empty.item())


class Encoder(nn.Module):
    """A stand-in network with ``encode``: a strided conv (output stride 4)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 4, stride=4)

    def encode(self, x):
        return self.conv(x)


def test_feature_distance_pulls_only_the_student_towards_the_frozen_copy():
    torch.manual_seed(0)
    student = Encoder()
    reference = frozen_reference(student)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    with torch.no_grad():
        student.conv.weight.add_(0.1)
    image = torch.randn(2, 3, 16, 16)
    label = torch.full((2, 16, 16), 0)
    label[0, :8, :8] = 13  # one 4x4-cell block of car pixels in image 0: 4 cells
    loss = feature_distance(student, reference, image, label, THING_CLASSES, 0.75)
    with torch.no_grad():
        distance = torch.linalg.vector_norm(student.encode(image) - reference.encode(image), dim=1)
    assert loss.item() == pytest.approx(distance[0, :2, :2].mean().item(), rel=1e-6)
    loss.backward()
    assert student.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in reference.parameters())


def test_feature_distance_needs_an_encode_method():
    with pytest.raises(CordasegError, match="encode"):
        feature_distance(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), torch.zeros(1, 3, 8, 8),
                         torch.zeros(1, 8, 8, dtype=torch.long), THING_CLASSES, 0.75)


# ---------------------------------------------------------------------------------------------
# Pseudo-label row crop


def test_row_crop_zeroes_only_target_pixels_of_the_cropped_rows():
    assert row_keep(8, 2, 3).tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    weight = torch.full((1, 8, 4), 0.5)
    mask = torch.zeros(1, 8, 4)
    mask[:, :, 0] = 1  # column 0 pasted from the source
    cropped = crop_target_weight(weight, mask, 2, 3)
    expected = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0])
    assert torch.equal(cropped[0, :, 1], expected) and torch.equal(cropped[0, :, 3], expected)
    assert torch.equal(cropped[0, :, 0], torch.full((8,), 0.5))  # source pixels keep their weight
    target = target_pseudo_weight(torch.tensor(0.25), (2, 8, 4), 2, 3)
    assert target.shape == (2, 8, 4) and torch.equal(target[1, :, 2], expected / 2)


# ---------------------------------------------------------------------------------------------
# MIC


def test_mic_mask_keeps_about_30_percent_of_whole_patches():
    cfg = AdaptationConfig(mic=MicConfig(enabled=True, patch=64, ratio=0.7))
    generator = torch.Generator().manual_seed(0)
    kept = []
    for _ in range(25):
        draws = draw_mic(8, 512, 512, cfg, generator)
        assert draws.keep.shape == (8, 1, 8, 8)
        mask = patch_mask(draws.keep, (512, 512))  # (8, 1, 512, 512)
        blocks = mask.view(8, 1, 8, 64, 8, 64)
        # Every 64x64 block is constant and equals its patch's draw.
        assert torch.equal(blocks.amin(dim=(3, 5)), blocks.amax(dim=(3, 5)))
        assert torch.equal(blocks[:, :, :, 0, :, 0], draws.keep.float())
        kept.append(mask.mean().item())
    assert np.mean(kept) == pytest.approx(0.3, abs=0.02)  # 12,800 patches: standard error 0.004


def test_mic_grid_rounds_like_mic_and_keeps_at_least_one_patch():
    assert patch_grid(512, 512, 64) == (8, 8)
    assert patch_grid(512, 1024, 32) == (16, 32)
    assert patch_grid(100, 90, 64) == (2, 1)
    assert patch_grid(20, 20, 64) == (1, 1)


def test_mic_loss_by_hand():
    cfg = AdaptationConfig(mic=MicConfig(enabled=True, patch=2, augment=False))
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4) / 20 - 2
    keep = torch.tensor([[[[True, False], [False, True]]], [[[False, False], [True, True]]]])
    draws = MicDraws(keep=keep, augmentation=None)
    label = torch.tensor([[0, 1, 2, 0], [1, 1, 0, 2], [2, 0, 1, 1], [0, 2, 2, 1]]).expand(2, 4, 4)
    weight = target_pseudo_weight(torch.tensor(0.6), (2, 4, 4), 1, 1)

    def predict(masked):  # logits = the three colour channels, the initial head twice them
        return SimpleNamespace(semantic=masked, semantic_initial=2 * masked)

    total, terms, masked = masked_image_consistency(predict, image, label, weight, draws, cfg)

    expected_masked = image.clone()
    expected_masked[0, :, :2, 2:] = 0
    expected_masked[0, :, 2:, :2] = 0
    expected_masked[1, :, :2, :] = 0
    assert torch.equal(masked, expected_masked)

    def by_hand(logits):
        total = 0.0
        for b in range(2):
            for y in range(4):
                for x in range(4):
                    z = logits[b, :, y, x].tolist()
                    ce = math.log(sum(math.exp(v) for v in z)) - z[label[b, y, x]]
                    total += (0.6 if 0 < y < 3 else 0.0) * ce
        return total / 32

    assert terms["mic_ce"].item() == pytest.approx(by_hand(expected_masked), rel=1e-6)
    assert terms["mic_ce_initial"].item() == pytest.approx(by_hand(2 * expected_masked), rel=1e-6)
    assert total.item() == pytest.approx(terms["mic_ce"].item() + terms["mic_ce_initial"].item(), rel=1e-6)


def test_mic_config_is_checked():
    with pytest.raises(ConfigError, match="mic.ratio"):
        MicConfig(ratio=1.5)
    with pytest.raises(ConfigError, match="source_only"):
        AdaptationConfig(method="source_only", mic=MicConfig(enabled=True))


# ---------------------------------------------------------------------------------------------
# Inside the adaptation step


@functools.cache
def _built(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, backbone_depth=18, head_width=32, backbone_width=16))


class WithEncode(nn.Module):
    """The tiny network with ``encode`` (the backbone's last feature map) only."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def encode(self, x):
        return self.net.backbone(x)


class WithPredictAndEncode(WithEncode):
    """... and with ``predict_and_encode`` (prediction and features from one backbone pass)."""

    def predict_and_encode(self, x):
        features = []
        hook = self.net.backbone.register_forward_hook(lambda module, args, out: features.append(out))
        try:
            output = self.net(x)
        finally:
            hook.remove()
        return output, features[0]


def networks(arch: str = "corda", wrapper: type[nn.Module] = WithEncode) -> tuple[nn.Module, nn.Module]:
    student = wrapper(copy.deepcopy(_built(arch))).train()
    teacher = copy.deepcopy(student).requires_grad_(False)
    return student, teacher


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (2, SIZE // 8, SIZE // 8), generator=g)
    label = label.repeat_interleave(8, 1).repeat_interleave(8, 2)
    label[0, 8:24, 8:24] = 13  # a car block: thing cells at the backbone's stride
    label[:, :3] = 255
    return {
        "source_image": torch.rand(2, 3, SIZE, SIZE, generator=g) * 255 - 115,
        "source_label": label,
        "target_image": torch.rand(2, 3, SIZE, SIZE, generator=g) * 255 - 115,
        "source_depth": 1.0 + 10 * torch.rand(2, SIZE, SIZE, generator=g),
        "target_depth": 1.0 + 10 * torch.rand(2, SIZE, SIZE, generator=g),
    }


def run_step(cfg: AdaptationConfig, arch: str = "corda", seed: int = 3, wrapper=WithEncode, calls=None, **kwargs):
    student, teacher = networks(arch, wrapper)
    if cfg.feature_distance_weight and "feature_reference" not in kwargs:
        kwargs["feature_reference"] = frozen_reference(student)
    if calls is not None:  # counts the student's backbone passes
        student.net.backbone.register_forward_hook(lambda module, args, out: calls.append(1))
    return adaptation_step(student, teacher, make_batch(), cfg, 0, torch.Generator().manual_seed(seed),
                           with_visuals=True, **kwargs)


@pytest.mark.parametrize("wrapper", [WithEncode, WithPredictAndEncode])
@pytest.mark.parametrize(("arch", "method"), [("corda", "corda"), ("deeplab", "dacs"), ("deeplab", "source_only")])
def test_feature_distance_joins_the_source_loss(arch, method, wrapper):
    plain_calls, fd_calls = [], []
    plain = run_step(AdaptationConfig(method=method), arch, wrapper=wrapper, calls=plain_calls)
    with_fd = run_step(AdaptationConfig(method=method, feature_distance_weight=0.005), arch, wrapper=wrapper,
                       calls=fd_calls)
    # With predict_and_encode the source pass gives the features; with encode alone it is one more pass.
    assert len(fd_calls) == len(plain_calls) + (wrapper is WithEncode)
    fd = with_fd.terms["feature_distance"]
    assert fd.item() > 0  # train-mode student against the eval-mode copy: the features differ
    assert with_fd.terms["source_loss"].item() == pytest.approx(plain.terms["source_loss"].item() + 0.005 * fd.item(),
                                                                rel=1e-6)
    assert with_fd.loss.item() == pytest.approx(plain.loss.item() + 0.005 * fd.item(), rel=1e-6)
    with pytest.raises(CordasegError, match="feature_reference"):
        run_step(AdaptationConfig(method=method, feature_distance_weight=0.005), arch, wrapper=wrapper,
                 feature_reference=None)


def test_row_crop_in_the_step_weights_only_target_pixels():
    out = run_step(AdaptationConfig(method="dacs", pseudo_label_ignore_top=3, pseudo_label_ignore_bottom=5), "deeplab")
    weight, pasted = out.visuals["pixel_weight"], out.visuals["mix_mask"].bool()
    rows = torch.zeros(SIZE, dtype=torch.bool)
    rows[:3] = rows[-5:] = True
    cropped = rows.view(1, SIZE, 1).expand_as(weight)
    assert weight[cropped & ~pasted].eq(0).all() and weight[cropped & pasted].eq(1).all()
    fraction = out.terms["confidence_fraction"]
    assert torch.allclose(weight[~cropped & ~pasted], fraction.expand_as(weight[~cropped & ~pasted]))


def test_mic_in_the_step_draws_after_the_step_and_only_from_its_generator():
    # Threshold 0: every pseudo-label counts, so the masked-image loss is not 0.
    cfg = AdaptationConfig(method="corda", mic=MicConfig(enabled=True, patch=8), pseudo_label_ignore_top=2,
                           confidence_threshold=0.0)
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002
    first = run_step(cfg)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])  # noqa: NPY002
    again = run_step(cfg)
    assert torch.equal(first.loss, again.loss) and torch.equal(first.visuals["mic_image"], again.visuals["mic_image"])
    for name in ("mic_ce", "mic_ce_initial", "mic_loss"):
        assert name in first.terms
    plain = run_step(AdaptationConfig(method="corda", pseudo_label_ignore_top=2, confidence_threshold=0.0))
    # The step's own draws come first, so the mixed image is the one without MIC.
    assert torch.equal(first.visuals["mixed_image"], plain.visuals["mixed_image"])
    assert first.loss.item() == pytest.approx(plain.loss.item() + first.terms["mic_loss"].item(), rel=1e-5)
    # Masked patches of the (augmented) target are exactly 0; the rest is the augmented image.
    masked = first.visuals["mic_image"]
    blocks = masked.abs().amax(dim=1).view(2, SIZE // 8, 8, SIZE // 8, 8).amax(dim=(2, 4))
    assert (blocks == 0).any() and (blocks > 0).any()
    first.loss.backward()


def test_mic_weight_scales_its_term():
    one = run_step(AdaptationConfig(method="dacs", mic=MicConfig(enabled=True, patch=8), confidence_threshold=0.0),
                   "deeplab")
    half = run_step(AdaptationConfig(method="dacs", mic=MicConfig(enabled=True, patch=8, weight=0.5),
                                     confidence_threshold=0.0), "deeplab")
    assert torch.equal(one.terms["mic_loss"], half.terms["mic_loss"])
    difference = one.loss.item() - half.loss.item()
    assert difference == pytest.approx(0.5 * one.terms["mic_loss"].item(), rel=1e-5)
    assert one.terms["mic_loss"].item() > 0
