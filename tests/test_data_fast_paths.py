"""The loader's fast paths give exactly the values of the plain computations they replace: OpenCV
image decoding vs PIL, float32 disparity arithmetic vs the float64 formula, conversion of only
the pixels a nearest resize picks, the one-pass normalisation; and the allocator setting that
removes page faults from loading (src/cordaseg/data/memory.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cordaseg.data import datasets, formats, memory, transforms
from cordaseg.data.labels import CITYSCAPES_ID_TO_TRAIN
from cordaseg.data.normalization import CAFFE_MEAN_BGR


@pytest.mark.parametrize("writer", ["opencv", "pil"])
def test_opencv_image_decoding_equals_pil(tmp_path, writer):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    rgb[:, :20] = (10, 200, 30)  # flat areas too, which the PNG filters code differently from noise
    path = tmp_path / "image.png"
    if writer == "opencv":
        formats.write_rgb_png(path, rgb)
    else:
        Image.fromarray(rgb).save(path)
    bgr = formats.read_image_bgr(path)
    with Image.open(path) as image:
        np.testing.assert_array_equal(bgr, np.asarray(image.convert("RGB"))[..., ::-1])
    np.testing.assert_array_equal(formats.read_image_rgb(path), rgb)


def test_disparity_decoding_is_the_float64_formula_for_every_value():
    raw = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = (raw.astype(np.float64) / 256.0 + 1.0).astype(np.float32)
    for decode in (formats.decode_gta_disparity, formats.decode_mono_disparity):
        decoded = decode(raw)
        assert decoded.dtype == np.float32
        np.testing.assert_array_equal(decoded, expected)
        np.testing.assert_array_equal(decode(raw[3:200:2, ::-3]), expected[3:200:2, ::-3])  # strided views
    assert formats.decode_gta_disparity(np.zeros((1, 1), np.uint16))[0, 0] == formats.INVALID_DEPTH


@pytest.mark.parametrize(("source", "target", "crop", "flip"), [
    ((2048, 1024), (1024, 512), (512, 512), False),  # Cityscapes: half size
    ((1280, 760), (1280, 720), (512, 512), True),  # SYNTHIA rows
    ((60, 40), (30, 20), (50, 30), False),  # crop larger than the frame: padding
])
def test_nearest_converts_only_the_picked_pixels_and_equals_full_conversion(source, target, crop, flip):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 34, source[::-1], dtype=np.uint8)
    depth_m = rng.uniform(-1.0, 120.0, source[::-1])
    depth_m[rng.random(depth_m.shape) < 0.05] = np.nan
    geometry = transforms.sample_geometry(rng, source, target, crop, flip=flip)
    seen = []

    def lookup(values):
        seen.append(values.size)
        return CITYSCAPES_ID_TO_TRAIN[values]

    np.testing.assert_array_equal(
        transforms.apply_geometry(ids, geometry, "nearest", 255, convert=lookup),
        transforms.apply_geometry(CITYSCAPES_ID_TO_TRAIN[ids], geometry, "nearest", 255))
    assert seen[0] <= crop[0] * crop[1]
    np.testing.assert_array_equal(
        transforms.apply_geometry(depth_m, geometry, "nearest", 1.0, convert=formats.decode_stereo_depth),
        transforms.apply_geometry(formats.decode_stereo_depth(depth_m), geometry, "nearest", 1.0))


@pytest.mark.parametrize("source", [(1280, 760), (700, 300)])
def test_opencv_nearest_converts_only_the_crop_and_equals_full_conversion(source):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 65536, source[::-1], dtype=np.uint16)
    channels = np.stack([raw, raw, raw], axis=2)  # SYNTHIA depth: R of a 3-channel file, a strided view
    geometry = transforms.sample_geometry(rng, source, (1280, 720), (512, 512), flip=True)
    seen = []

    def decode(values):
        seen.append(values.size)
        return formats.decode_synthia_depth(values)

    got = transforms.apply_geometry(channels[..., 2], geometry, "nearest", 1.0, convert=decode, backend="opencv")
    np.testing.assert_array_equal(got, transforms.apply_geometry(
        formats.decode_synthia_depth(raw), geometry, "nearest", 1.0, backend="opencv"))
    assert seen == [512 * 512]  # the crop only, not the frame


def test_one_pass_normalisation_equals_float32_subtraction():
    image_bgr = np.random.default_rng(2).integers(0, 256, (31, 17, 3), dtype=np.uint8)
    expected = (image_bgr.astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)).transpose(2, 0, 1)
    normalised = datasets._normalize_bgr(image_bgr, CAFFE_MEAN_BGR)
    assert normalised.dtype.is_floating_point and normalised.is_contiguous()
    np.testing.assert_array_equal(normalised.numpy(), expected)


def test_allocator_setting_is_made_once_and_yields_to_the_environment(monkeypatch):
    first = memory.keep_freed_memory()
    assert isinstance(first, bool) and memory.keep_freed_memory() is first
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert memory.keep_freed_memory() is False
