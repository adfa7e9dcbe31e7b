"""World frame sequences: the video layout they write, and that the true motion explains them."""

from __future__ import annotations

import numpy as np
import torch

from cordaseg.depth.data import DepthDataConfig, SelfSupervisedDepthDataset, check_depth_tree
from cordaseg.depth.losses import photometric_error
from cordaseg.depth.warping import pose_to_transform, stereo_transform, warp
from cordaseg.depth.world_video import write_world_video


def test_world_video_layout_and_true_motion(tmp_path):
    truth = write_world_video(tmp_path, sequences=1, frames=3, size=(128, 64), step_m=1.0)
    assert len(truth) == 1 and len(truth[0]) == 3 and truth[0][0].shape == (64, 128)
    assert check_depth_tree("video", tmp_path).ok
    item = SelfSupervisedDepthDataset(DepthDataConfig(layout="video", root=str(tmp_path), size=(128, 64), flip=0.0),
                                      stereo=True, mono=True)[0]  # target frame 1, sources frames 0 and 2
    depth = torch.from_numpy(np.where(np.isfinite(truth[0][1]), truth[0][1], 1e3)).float()[None, None]
    K, target = item["K"][None], item["image"][None]

    def error(source, T):
        return photometric_error(warp(source, depth, K, T), target).mean().item()

    def forward(metres):  # target camera -> a camera ``metres`` further along the street
        return pose_to_transform(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, -metres]]))

    previous, following = item["frames"][None, 0], item["frames"][None, 1]
    identity = photometric_error(previous, target).mean().item()
    assert error(previous, forward(-1.0)) < 0.95 * identity
    assert error(following, forward(1.0)) < 0.95 * error(following, forward(-1.0))
    stereo = error(item["stereo"][None], stereo_transform(item["baseline"][None]))
    assert stereo < 0.8 * photometric_error(item["stereo"][None], target).mean().item()


def test_flipped_stereo_pair_is_explained_by_the_negative_baseline(tmp_path):
    truth = write_world_video(tmp_path, sequences=1, frames=3, size=(128, 64))
    cfg = DepthDataConfig(layout="video", root=str(tmp_path), size=(128, 64), flip=1.0)
    item = SelfSupervisedDepthDataset(cfg, stereo=True, mono=True)[0]
    depth = np.where(np.isfinite(truth[0][1]), truth[0][1], 1e3)[:, ::-1].copy()  # mirrored like the views
    depth = torch.from_numpy(depth).float()[None, None]
    target, right = item["image"][None], item["stereo"][None]
    assert item["baseline"].item() < 0

    def error(baseline):
        return photometric_error(warp(right, depth, item["K"][None], stereo_transform(baseline)), target).mean().item()

    assert error(item["baseline"][None]) < 0.8 * error(-item["baseline"][None])
