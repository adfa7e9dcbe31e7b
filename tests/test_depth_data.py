"""Self-supervised depth data: Cityscapes stereo with camera files, the video folder layout, checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cordaseg.config import ConfigError
from cordaseg.data import formats
from cordaseg.depth.data import (
    Camera,
    DepthDataConfig,
    SelfSupervisedDepthDataset,
    check_depth_tree,
    find_video,
    read_intrinsics_json,
)
from cordaseg.errors import DataError
from cordaseg.world import generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    _, target = generate_world(root, 0, 2, 1, size=(64, 32), workers=0, progress=False)
    return target


def _write_video(root, frames=4, size=(64, 32), right=False, intrinsics=None, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(frames):
        formats.write_rgb_png(root / "images" / f"{i:04d}.png", rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        if right:
            formats.write_rgb_png(root / "right" / f"{i:04d}.png",
                                  rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    if intrinsics is not None:
        (root / "intrinsics.json").write_text(json.dumps(intrinsics))


def test_camera_resize_and_flip_follow_pixel_centre_convention():
    cam = Camera(100.0, 90.0, 63.5, 31.5, 128, 64, 0.2)  # principal point at the image centre
    half = cam.resized(64, 32)
    assert (half.fx, half.fy, half.cx, half.cy) == (50.0, 45.0, 31.5, 15.5)
    off = Camera(100.0, 90.0, 10.0, 5.0, 128, 64)
    assert off.flipped().cx == 117.0 and off.flipped().flipped() == off


def test_normalized_intrinsics_gta_convention(tmp_path):
    path = tmp_path / "intrinsics.json"
    path.write_text(json.dumps({"fx": 1.206285, "fy": 2.144507, "cx": 0.5, "cy": 0.5, "normalized": True}))
    cam = read_intrinsics_json(path, 1920, 1080)
    assert cam.fx == pytest.approx(1.206285 * 1920) and cam.fy == pytest.approx(2.144507 * 1080)
    assert (cam.cx, cam.cy) == (959.5, 539.5) and cam.baseline is None
    path.write_text(json.dumps({"fx": 10, "fy": 10, "cx": 1}))
    with pytest.raises(DataError, match="intrinsics.json.*cy"):
        read_intrinsics_json(path, 10, 10)


def test_cityscapes_stereo_items(world):
    cfg = DepthDataConfig(layout="cityscapes", root=str(world), size=(64, 64), flip=0.0)
    dataset = SelfSupervisedDepthDataset(cfg, stereo=True, mono=False)
    assert len(dataset) == 2
    item = dataset[0]
    assert item["image"].shape == (3, 64, 64) and item["stereo"].shape == (3, 64, 64)
    assert "frames" not in item and 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    cam = formats.read_camera_json(formats.cityscapes_camera_path(world, "train", "synthtown", item["name"]))
    expected = Camera(cam["fx"], cam["fy"], cam["u0"], cam["v0"], 64, 32).resized(64, 64).matrix()
    torch.testing.assert_close(item["K"], torch.from_numpy(expected))
    assert item["baseline"].item() == pytest.approx(cam["baseline"])


def test_flip_mirrors_every_view_and_negates_the_baseline(world):
    base = DepthDataConfig(layout="cityscapes", root=str(world), size=(64, 64))
    plain = SelfSupervisedDepthDataset(DepthDataConfig(**{**base.__dict__, "flip": 0.0}), stereo=True, mono=False)[1]
    flipped = SelfSupervisedDepthDataset(DepthDataConfig(**{**base.__dict__, "flip": 1.0}), stereo=True, mono=False)[1]
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1))
    torch.testing.assert_close(flipped["stereo"], plain["stereo"].flip(-1))
    assert flipped["K"][0, 2].item() == pytest.approx(63 - plain["K"][0, 2].item())
    assert flipped["baseline"].item() == -plain["baseline"].item() < 0


def test_video_layout_items_and_offsets(tmp_path):
    for name in ("seq_a", "seq_b"):
        _write_video(tmp_path / name, frames=4, right=True)
    (tmp_path / "intrinsics.json").write_text(json.dumps({"fx": 0.8, "fy": 1.6, "cx": 0.5, "cy": 0.5,
                                                          "normalized": True, "baseline": 0.3}))
    records = find_video(tmp_path, (-1, 1))
    assert [r.name for r in records] == ["seq_a/0001", "seq_a/0002", "seq_b/0001", "seq_b/0002"]
    assert [p.name for p in records[0].neighbours] == ["0000.png", "0002.png"]
    cfg = DepthDataConfig(layout="video", root=str(tmp_path), size=(64, 64), frame_offsets=(-1, 1), flip=0.0)
    item = SelfSupervisedDepthDataset(cfg, stereo=True, mono=True)[0]
    assert item["frames"].shape == (2, 3, 64, 64) and item["stereo"].shape == (3, 64, 64)
    assert item["K"][0, 0].item() == pytest.approx(0.8 * 64) and item["baseline"].item() == pytest.approx(0.3)


def test_config_and_dataset_errors(tmp_path, world):
    with pytest.raises(ConfigError, match="multiples of 32"):
        DepthDataConfig(size=(50, 64))
    with pytest.raises(ConfigError, match="frame_offsets"):
        DepthDataConfig(frame_offsets=(0, 1))
    cfg = DepthDataConfig(layout="cityscapes", root=str(world), size=(64, 64))
    with pytest.raises(ConfigError, match="video"):
        SelfSupervisedDepthDataset(cfg, stereo=False, mono=True)
    _write_video(tmp_path / "seq", frames=3, intrinsics={"fx": 30, "fy": 30, "cx": 31.5, "cy": 15.5})
    video = DepthDataConfig(layout="video", root=str(tmp_path), size=(64, 64))
    with pytest.raises(DataError, match="right/"):
        SelfSupervisedDepthDataset(video, stereo=True, mono=True)


def test_check_clean_world_and_defects(world, tmp_path):
    report = check_depth_tree("cityscapes-stereo", world)
    assert report.ok and report.counts["frames"] == 2
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(world, broken)
    right = formats.cityscapes_right_image_path(broken, "train", "synthtown", "synthtown_000000_000019")
    right.unlink()
    camera = formats.cityscapes_camera_path(broken, "train", "synthtown", "synthtown_000001_000019")
    camera.write_text(json.dumps({"intrinsic": {"fx": 1}}))
    report = check_depth_tree("cityscapes-stereo", broken)
    kinds = {(p.path.name, p.kind) for p in report.problems}
    assert (right.name, "missing") in kinds and (camera.name, "format") in kinds


def test_check_video_tree_defects(tmp_path):
    _write_video(tmp_path / "long", frames=3, intrinsics={"fx": 30, "fy": 30, "cx": 31.5, "cy": 15.5})
    assert check_depth_tree("video", tmp_path).ok
    _write_video(tmp_path / "short", frames=2)  # too short for (-1, 1) and without intrinsics
    _write_video(tmp_path / "mixed", frames=3, size=(64, 32), intrinsics={"fx": 30, "fy": 30, "cx": 1, "cy": 1})
    formats.write_rgb_png(tmp_path / "mixed" / "images" / "0002.png", np.zeros((16, 16, 3), np.uint8))
    report = check_depth_tree("video", tmp_path)
    found = {(p.path.parent.name if p.kind != "size" else p.path.name, p.kind) for p in report.problems}
    assert found == {("test_check_video_tree_defects0", "tree"), ("short", "missing"), ("0002.png", "size")}
    assert check_depth_tree("video", tmp_path / "nothing").problems[0].kind == "tree"
