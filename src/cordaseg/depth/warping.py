"""View synthesis for self-supervised depth (docs/method.md, "Self-supervised depth"; Monodepth2 section 3).

Conventions: pixel ``(u, v)`` are integer coordinates of pixel centres (the synthetic world's and
Cityscapes' ``u0, v0`` convention); intrinsics ``K`` are (B, 3, 3) in pixels of the image they are
used with; a transform ``T`` (B, 4, 4) maps points from the target camera's frame into the source
camera's frame. The right camera of a stereo pair sits ``baseline`` metres along the left
camera's +x axis, so ``T_left->right`` translates by ``-baseline`` and a left pixel appears in the
right image at ``u - fx * baseline / Z`` (the disparity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(3, H*W) homogeneous pixel coordinates (u, v, 1), row-major."""
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                          torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(height * width, device=device, dtype=dtype)])


def backproject(depth: torch.Tensor, inv_K: torch.Tensor) -> torch.Tensor:
    """Depth (B, 1, H, W) -> camera points (B, 3, H*W): ``Z * K^-1 (u, v, 1)``."""
    b, _, h, w = depth.shape
    rays = inv_K @ pixel_grid(h, w, depth.device, depth.dtype)  # (B, 3, H*W)
    return rays * depth.reshape(b, 1, h * w)


def project(points: torch.Tensor, K: torch.Tensor, T: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Camera points (B, 3, N) -> pixel coordinates (B, 2, N) in the camera ``T`` maps them to."""
    moved = T[:, :3, :3] @ points + T[:, :3, 3:]  # (B, 3, N)
    pixels = K @ moved
    return pixels[:, :2] / pixels[:, 2:3].clamp(min=eps)


def sample(image: torch.Tensor, pixels: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Bilinearly sample ``image`` (B, C, H, W) at pixel coordinates (B, 2, H*W) -> (B, C, H, W)."""
    b, _, h, w = image.shape
    u = pixels[:, 0].reshape(b, h, w) * (2.0 / max(w - 1, 1)) - 1.0
    v = pixels[:, 1].reshape(b, h, w) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([u, v], dim=-1)  # (B, H, W, 2) in grid_sample's [-1, 1], corners = pixel centres
    return F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def warp(source: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Reconstruct the target view from ``source`` (B, C, H, W) given the target's depth and
    ``T`` (target camera -> source camera)."""
    points = backproject(depth, torch.linalg.inv(K))
    return sample(source, project(points, K, T))


def stereo_transform(baseline: torch.Tensor) -> torch.Tensor:
    """(B,) baselines (metres) -> (B, 4, 4) left camera -> right camera transform (a negative
    baseline puts the partner camera on the left, as in a horizontally mirrored pair)."""
    T = torch.eye(4, dtype=baseline.dtype, device=baseline.device).repeat(baseline.shape[0], 1, 1)
    T[:, 0, 3] = -baseline
    return T


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(B, 3) axis-angle vectors -> (B, 3, 3) rotation matrices (Rodrigues' formula)."""
    angle = axis_angle.norm(dim=1, keepdim=True).clamp(min=1e-8)  # (B, 1)
    axis = axis_angle / angle
    x, y, z = axis.unbind(dim=1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(cross)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]  # (B, 1, 1)
    return eye + s * cross + (1 - c) * (cross @ cross)


def pose_to_transform(axis_angle: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(B, 3) rotation and (B, 3) translation -> (B, 4, 4) ``[R | t]``."""
    T = torch.eye(4, dtype=axis_angle.dtype, device=axis_angle.device).repeat(axis_angle.shape[0], 1, 1)
    T[:, :3, :3] = axis_angle_to_matrix(axis_angle)
    T[:, :3, 3] = translation
    return T
