"""One-step resize-and-crop equals resizing the whole frame then cropping, for every filter and
both resizing libraries; the figures of the image shortcut; the depth resize of the reference."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cordaseg.data import formats, transforms
from cordaseg.data.labels import NUM_CLASSES, PALETTE, PROTOCOLS, colorize

REPO = Path(__file__).resolve().parents[1]


def _pil_resize(array, size, resample):
    return np.asarray(Image.fromarray(array).resize(size, transforms.RESAMPLE[resample]))


def _opencv_resize(array, size, resample):
    return cv2.resize(array, size, interpolation=transforms.CV2_INTERPOLATION[resample])


def _full_then_crop(array, geometry, resample, fill, resize=_pil_resize):
    full = resize(array, geometry.target_size, resample)
    x0, y0, w, h = geometry.window
    out = np.full((h, w, *array.shape[2:]), fill, dtype=array.dtype)
    tx0, ty0 = max(x0, 0), max(y0, 0)
    tx1, ty1 = min(x0 + w, full.shape[1]), min(y0 + h, full.shape[0])
    out[ty0 - y0: ty1 - y0, tx0 - x0: tx1 - x0] = full[ty0:ty1, tx0:tx1]
    return out[:, ::-1] if geometry.flip else out


@settings(max_examples=60, deadline=None)
@given(
    source=st.tuples(st.integers(5, 90), st.integers(5, 90)),
    target=st.tuples(st.integers(5, 120), st.integers(5, 120)),
    crop=st.tuples(st.integers(1, 70), st.integers(1, 70)),
    flip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_geometry_matches_full_resize_then_crop(source, target, crop, flip, seed):
    rng = np.random.default_rng(seed)
    geometry = transforms.sample_geometry(rng, source, target, crop, flip=flip)
    labels = rng.integers(0, 30, source[::-1], dtype=np.uint8)
    np.testing.assert_array_equal(
        transforms.apply_geometry(labels, geometry, "nearest", 255),
        _full_then_crop(labels, geometry, "nearest", 255))
    depth = rng.uniform(1.0, 100.0, source[::-1]).astype(np.float32)
    np.testing.assert_allclose(
        transforms.apply_geometry(depth, geometry, "bilinear", 1.0),
        _full_then_crop(depth, geometry, "bilinear", 1.0), rtol=1e-4)
    # 8-bit bicubic: mid-range values, so the filter's overshoot is never clipped between PIL's
    # two fixed-point passes (on clipped noise even PIL's own box-resize drifts by a few levels).
    image = rng.integers(60, 190, (*source[::-1], 3), dtype=np.uint8)
    got = transforms.apply_geometry(image, geometry, "bicubic", 0).astype(int)
    assert np.abs(got - _full_then_crop(image, geometry, "bicubic", 0)).max() <= 1


@settings(max_examples=40, deadline=None)
@given(
    source=st.tuples(st.integers(5, 90), st.integers(5, 90)),
    target=st.tuples(st.integers(5, 120), st.integers(5, 120)),
    crop=st.tuples(st.integers(1, 70), st.integers(1, 70)),
    flip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_opencv_backend_is_exactly_opencv_full_resize_then_crop(source, target, crop, flip, seed):
    rng = np.random.default_rng(seed)
    geometry = transforms.sample_geometry(rng, source, target, crop, flip=flip)
    depth = rng.uniform(1.0, 100.0, source[::-1]).astype(np.float32)
    for resample in ("bilinear", "nearest"):
        got = transforms.apply_geometry(depth, geometry, resample, 1.0, backend="opencv")
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, _full_then_crop(depth, geometry, resample, 1.0, _opencv_resize))


def _noisy_raw_depth(rng, size, invalid_value):
    """(H, W) uint16 noise with 5% of the pixels and 40x40 blocks on a 200-pixel grid at the file
    value that decodes to exactly 1.0 (bilinear keeps 1.0 only inside a block)."""
    raw = rng.integers(0, 65536, size[::-1], dtype=np.uint16)
    rows, cols = np.indices(raw.shape)
    raw[(rng.random(raw.shape) < 0.05) | ((rows % 200 < 40) & (cols % 200 < 40))] = invalid_value
    return raw


@pytest.mark.parametrize(("source", "resample", "decode", "invalid_value"), [
    ((1914, 1052), "bilinear", formats.decode_gta_disparity, 0),  # GTA5 disparity
    ((1280, 760), "nearest", formats.decode_synthia_depth, 65535),  # SYNTHIA centimetres
])
def test_depth_of_the_reference_frame_sizes_equals_cv2_resize_then_crop(source, resample, decode, invalid_value):
    rng = np.random.default_rng(3)
    raw = _noisy_raw_depth(rng, source, invalid_value)
    full = _opencv_resize(decode(raw), (1280, 720), resample)
    for flip in (False, True):
        geometry = transforms.sample_geometry(rng, source, (1280, 720), (512, 512), flip=flip)
        x0, y0, w, h = geometry.window
        expected = full[y0:y0 + h, x0:x0 + w]
        expected = expected[:, ::-1] if flip else expected
        got = transforms.apply_geometry(raw, geometry, resample, 1.0, convert=decode, backend="opencv")
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
        assert (got == 1.0).any()
        # PIL's filters give other targets and other exactly-invalid pixels: why depth uses OpenCV.
        pil = transforms.apply_geometry(raw, geometry, resample, 1.0, convert=decode, backend="pil")
        assert np.abs(pil - got).max() > 10.0 and not np.array_equal(pil == 1.0, got == 1.0)


def test_pil_and_opencv_nearest_pick_other_rows_for_half_of_synthia_rows():
    rows = np.arange(760, dtype=np.float32)[:, None].repeat(2, axis=1)  # (760, 2): each pixel = its row
    opencv_rows = _opencv_resize(rows, (2, 720), "nearest")[:, 0].astype(int)
    pil_rows = _pil_resize(rows, (2, 720), "nearest")[:, 0].astype(int)
    assert (opencv_rows != pil_rows).sum() == 360
    np.testing.assert_array_equal(pil_rows, transforms._nearest_indices(760, 720))


def test_image_shortcut_figures_of_the_measurement_script():
    """The measurement quoted in the transforms module docstring, on one frame per format: labels
    are exact, 8-bit bicubic images differ by at most one level on a small fraction of values."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "resize_parity.py"), "--frames", "1",
                             "--crops", "2"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {(r["format"], r["what"]): r for r in map(json.loads, result.stdout.splitlines())}
    for fmt in ("gta5", "synthia"):
        assert lines[fmt, "label_shortcut"]["differing_values"] == 0
        image = lines[fmt, "image_shortcut"]
        assert image["max_abs_difference"] <= 1 and image["differing_percent"] < 0.1
        assert lines[fmt, "depth_opencv"]["differing_values"] == 0
        assert lines[fmt, "depth_pil_vs_opencv"]["max_abs_difference"] > 1.0


def test_convert_runs_on_the_region_only_and_equals_full_conversion():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65536, (300, 500), dtype=np.uint16)
    geometry = transforms.sample_geometry(rng, (500, 300), (320, 180), (64, 48))
    seen = []

    def decode(values):
        seen.append(values.shape)
        return (values.astype(np.float32) / 256 + 1).astype(np.float32)

    region = transforms.apply_geometry(raw, geometry, "bilinear", 1.0, convert=decode)
    np.testing.assert_allclose(region, transforms.apply_geometry(decode(raw), geometry, "bilinear", 1.0), rtol=1e-6)
    assert seen[0][0] * seen[0][1] < raw.size / 4


def test_partner_of_another_size_is_resampled_from_its_own_size():
    geometry = transforms.sample_geometry(np.random.default_rng(1), (64, 32), (128, 64), (32, 32))
    smaller = np.arange(16 * 32, dtype=np.float32).reshape(16, 32)
    out = transforms.apply_geometry(smaller, geometry, "nearest", 1.0)
    assert out.shape == (32, 32) and set(np.unique(out)) <= set(smaller.ravel())


def test_sample_geometry_scale_range_and_flip_draws():
    rng = np.random.default_rng(2)
    draws = [transforms.sample_geometry(rng, (100, 50), (200, 100), (40, 40), (0.5, 2.0), True)
             for _ in range(200)]
    widths = [g.target_size[0] for g in draws]
    assert 100 <= min(widths) < 130 and 370 < max(widths) <= 400
    assert 60 < sum(g.flip for g in draws) < 140
    assert all(0 <= g.window[0] <= g.target_size[0] - 40 for g in draws if g.target_size[0] >= 40)
    assert transforms.resized_size((2048, 1024), None, 0.5) == (1024, 512)
    assert transforms.resized_size((1914, 1052), (1280, 720), None) == (1280, 720)


def test_protocols_names_and_palette():
    assert len(PROTOCOLS[19]) == 19 and len(PROTOCOLS[16]) == 16 and len(PROTOCOLS[13]) == 13
    assert set(PROTOCOLS[19]) - set(PROTOCOLS[16]) == {9, 14, 16}  # terrain, truck, train
    assert set(PROTOCOLS[16]) - set(PROTOCOLS[13]) == {3, 4, 5}  # wall, fence, pole
    ids = np.array([[0, 18, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(colorize(ids), [[PALETTE[0], PALETTE[18], (0, 0, 0)]])
    assert PALETTE.shape == (NUM_CLASSES, 3)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), dtype=np.int32), np.zeros((4, 4, 3), dtype=np.float32)])
def test_unsupported_arrays_are_refused(bad):
    geometry = transforms.sample_geometry(np.random.default_rng(0), (4, 4), (8, 8), (4, 4))
    with pytest.raises(ValueError, match="cannot resample"):
        transforms.apply_geometry(bad, geometry, "bilinear", 0)
