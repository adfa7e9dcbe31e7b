"""Aligning relative disparity with a known camera height: the road's inverse depth per row, the
robust fit of scale and shift to it, and the export of a Cityscapes tree with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cordaseg.data import formats
from cordaseg.data.synth import generate_tree
from cordaseg.depth.align import (
    GroundCamera,
    fit_ground_scale_shift,
    ground_region,
    ground_samples,
)
from cordaseg.depth.export import (
    export_jobs,
    frame_ground_alignment,
    read_ground_camera,
    run_export,
)
from cordaseg.errors import CordasegError, DataError
from cordaseg.world.render import Camera

SCALE, SHIFT = 0.0137, 0.0042  # 1/Z = SCALE * p + SHIFT


def _road_depth(shape, fy, v0, height_m, pitch):
    """(H, W) depth of a flat road by casting every pixel's ray with the world's camera (NaN where a
    ray misses the road): an implementation independent of GroundCamera."""
    h, w = shape
    camera = Camera(w, h, fy, fy, (w - 1) / 2.0, v0, (0.0, height_m, 0.0), pitch)
    up = camera.ray_directions()[..., 1]  # world y (up) per unit depth
    with np.errstate(divide="ignore"):
        return np.where(up < 0, -height_m / up, np.nan)


def _synthetic_disparity(depth, rng, scale=SCALE, shift=SHIFT):
    """Disparity that is exactly (1/Z - shift) / scale on the road, arbitrary above the horizon."""
    return np.where(np.isfinite(depth), (1.0 / depth - shift) / scale, rng.uniform(-5.0, 50.0, size=depth.shape))


@pytest.mark.parametrize("pitch", [0.0, 0.04])
def test_road_inverse_depth_matches_ray_casting(pitch):
    shape, fy, v0, height_m = (96, 128), 110.0, 44.3, 1.22
    depth = _road_depth(shape, fy, v0, height_m, pitch)
    inverse = GroundCamera(fy, v0, height_m, pitch).inverse_depth(shape[0])
    road = np.isfinite(depth[:, 0])
    np.testing.assert_allclose(inverse[road], 1.0 / depth[road, 0], rtol=1e-12)
    assert np.all(inverse[~road] <= 1e-12)  # at and above the horizon
    if pitch == 0.0:  # Z = fy * h / (v - v0)
        v = np.arange(shape[0])[road]
        np.testing.assert_allclose(1.0 / inverse[road], fy * height_m / (v - v0), rtol=1e-12)


def test_intrinsics_are_rescaled_to_the_image_they_are_used_with():
    full = GroundCamera(fy=2262.5, v0=513.5, height_m=1.22, pitch=0.038, rows=1024)
    half = full.at_rows(256)
    assert half == pytest.approx((2262.5 / 4, (513.5 + 0.5) / 4 - 0.5))
    # Row r of the quarter-size image covers full-size rows 4r .. 4r + 3: its centre is 4r + 1.5,
    # and the road's inverse depth is linear in the row.
    full_rows = full.inverse_depth(1024)
    np.testing.assert_allclose(full.inverse_depth(256), np.interp(4 * np.arange(256) + 1.5, np.arange(1024), full_rows),
                               rtol=1e-12, atol=1e-15)
    assert GroundCamera(100.0, 40.0, 1.2).at_rows(77) == (100.0, 40.0)  # no reference size: as given


def test_ground_region_is_the_lower_middle():
    rows, cols = ground_region((100, 200))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (75, 100, 50, 150)
    rows, cols = ground_region((100, 200), band=0.3, margin=0.2)
    assert (rows.start, rows.stop) == (50, 80)
    for band, margin in ((0.0, 0.0), (0.8, 0.3), (0.2, -0.1)):
        with pytest.raises(ValueError):
            ground_region((100, 200), band, margin)


@pytest.mark.parametrize("pitch", [0.0, 0.04])
def test_camera_height_fit_recovers_scale_and_shift(pitch):
    rng = np.random.default_rng(1)
    shape, fy, v0, height_m = (120, 160), 140.0, 55.0, 1.22
    disparity = _synthetic_disparity(_road_depth(shape, fy, v0, height_m, pitch), rng)
    camera = GroundCamera(fy, v0, height_m, pitch)
    samples = ground_samples(disparity, camera)
    assert samples[0].shape == (30, 80) and samples[1].shape == (30,)
    scale, shift = fit_ground_scale_shift([samples])
    assert scale == pytest.approx(SCALE, abs=1e-4) and shift == pytest.approx(SHIFT, abs=1e-4)
    alignment = frame_ground_alignment(disparity, camera)
    assert alignment is not None and alignment.kind == "disparity"
    assert (alignment.scale, alignment.shift) == pytest.approx((SCALE, SHIFT), abs=1e-4)
    road = np.isfinite(_road_depth(shape, fy, v0, height_m, pitch))
    np.testing.assert_allclose(alignment.depth_m(disparity)[road],
                               _road_depth(shape, fy, v0, height_m, pitch)[road], rtol=1e-4)


@pytest.mark.parametrize("pitch", [0.0, 0.04])
def test_the_robust_fit_ignores_ten_percent_outliers(pitch):
    rng = np.random.default_rng(2)
    shape, fy, v0, height_m = (120, 160), 140.0, 55.0, 1.5
    disparity = _synthetic_disparity(_road_depth(shape, fy, v0, height_m, pitch), rng)
    rows, cols = ground_region(shape)
    region = disparity[rows, cols]  # a view: outliers go into the frame
    wrong = rng.random(region.shape) < 0.10
    region[wrong] = rng.uniform(0.0, 3.0, size=wrong.sum()) * region[wrong]  # cars, shadows, bad pixels
    assert 0.08 < wrong.mean() < 0.12
    camera = GroundCamera(fy, v0, height_m, pitch)
    scale, shift = fit_ground_scale_shift([ground_samples(disparity, camera)])
    assert scale == pytest.approx(SCALE, abs=1e-3) and shift == pytest.approx(SHIFT, abs=1e-3)
    alignment = frame_ground_alignment(disparity, camera)
    assert alignment is not None and (alignment.scale, alignment.shift) == pytest.approx((SCALE, SHIFT), abs=1e-3)


def test_frames_pool_and_a_frame_without_road_has_no_own_fit():
    rng = np.random.default_rng(3)
    shape, fy, v0 = (80, 100), 90.0, 38.0
    cameras = [GroundCamera(fy, v0, h, pitch) for h, pitch in ((1.2, 0.0), (1.3, 0.02), (1.1, -0.01))]
    frames = [_synthetic_disparity(_road_depth(shape, fy, v0, c.height_m, c.pitch), rng) for c in cameras]
    pooled = fit_ground_scale_shift([ground_samples(f, c) for f, c in zip(frames, cameras)])
    assert pooled == pytest.approx((SCALE, SHIFT), abs=1e-4)
    # A lorry close ahead fills the lower middle: its disparity is flat, no row pattern of a road.
    blocked = frames[0].copy()
    rows, cols = ground_region(shape)
    blocked[rows, cols] = 30.0 + rng.normal(0.0, 0.5, size=blocked[rows, cols].shape)
    assert frame_ground_alignment(blocked, cameras[0]) is None
    with pytest.raises(ValueError, match="no ground pixels"):
        fit_ground_scale_shift([ground_samples(frames[0], GroundCamera(fy, 200.0, 1.2))])  # horizon below


# ---------------------------------------------------------------------------------------------
# Camera files and the export


def _write_camera(path, fy, v0, pitch=None, z=None):
    camera = json.loads(path.read_text())
    camera["intrinsic"].update(fy=fy, v0=v0)
    for key, value in (("pitch", pitch), ("z", z)):
        if value is None:
            camera["extrinsic"].pop(key, None)
        else:
            camera["extrinsic"][key] = value
    path.write_text(json.dumps(camera))


def test_camera_file_reading(tmp_path):
    generate_tree("cityscapes", tmp_path, 1, size=(64, 32), seed=0, splits=("train",), depth="stereo")
    (job,) = export_jobs(tmp_path, "stereo-mat")
    _write_camera(job.camera, 40.0, 14.0, pitch=0.03, z=1.25)
    camera = read_ground_camera(job.camera, (32, 64))
    assert camera == GroundCamera(40.0, 14.0, 1.25, 0.03, 32)
    assert read_ground_camera(job.camera, (32, 64), camera_height=1.5).height_m == 1.5
    _write_camera(job.camera, 40.0, 14.0)  # no pitch, no height
    assert read_ground_camera(job.camera, (32, 64), camera_height=1.22).pitch == 0.0
    with pytest.raises(CordasegError, match="no camera height .*--camera-height"):
        read_ground_camera(job.camera, (32, 64))
    _write_camera(job.camera, 40.0, 513.0, z=1.2)  # intrinsics of a larger image
    with pytest.raises(DataError, match="principal row v0=513 lies outside the 32-row image"):
        read_ground_camera(job.camera, (32, 64))


def test_export_with_camera_height_recovers_road_depth(tmp_path):
    """An oracle model whose disparity is exactly affine in the road's inverse depth: every frame
    gets its own fit, with its own camera height and pitch, and the road's depth is written."""
    tree = generate_tree("cityscapes", tmp_path / "tree", 3, size=(96, 64), seed=4, splits=("train",), depth="stereo")
    rng = np.random.default_rng(4)
    jobs = export_jobs(tree, "stereo-mat", tmp_path / "out")
    truth, by_pixels = {}, {}
    for job, (height_m, pitch) in zip(jobs, ((1.22, 0.0), (1.4, 0.03), (1.1, -0.02))):
        _write_camera(job.camera, 80.0, 30.0, pitch=pitch, z=height_m)
        depth = _road_depth((64, 96), 80.0, 30.0, height_m, pitch)
        truth[job.output] = depth
        by_pixels[formats.read_image_rgb(job.image).tobytes()] = _synthetic_disparity(depth, rng)

    class Oracle:
        def prepare(self, rgb):
            return by_pixels[rgb.tobytes()]

        def batch_key(self, inputs):
            return None

        def predict(self, inputs, shapes):
            return list(inputs)

    summary = run_export(Oracle(), "relative", jobs, "stereo-mat", tmp_path / "out", "train", {"model": "oracle"},
                         align="camera-height", progress=False)
    assert summary.metric and "camera-height fit per frame" in summary.alignment
    assert "own fit on 3 of 3" in summary.alignment
    assert (summary.scale, summary.shift) == pytest.approx((SCALE, SHIFT), abs=1e-4)
    for output, depth in truth.items():
        written = formats.read_stereo_depth_mat(output)
        road = np.isfinite(depth) & (depth < 100.0)
        np.testing.assert_allclose(written[road], depth[road], rtol=1e-4)
    # A fixed height replaces the files' own: depth scales with it on the first frame (zero pitch).
    fixed = export_jobs(tree, "stereo-mat", tmp_path / "fixed")
    again = run_export(Oracle(), "relative", fixed, "stereo-mat", tmp_path / "fixed", "train", {"model": "oracle"},
                       align="camera-height", camera_height=2.44, progress=False)
    assert "camera 2.44 m" in again.alignment
    first = formats.read_stereo_depth_mat(fixed[0].output)
    road = np.isfinite(truth[jobs[0].output]) & (truth[jobs[0].output] < 50.0)
    np.testing.assert_allclose(first[road], 2.0 * truth[jobs[0].output][road], rtol=1e-4)


def test_camera_height_options_are_checked(tmp_path):
    tree = generate_tree("cityscapes", tmp_path / "tree", 1, size=(64, 32), seed=5, splits=("train",), depth="stereo")
    jobs = export_jobs(tree, "stereo-mat", tmp_path / "out")

    def export(kind="relative", **kwargs):
        return run_export(None, kind, jobs, "stereo-mat", tmp_path / "out", "train", {"model": "none"},
                          progress=False, **kwargs)

    with pytest.raises(CordasegError, match="--camera-height applies to --align camera-height only"):
        export(align="stereo", camera_height=1.2)
    with pytest.raises(CordasegError, match="--ground-margin applies to --align camera-height only"):
        export(ground_margin=0.2)
    with pytest.raises(CordasegError, match="--camera-height: -1.0 must be positive"):
        export(align="camera-height", camera_height=-1.0)
    with pytest.raises(CordasegError, match="--ground-band 0.9 / --ground-margin 0.2"):
        export(align="camera-height", ground_band=0.9, ground_margin=0.2)
    with pytest.raises(CordasegError, match="fits the scale and shift itself"):
        export(align="camera-height", scale=0.01)
    with pytest.raises(CordasegError, match="applies to relative disparity only"):
        export(align="camera-height", kind="metric")
