"""The adaptation step as a function (docs/method.md, "Training step"): variants, methods, randomness, no host reads."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from cordaseg.adaptation import AdaptationConfig, adaptation_step
from cordaseg.errors import CordasegError, DataError
from cordaseg.models.corda import ModelConfig, build_model
from cordaseg.models.output import CordaOutput

SIZE = 32


@functools.cache
def _built(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, backbone_depth=18, head_width=32, backbone_width=16))


def tiny(arch: str = "corda") -> tuple[nn.Module, nn.Module]:
    """A fresh (student, teacher) pair of the tiny model (built once per variant, then copied)."""
    student = copy.deepcopy(_built(arch)).train()
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def make_batch(n_images: int = 2, seed: int = 0, with_depth: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (n_images, SIZE // 8, SIZE // 8), generator=g)
    label = label.repeat_interleave(8, 1).repeat_interleave(8, 2)  # (B, SIZE, SIZE), blocky classes
    label[:, :3] = 255
    batch = {
        "source_image": torch.rand(n_images, 3, SIZE, SIZE, generator=g) * 255 - 115,
        "source_label": label,
        "target_image": torch.rand(n_images, 3, SIZE, SIZE, generator=g) * 255 - 115,
    }
    if with_depth:
        batch["source_depth"] = 1.0 + 10 * torch.rand(n_images, SIZE, SIZE, generator=g)
        batch["target_depth"] = 1.0 + 10 * torch.rand(n_images, SIZE, SIZE, generator=g)
        batch["target_depth"][:, :, :4] = 1.0  # invalid
    return batch


CASES = [
    ("corda", "corda", {"source_depth", "source_depth_initial", "target_depth", "target_depth_initial",
                        "depth_weight_mean", "source_ce_initial", "target_ce_initial"}),
    ("corda", "dacs", {"source_ce_initial", "target_ce_initial"}),
    ("multitask", "corda", {"source_depth", "target_depth"}),  # simple auxiliary depth: no depth weighting
    ("reference_noatt", "corda", {"source_depth", "target_depth"}),
    ("deeplab", "dacs", set()),
    ("deeplab", "source_only", set()),
]


@pytest.mark.parametrize(("arch", "method", "extra_terms"), CASES)
def test_step_runs_for_each_variant_and_method(arch, method, extra_terms):
    student, teacher = tiny(arch)
    cfg = AdaptationConfig(method=method)
    out = adaptation_step(student, teacher, make_batch(with_depth=method == "corda"), cfg, 3,
                          torch.Generator().manual_seed(0))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and out.loss.requires_grad
    base = {"loss", "source_loss", "source_ce"}
    if method != "source_only":
        base |= {"target_loss", "target_ce", "confidence_fraction"}
    assert set(out.terms) == base | extra_terms
    assert all(t.dim() == 0 and not t.requires_grad and torch.isfinite(t) for t in out.terms.values())
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    if method == "corda" and arch == "corda":
        expected = out.terms["source_ce"] + out.terms["source_ce_initial"] + 0.01 * (
            out.terms["source_depth"] + out.terms["source_depth_initial"]
        )
        torch.testing.assert_close(out.terms["source_loss"], expected)
        torch.testing.assert_close(out.terms["loss"], out.terms["source_loss"] + out.terms["target_loss"])


def test_visuals_have_crop_shapes_and_weights():
    student, teacher = tiny()
    out = adaptation_step(student, teacher, make_batch(), AdaptationConfig(), 3, torch.Generator().manual_seed(0),
                          with_visuals=True)
    v = out.visuals
    assert v["mixed_image"].shape == (2, 3, SIZE, SIZE)
    for name in ("mixed_label", "pseudo_label", "pixel_weight", "depth_weight", "predictions", "mix_mask"):
        assert v[name].shape == (2, SIZE, SIZE), name
        assert not v[name].requires_grad
    assert v["depth_weight"].min() >= 1e-3 and v["depth_weight"].max() <= 1.0
    assert (v["pixel_weight"] >= 0).all()
    pasted = v["mix_mask"] == 1
    assert torch.equal(v["mixed_label"][~pasted], v["pseudo_label"][~pasted])
    no_visuals = adaptation_step(student, teacher, make_batch(), AdaptationConfig(), 3, torch.Generator())
    assert no_visuals.visuals == {}


def test_without_depth_weighting_the_pixel_weight_is_the_confidence_weight():
    student, teacher = tiny()
    cfg = AdaptationConfig(depth_weighting=False, confidence_threshold=0.0)  # every pixel confident: q = 1
    out = adaptation_step(student, teacher, make_batch(), cfg, 3, torch.Generator().manual_seed(0),
                          with_visuals=True)
    assert "depth_weight_mean" not in out.terms and "depth_weight" not in out.visuals
    assert out.terms["confidence_fraction"].item() == 1.0
    assert out.visuals["pixel_weight"].eq(1.0).all()


class HeadProbe(nn.Module):
    """A fake teacher whose final head says class 1 and initial head says class 2 everywhere."""

    def forward(self, x: torch.Tensor) -> CordaOutput:
        b, _, h, w = x.shape
        semantic = torch.zeros(b, 19, h // 8 + 1, w // 8 + 1)
        semantic_initial = semantic.clone()
        semantic[:, 1] = 10.0
        semantic_initial[:, 2] = 10.0
        return CordaOutput(semantic=semantic, semantic_initial=semantic_initial)


@pytest.mark.parametrize(("iteration", "until", "expected"), [(0, 25001, 2), (25000, 25001, 2),
                                                              (25001, 25001, 1), (0, 0, 1)])
def test_pseudo_labels_come_from_the_initial_head_early_in_the_gta_recipe(iteration, until, expected):
    student, _ = tiny()
    cfg = AdaptationConfig(initial_head_until=until)
    out = adaptation_step(student, HeadProbe(), make_batch(), cfg, iteration, torch.Generator().manual_seed(0),
                          with_visuals=True)
    assert out.visuals["pseudo_label"].eq(expected).all()


def test_randomness_comes_only_from_the_generator():
    student, teacher = tiny()
    batch, cfg = make_batch(), AdaptationConfig()

    def run(seed):
        torch.manual_seed(1000 + seed)  # the global RNG must not matter
        return adaptation_step(copy.deepcopy(student), copy.deepcopy(teacher), batch, cfg, 3,
                               torch.Generator().manual_seed(seed), with_visuals=True)

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first.loss, again.loss)
    assert torch.equal(first.visuals["mixed_image"], again.visuals["mixed_image"])
    assert not torch.equal(first.visuals["mixed_image"], other.visuals["mixed_image"])


def test_step_reads_no_tensor_on_the_host(monkeypatch):
    """No .item(), bool(), float(), .tolist() inside the step: on a GPU each would be a sync."""
    student, teacher = tiny()
    batch = make_batch()

    def forbidden(*args, **kwargs):
        raise AssertionError("the adaptation step read a tensor value on the host")

    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    out = adaptation_step(student, teacher, batch, AdaptationConfig(), 3, torch.Generator().manual_seed(0),
                          with_visuals=True)
    monkeypatch.undo()
    assert torch.isfinite(out.loss)


def test_merged_student_pass_calls_the_student_once_on_both_batches():
    student, teacher = tiny()
    sizes = []
    student.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    cfg = AdaptationConfig(merged_student_pass=True)
    out = adaptation_step(student, teacher, make_batch(), cfg, 3, torch.Generator().manual_seed(0))
    assert sizes == [4]
    assert torch.isfinite(out.loss)
    sizes.clear()
    adaptation_step(student, teacher, make_batch(), AdaptationConfig(), 3, torch.Generator().manual_seed(0))
    assert sizes == [2, 2]  # reference: separate source and mixed passes


def test_labels_outside_the_classes_are_ignored():
    student, teacher = tiny()
    batch = make_batch()
    batch["source_label"][:, -6:] = 250  # e.g. a void ID left unmapped
    out = adaptation_step(student, teacher, batch, AdaptationConfig(), 3, torch.Generator().manual_seed(0),
                          with_visuals=True)
    assert torch.isfinite(out.loss)
    assert not ((out.visuals["mixed_label"] >= 19) & (out.visuals["mixed_label"] != 255)).any()


def test_corda_with_a_model_without_depth_is_an_error_naming_dacs():
    student, teacher = tiny("deeplab")
    with pytest.raises(CordasegError, match="dacs"):
        adaptation_step(student, teacher, make_batch(), AdaptationConfig(), 3, torch.Generator())


def test_missing_depth_in_the_batch_is_a_data_error_naming_the_key():
    student, teacher = tiny()
    batch = make_batch()
    del batch["target_depth"]
    with pytest.raises(DataError, match="target_depth"):
        adaptation_step(student, teacher, batch, AdaptationConfig(), 3, torch.Generator())
    # DACS does not need depth at all
    out = adaptation_step(student, teacher, batch, AdaptationConfig(method="dacs"), 3, torch.Generator())
    assert torch.isfinite(out.loss)


class ConvNet(nn.Module):
    """A one-convolution stand-in with all six outputs at 1/8 resolution (fast in bf16 on CPU)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 19 * 2 + 4, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> CordaOutput:
        y = self.conv(x / 100)
        s, s0, d, d0, ds, ds0 = y.split([19, 19, 1, 1, 1, 1], dim=1)
        return CordaOutput(s, s0, 1 + d.exp(), 1 + d0.exp(), 1 + ds.exp(), 1 + ds0.exp())


def test_step_under_bf16_autocast_keeps_losses_and_mixing_in_float32():
    torch.manual_seed(0)
    student = ConvNet()
    teacher = copy.deepcopy(student)
    batch = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = adaptation_step(student, teacher, batch, AdaptationConfig(), 3, torch.Generator().manual_seed(0),
                              with_visuals=True)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(t.dtype == torch.float32 for t in out.terms.values())
    assert out.visuals["mixed_image"].dtype == torch.float32
    reference = adaptation_step(student, teacher, batch, AdaptationConfig(), 3, torch.Generator().manual_seed(0),
                                with_visuals=True)
    torch.testing.assert_close(out.visuals["mixed_image"], reference.visuals["mixed_image"])
    out.loss.backward()
    assert student.conv.weight.grad.dtype == torch.float32 and torch.isfinite(student.conv.weight.grad).all()
