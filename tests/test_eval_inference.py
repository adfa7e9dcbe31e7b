"""Sliding-window inference and multi-scale + flip TTA on model callables."""

from __future__ import annotations

import pytest
import torch

from cordaseg.config import ConfigError
from cordaseg.evaluation.inference import (
    InferenceConfig,
    _window_starts,
    infer,
    model_callable,
    sliding_window,
)
from cordaseg.models.output import upsample


def pointwise_fn(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """A per-pixel 'network' at full resolution: any crop of it equals the crop of the whole."""
    weight = torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10
    semantic = torch.einsum("kc,bchw->bkhw", weight, image)
    return {"semantic": semantic, "depth": image.mean(1, keepdim=True).exp()}


def column_ramp_fn(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output = column index: not flip-equivariant, so flip TTA must un-flip it."""
    b, _, h, w = image.shape
    ramp = torch.arange(w, dtype=torch.float32).expand(b, 1, h, w)
    return {"semantic": ramp.clone()}


def test_window_starts_cover_the_whole_length_and_end_aligned():
    assert _window_starts(10, 4, 3) == [0, 3, 6]
    assert _window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert _window_starts(3, 4, 3) == [0]
    for length, window, stride in [(37, 8, 5), (64, 16, 16), (100, 33, 7)]:
        covered = torch.zeros(length, dtype=torch.bool)
        for start in _window_starts(length, window, stride):
            assert start + window <= length
            covered[start : start + window] = True
        assert covered.all()


def test_sliding_window_of_pointwise_function_equals_whole_image():
    image = torch.randn(2, 3, 37, 50, generator=torch.Generator().manual_seed(0))
    whole = pointwise_fn(image)
    windowed = sliding_window(pointwise_fn, image, window=(20, 16), stride=(11, 9))  # (W, H)
    assert set(windowed) == {"semantic", "depth"}
    for name in whole:
        torch.testing.assert_close(windowed[name], whole[name])


def test_flip_tta_unflips_each_pass():
    image = torch.zeros(1, 3, 6, 9)
    plain = infer(column_ramp_fn, image, InferenceConfig(), out_size=(6, 9))["semantic"]
    flipped = infer(column_ramp_fn, image, InferenceConfig(flip=True), out_size=(6, 9))["semantic"]
    torch.testing.assert_close(plain, column_ramp_fn(image)["semantic"])
    # The ramp of the flipped input, flipped back, is the mirrored ramp; averaged with the
    # plain ramp it is the constant (w - 1) / 2. Without the un-flip it would be the ramp again.
    torch.testing.assert_close(flipped, torch.full_like(flipped, 4.0))


def test_multiscale_flip_and_window_of_pointwise_function_on_constant_image():
    image = torch.full((1, 3, 24, 32), 0.5)
    config = InferenceConfig(scales=(0.5, 1.0, 1.5), flip=True, sliding_window=True, window=(16, 16), stride=(8, 8))
    out = infer(pointwise_fn, image, config, out_size=(48, 64))
    expected = upsample(pointwise_fn(image)["semantic"], (48, 64))
    assert out["semantic"].shape == (1, 4, 48, 64)
    torch.testing.assert_close(out["semantic"], expected)


def test_plain_inference_upsamples_low_resolution_outputs_directly():
    low = torch.randn(1, 2, 5, 7)
    out = infer(lambda image: {"semantic": low}, torch.zeros(1, 3, 40, 56), InferenceConfig(), out_size=(80, 112))
    torch.testing.assert_close(out["semantic"], torch.nn.functional.interpolate(
        low, size=(80, 112), mode="bilinear", align_corners=True))


def test_bad_inference_config_is_a_config_error():
    with pytest.raises(ConfigError, match="stride"):
        InferenceConfig(window=(8, 8), stride=(9, 4))
    with pytest.raises(ConfigError, match="scales"):
        InferenceConfig(scales=(0.0,))


def test_model_callable_on_tiny_corda_network_fp32_and_bf16():
    from cordaseg.models.corda import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone_depth=18, head_width=32, backbone_width=16)).eval()
    image = torch.randn(1, 3, 64, 64)
    outputs = model_callable(model, "fp32")(image)
    assert outputs["semantic"].shape[:2] == (1, 19) and outputs["semantic"].dtype == torch.float32
    assert {"depth", "depth_source"} <= set(outputs)
    low = model_callable(model, "bf16", heads=("semantic",))(image)
    assert set(low) == {"semantic"} and low["semantic"].dtype == torch.float32
    full = infer(model_callable(model), image, InferenceConfig(flip=True), out_size=(128, 128))
    assert full["semantic"].shape == (1, 19, 128, 128) and full["depth"].shape == (1, 1, 128, 128)


def test_sliding_window_sizes_are_width_by_height():
    shapes = []

    def recording_fn(crop: torch.Tensor) -> dict[str, torch.Tensor]:
        shapes.append(tuple(crop.shape[-2:]))
        return pointwise_fn(crop)

    sliding_window(recording_fn, torch.zeros(1, 3, 30, 50), window=(20, 16), stride=(20, 14))
    assert set(shapes) == {(16, 20)}
    assert len(shapes) == 3 * 2  # columns 0, 20, 30; rows 0, 14
