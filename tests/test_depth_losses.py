"""Self-supervised depth: SSIM, photometric error, min reprojection, auto-mask, smoothness, warping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cordaseg.depth.losses import SSIM_C1, SSIM_C2, min_reprojection, photometric_error, smoothness, ssim
from cordaseg.depth.warping import (
    axis_angle_to_matrix,
    backproject,
    pose_to_transform,
    project,
    stereo_transform,
    warp,
)


def _ssim_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two 3x3 windows from the textbook formula (population variances)."""
    mu_a, mu_b = a.mean(), b.mean()
    var_a, var_b = ((a - mu_a) ** 2).mean(), ((b - mu_b) ** 2).mean()
    cov = ((a - mu_a) * (b - mu_b)).mean()
    return ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
            / ((mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)))


def test_ssim_centre_pixel_matches_hand_computation():
    a = np.array([[0.1, 0.5, 0.9], [0.3, 0.2, 0.7], [0.8, 0.4, 0.6]])
    b = np.array([[0.2, 0.4, 0.9], [0.1, 0.3, 0.5], [0.9, 0.5, 0.4]])
    result = ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None])
    assert result.shape == (1, 1, 3, 3)
    assert result[0, 0, 1, 1].item() == pytest.approx(_ssim_by_hand(a, b), rel=1e-12)


def test_ssim_border_uses_reflection_padding():
    a = np.arange(9, dtype=np.float64).reshape(3, 3) / 10
    b = a[::-1].copy()
    result = ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None])
    pa, pb = np.pad(a, 1, mode="reflect"), np.pad(b, 1, mode="reflect")
    assert result[0, 0, 0, 0].item() == pytest.approx(_ssim_by_hand(pa[0:3, 0:3], pb[0:3, 0:3]), rel=1e-12)


def test_ssim_of_constants_and_identity():
    c1, c2 = 0.3, 0.6
    a = torch.full((1, 1, 4, 4), c1, dtype=torch.float64)
    b = torch.full((1, 1, 4, 4), c2, dtype=torch.float64)
    expected = (2 * c1 * c2 + SSIM_C1) / (c1**2 + c2**2 + SSIM_C1)  # variances are zero
    torch.testing.assert_close(ssim(a, b), torch.full_like(a, expected))
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(ssim(x, x), torch.ones_like(x))


def test_photometric_error_weights():
    a = torch.full((1, 3, 5, 5), 0.2, dtype=torch.float64)
    b = torch.full((1, 3, 5, 5), 0.5, dtype=torch.float64)
    s = (2 * 0.2 * 0.5 + SSIM_C1) / (0.2**2 + 0.5**2 + SSIM_C1)
    expected = 0.85 * (1 - s) / 2 + 0.15 * 0.3
    error = photometric_error(a, b)
    assert error.shape == (1, 1, 5, 5)
    torch.testing.assert_close(error, torch.full_like(error, expected))


def test_min_reprojection_and_automask():
    reprojection = torch.tensor([[[[0.5, 0.1]], [[0.2, 0.4]]]])  # (B=1, S=2, H=1, W=2)
    identity = torch.tensor([[[[0.3, 0.05]], [[0.9, 0.9]]]])
    loss, mask = min_reprojection(reprojection, identity)
    # pixel 0: min warped 0.2 < min identity 0.3 -> kept; pixel 1: 0.1 > 0.05 -> static, masked out.
    torch.testing.assert_close(loss, torch.tensor([[[0.2, 0.05]]]))
    assert mask.tolist() == [[[True, False]]]
    loss, mask = min_reprojection(reprojection, None)
    torch.testing.assert_close(loss, torch.tensor([[[0.2, 0.1]]]))
    assert mask.all()


def test_automask_has_no_gradient_where_static():
    reprojection = torch.tensor([[[[0.5, 0.1]]]], requires_grad=True)
    identity = torch.tensor([[[[0.3, 0.9]]]])
    loss, _ = min_reprojection(reprojection, identity)
    loss.sum().backward()
    assert reprojection.grad.tolist() == [[[[0.0, 1.0]]]]


def test_smoothness_hand_values():
    disparity = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]]]])  # mean 2 -> d* = [[0.5, 1.5], [0.5, 1.5]]
    image = torch.zeros(1, 3, 2, 2)
    image[..., 1] = 0.5  # a vertical edge between the columns
    value = smoothness(disparity, image)
    # x: |0.5 - 1.5| * exp(-0.5) on both rows; y: zero differences.
    assert value.item() == pytest.approx(math.exp(-0.5), rel=1e-6)
    flat = smoothness(torch.ones(1, 1, 4, 4) * 7.0, torch.rand(1, 3, 4, 4))
    assert flat.item() == 0.0


def _camera(width: int, height: int, f: float = 40.0) -> torch.Tensor:
    return torch.tensor([[[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]]], dtype=torch.float64)


def test_backproject_project_round_trip_and_stereo_disparity():
    h, w = 6, 9
    K = _camera(w, h)
    depth = torch.rand(1, 1, h, w, dtype=torch.float64) * 10 + 2
    points = backproject(depth, torch.linalg.inv(K))
    pixels = project(points, K, torch.eye(4, dtype=torch.float64)[None])
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    torch.testing.assert_close(pixels[0, 0].reshape(h, w), u)
    torch.testing.assert_close(pixels[0, 1].reshape(h, w), v)
    baseline = torch.tensor([0.5], dtype=torch.float64)
    right = project(points, K, stereo_transform(baseline))
    # a left pixel appears in the right view shifted left by the disparity fx * b / Z
    torch.testing.assert_close(right[0, 0].reshape(h, w), u - 40.0 * 0.5 / depth[0, 0])
    torch.testing.assert_close(right[0, 1].reshape(h, w), v)


def test_reprojection_hand_value():
    # Pixel (u=2, v=1) at depth 4 with fx=fy=10, cx=cy=0: camera point (0.8, 0.4, 4);
    # after a 1 m move forward (points come 1 m closer) it projects to (10*0.8/3, 10*0.4/3).
    K = torch.tensor([[[10.0, 0, 0], [0, 10.0, 0], [0, 0, 1]]], dtype=torch.float64)
    depth = torch.full((1, 1, 2, 3), 4.0, dtype=torch.float64)
    T = pose_to_transform(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64))
    pixels = project(backproject(depth, torch.linalg.inv(K)), K, T)
    index = 1 * 3 + 2
    assert pixels[0, :, index].tolist() == pytest.approx([8.0 / 3.0, 4.0 / 3.0])


def test_axis_angle_rotation():
    R = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 2]], dtype=torch.float64))[0]
    torch.testing.assert_close(R @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    identity = axis_angle_to_matrix(torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(identity, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))


def _stereo_scene(h: int = 32, w: int = 64):
    """A textured fronto-parallel scene at two depths, its right view, and the true depth."""
    rng = np.random.default_rng(0)
    f, baseline = 40.0, 0.5
    depth = np.full((h, w), 10.0)
    depth[8:24, 20:44] = 4.0  # a nearer box
    # Texture as a smooth function of the world x coordinate so the right view is exact.
    freq = rng.uniform(0.5, 3.0, size=(3, 4))
    phase = rng.uniform(0, 6.28, size=(3, 4))

    def shade(x_world: np.ndarray, y_world: np.ndarray) -> np.ndarray:
        channels = [0.5 + 0.12 * np.sin(freq[c, :2, None, None] * x_world + phase[c, :2, None, None]).sum(0)
                    + 0.1 * np.sin(freq[c, 2] * y_world + phase[c, 2]) for c in range(3)]
        return np.stack(channels)

    cx, cy = (w - 1) / 2, (h - 1) / 2
    u = np.arange(w)[None, :].repeat(h, 0)
    v = np.arange(h)[:, None].repeat(w, 1)
    left = shade((u - cx) / f * depth, (v - cy) / f * depth)
    # Right camera at +baseline: a right pixel u_r sees the world x = (u_r - cx) / f * Z + baseline.
    # Which depth does it see? The near box shifts by f*b/4 = 5 px, the far plane by 2 px.
    depth_right = np.full((h, w), 10.0)
    depth_right[8:24, 15:39] = 4.0
    right = shade((u - cx) / f * depth_right + baseline, (v - cy) / f * depth_right)
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    return (torch.tensor(left)[None], torch.tensor(right)[None], torch.tensor(depth)[None, None],
            torch.tensor(K)[None], baseline)


def test_stereo_pair_warped_with_true_depth_reconstructs_left_view():
    left, right, depth, K, baseline = _stereo_scene()
    T = stereo_transform(torch.tensor([baseline], dtype=torch.float64))
    reconstructed = warp(right, depth, K, T)
    error = photometric_error(reconstructed, left)[0, 0]
    # Pixels whose right-view position lies inside the image and away from occlusion edges.
    # Every pixel except those whose right-view position falls outside the image (left border) and
    # the background just left of the box, which the box hides in the right view (occlusion), each
    # widened by the 3x3 SSIM window.
    valid = torch.ones_like(error, dtype=torch.bool)
    valid[:, :3] = False
    valid[:, 15:22] = False
    assert error[valid].max() < 1e-6
    wrong = warp(right, depth * 1.5, K, T)
    assert photometric_error(wrong, left)[0, 0][valid].mean() > 100 * error[valid].mean() + 1e-3
