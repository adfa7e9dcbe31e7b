"""Geometry of the synthetic street world: ray-cast depth, stereo, labels, the two domains."""

from __future__ import annotations

import numpy as np
import pytest

from cordaseg.data.labels import CITYSCAPES_ID_TO_TRAIN, NUM_CLASSES
from cordaseg.world import (
    SOURCE,
    Camera,
    Scene,
    cast_rays,
    render_frame,
    sample_scene,
    stereo_depth,
    target_domain,
)
from cordaseg.world.scene import BUILDING, POLE, ROAD, SKY, M


def _scene(boxes, labels, road_half_width=5.0) -> Scene:
    """A hand-made scene of boxes ((x0, y0, z0), (x1, y1, z1)) with the given label IDs."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 3)
    n = len(boxes)
    return Scene(
        box_min=boxes[:, 0], box_max=boxes[:, 1],
        sphere_center=np.zeros((0, 3)), sphere_radius=np.zeros(0),
        label=np.asarray(labels, dtype=np.uint8), material=np.full(n, M["building"]),
        tint=np.full((n, 3), 0.5, dtype=np.float32), road_half_width=road_half_width,
        lane_lines=np.zeros(0), camera_x=0.0,
    )


def test_road_depth_is_the_analytic_ray_plane_distance():
    scene = sample_scene(SOURCE.scene, np.random.default_rng(3))
    camera = Camera.from_fov(128, 64, 70.0, (scene.camera_x, 1.4, 0.0), pitch_deg=4.0)
    gb = cast_rays(scene, camera)
    road = (gb.label == ROAD) & (gb.primitive == -1)
    assert road.sum() > 500
    v, u = np.nonzero(road)
    # Camera-frame point (X, Y, Z) with Y = -(v - cy) / fy * Z lies on y = 0 when
    # height + cos(pitch) * Y - sin(pitch) * Z = 0.
    slope = (v - camera.cy) / camera.fy
    z_expected = camera.position[1] / (np.sin(camera.pitch) + np.cos(camera.pitch) * slope)
    np.testing.assert_allclose(gb.depth[road], z_expected, rtol=1e-5)
    # ... and the hit point is on the plane, at the Euclidean ray distance from the camera.
    np.testing.assert_allclose(gb.point[road][:, 1], 0.0, atol=1e-4)
    ray = camera.ray_directions()[road]
    distance = np.linalg.norm(gb.point[road] - np.asarray(camera.position), axis=-1)
    np.testing.assert_allclose(distance, z_expected * np.linalg.norm(ray, axis=-1), rtol=1e-5)


def test_right_view_disparity_is_f_times_baseline_over_depth():
    scene = sample_scene(SOURCE.scene, np.random.default_rng(5))
    left = Camera.from_fov(160, 80, 70.0, (scene.camera_x, 1.5, 0.0), pitch_deg=3.0, baseline=0.5)
    right_gb = cast_rays(scene, left.right())
    seen = np.isfinite(right_gb.depth)
    v_r, u_r = np.nonzero(seen)
    # Every point the right view renders projects into the left view f * B / Z pixels to the right,
    # on the same row, at the same depth.
    u_l, v_l, z_l = left.project(right_gb.point[seen].astype(np.float64))
    z = right_gb.depth[seen]
    np.testing.assert_allclose(u_l - u_r, left.fx * left.baseline / z, rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(v_l, v_r, atol=2e-3)
    np.testing.assert_allclose(z_l, z, rtol=1e-4)


def test_stereo_pair_shifts_an_edge_by_its_disparity():
    # A thin façade at depth 6 m whose left edge is at x = 0.3: its image edge moves by fx * B / 6.
    scene = _scene([((0.3, 0.0, 6.0), (8.0, 6.0, 6.01))], [BUILDING])
    camera = Camera(120, 60, 100.0, 100.0, 59.5, 29.5, (0.0, 1.5, 0.0), 0.0, baseline=0.36)
    left, right = cast_rays(scene, camera), cast_rays(scene, camera.right())
    row = 30
    edge_left = np.argmax(left.label[row] == BUILDING)
    edge_right = np.argmax(right.label[row] == BUILDING)
    assert left.depth[row, edge_left] == pytest.approx(6.0, rel=1e-5)
    assert edge_left - edge_right == pytest.approx(camera.fx * camera.baseline / 6.0, abs=1.0)


def test_every_class_occurs_across_a_modest_batch_of_scenes():
    counts = np.zeros(256, dtype=np.int64)
    target = target_domain(1.0)
    for i in range(8):
        for domain in (SOURCE, target):
            rng = np.random.default_rng([i, 7])
            scene = sample_scene(domain.scene, rng)
            cam = domain.camera
            camera = Camera.from_fov(128, 64, cam.hfov_deg, (scene.camera_x, cam.height_m, 0.0), cam.pitch_deg)
            counts += np.bincount(CITYSCAPES_ID_TO_TRAIN[cast_rays(scene, camera).label].ravel(), minlength=256)
    missing = [c for c in range(NUM_CLASSES) if counts[c] == 0]
    assert missing == []
    assert counts[255] == 0  # the world draws only labelled classes


def test_stereo_depth_has_the_flaws_of_real_stereo():
    # A wall at 20 m behind a pole at 5 m, sky above the wall.
    scene = _scene([((-30.0, 0.0, 20.0), (30.0, 4.0, 21.0)), ((-0.1, 0.0, 5.0), (0.1, 10.0, 5.2))],
                   [BUILDING, POLE])
    camera = Camera(256, 128, 200.0, 200.0, 127.5, 63.5, (0.0, 1.5, 0.0), 0.0, baseline=0.5)
    left, right = cast_rays(scene, camera), cast_rays(scene, camera.right())
    measured = stereo_depth(left.depth, right.depth, camera, np.random.default_rng(0))
    assert (measured[left.label == SKY] == 0).all()
    row = 70
    fb = camera.fx * camera.baseline  # 100 px m
    # The right camera sees the pole (x in [-0.1, 0.1] at 5 m) where the left one sees the wall
    # at x_w with 127.5 + fx * (x_w - B) / 20 in the pole's right-view columns: left columns
    # 123.5 - (fb / 5 - fb / 20) .. + pole width, i.e. 108.5 .. 116.5.
    pole_left = camera.cx + camera.fx * -0.1 / 5.0
    band = pole_left - (fb / 5.0 - fb / 20.0)
    assert np.flatnonzero(left.label[row] == POLE)[0] == int(np.ceil(pole_left))
    assert (measured[row, int(np.ceil(band)): int(band + camera.fx * 0.2 / 5.0)] == 0).all()
    # Between that band and the pole the wall is seen by both cameras (one pixel of the depth
    # discontinuity next to the pole is dropped too).
    between = measured[row, int(band + camera.fx * 0.2 / 5.0) + 2: int(np.ceil(pole_left)) - 1]
    assert len(between) >= 4 and (between > 0).all()
    assert measured[row, int(np.ceil(pole_left)) - 1] == 0
    # The left border has no match in the right view.
    assert (measured[row, : int(camera.fx * camera.baseline / 20.0) - 1] == 0).all()
    far_wall = measured[row, 40:100]
    assert (far_wall > 0).all()
    np.testing.assert_allclose(far_wall, 20.0, rtol=0.2)


def test_stereo_depth_noise_grows_with_distance():
    camera = Camera(256, 128, 200.0, 200.0, 127.5, 63.5, (0.0, 1.5, 0.0), 0.0)
    rng = np.random.default_rng(1)
    errors = {}
    for z in (5.0, 40.0):
        depth = np.full((128, 256), z, dtype=np.float32)
        measured = stereo_depth(depth, depth, camera, rng)
        valid = measured > 0
        errors[z] = np.std(measured[valid] - z)
    assert errors[40.0] > 20 * errors[5.0]


def test_frames_are_reproducible_and_the_domains_differ():
    a = render_frame(SOURCE, (96, 48), np.random.default_rng(11))
    b = render_frame(SOURCE, (96, 48), np.random.default_rng(11))
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.label_ids, b.label_ids)
    # No gap at shift 0: the target domain is the source domain.
    same = render_frame(target_domain(0.0), (96, 48), np.random.default_rng(11))
    np.testing.assert_array_equal(same.rgb, a.rgb)

    def saturation(frames):
        rgb = np.concatenate([f.rgb.reshape(-1, 3) for f in frames]).astype(np.float64)
        return float(np.mean(rgb.max(1) - rgb.min(1)))

    def sky_blueness(frames):
        sky = np.concatenate([f.rgb[f.label_ids == SKY] for f in frames]).astype(np.float64)
        return float(np.mean(sky[:, 2] - sky[:, 0]))

    source = [render_frame(SOURCE, (96, 48), np.random.default_rng(i)) for i in range(4)]
    half = [render_frame(target_domain(0.5), (96, 48), np.random.default_rng(i)) for i in range(4)]
    target = [render_frame(target_domain(1.0), (96, 48), np.random.default_rng(i), stereo=True) for i in range(4)]
    # Washed-out colours, more so with a stronger shift; a grey or dusk sky instead of a blue one.
    assert saturation(target) < saturation(half) < saturation(source)
    assert saturation(target) < 0.8 * saturation(source)
    assert sky_blueness(source) > 30 and sky_blueness(target) < 0
    # Another camera: a narrower field of view, another height and pitch.
    assert target[0].camera.fx > 1.2 * source[0].camera.fx
    assert target[0].right_rgb.shape == target[0].rgb.shape
    assert not np.array_equal(target[0].right_rgb, target[0].rgb)


def test_target_domain_rejects_a_negative_shift():
    with pytest.raises(ValueError, match="shift"):
        target_domain(-0.5)
