"""Depth export: each encoding of docs/data-formats.md round-trips through the dataset loader's decoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cordaseg.config import from_dict
from cordaseg.data import formats
from cordaseg.data.datasets import DatasetConfig, find_samples, read_depth
from cordaseg.depth.export import (
    EXPORT_FORMATS,
    encode_depth,
    export_depth,
    read_depth_file,
    write_depth_file,
)
from cordaseg.depth.trainer import DepthTrainConfig, build_networks, depth_payload, load_depth_checkpoint
from cordaseg.errors import CheckpointError, CordasegError
from cordaseg.runtime.files import atomic_save
from cordaseg.world import generate_world

# The loader's depth kind for each export format.
LOADER_KIND = {"cityscapes-mono": "mono", "gta-disparity": "disparity", "stereo-mat": "stereo",
               "synthia-depth": "synthia"}
TINY_MODEL = {"encoder_width": 8, "decoder_width": 4, "min_depth": 5.0}  # untrained: ~10 m


def _depth_map(rng, shape=(24, 40)) -> np.ndarray:
    return np.exp(rng.uniform(np.log(3.0), np.log(300.0), size=shape))


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_round_trip_through_each_encoding(tmp_path, fmt):
    depth_m = _depth_map(np.random.default_rng(1))
    valid = np.ones(depth_m.shape, dtype=bool)
    valid[0, :5] = False
    path = write_depth_file(tmp_path / ("d.mat" if fmt == "stereo-mat" else "d.png"), depth_m, fmt, valid)
    decoded = read_depth(LOADER_KIND[fmt], path)  # what `cordaseg train` reads
    np.testing.assert_array_equal(decoded, read_depth_file(path, fmt))
    assert decoded.dtype == np.float32 and decoded.shape == depth_m.shape
    assert np.all(decoded[~valid] == formats.INVALID_DEPTH)
    expected = formats.depth_value_from_metres(depth_m)[valid]
    if fmt == "stereo-mat":
        tolerance = 1e-5 * expected
    elif fmt == "synthia-depth":  # half a centimetre of depth, in the loader's value
        tolerance = expected * 0.005 / depth_m[valid] + 1e-3
    else:
        tolerance = 0.5 / 256 + 1e-6
    assert np.all(np.abs(decoded[valid] - expected) <= tolerance)
    assert np.all(decoded[valid] > formats.INVALID_DEPTH)  # a prediction is never read as invalid


def test_encodings_agree_and_clip_at_their_ranges():
    depth_m = np.array([[0.05, 1.0, 2.6, 10.0, 100.0, 700.0, 5000.0]])
    mono = formats.decode_mono_disparity(encode_depth(depth_m, "cityscapes-mono"))
    gta = formats.decode_gta_disparity(encode_depth(depth_m, "gta-disparity"))
    mat = formats.decode_stereo_depth(encode_depth(depth_m, "stereo-mat"))
    np.testing.assert_array_equal(mono, gta)
    # inside the 16-bit code's range (2.54 m .. 652 m) the PNGs and the .mat decode alike
    np.testing.assert_allclose(mono[0, 2:5], mat[0, 2:5], atol=0.5 / 256)
    assert mono[0, 0] == mono[0, 1] == pytest.approx(65535 / 256 + 1)  # nearer than 2.54 m saturates
    assert mono[0, 5] == mono[0, 6] == pytest.approx(1 + 1 / 256)  # far but still valid
    assert mat[0, 0] == pytest.approx(655.36 / 0.11)  # clipped to the decode's 0.1 m, still valid
    assert encode_depth(np.array([[np.inf, -1.0, np.nan]]), "gta-disparity").tolist() == [[0, 0, 0]]
    with pytest.raises(CordasegError, match="format"):
        encode_depth(depth_m, "kitti")


def _checkpoint(tmp_path, mode: str, layout: str) -> str:
    cfg = from_dict(DepthTrainConfig, {"mode": mode, "model": TINY_MODEL,
                                       "data": {"layout": layout, "size": [64, 64]}})
    depth_net, pose_net = build_networks(cfg)
    path = tmp_path / f"{mode.replace('+', '_')}.pth"
    atomic_save(depth_payload(cfg, depth_net, pose_net, iteration=0), path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return generate_world(root, 2, 2, 0, size=(64, 32), workers=0, progress=False)


def test_export_writes_files_the_loader_finds(world, tmp_path):
    source, target = world
    metric = _checkpoint(tmp_path, "stereo", "cityscapes")
    out = tmp_path / "out"
    summary = export_depth(metric, target, "cityscapes-mono", out_root=out, device="cpu", progress=False)
    assert summary.files == 2 and summary.metric and summary.scale == 1.0
    net, _, _ = load_depth_checkpoint(metric)
    for frame in sorted((target / "leftImg8bit" / "train").glob("*/*.png")):
        frame_id = frame.name.removesuffix("_leftImg8bit.png")
        path = formats.cityscapes_paths(out, "train", frame.parent.name, frame_id, depth="mono").depth
        decoded = read_depth("mono", path)
        rgb = torch.from_numpy(formats.read_image_rgb(frame).astype(np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            expected = net.predict_depth(rgb)[0, 0].double().numpy()
        assert decoded.shape == (32, 64)
        np.testing.assert_allclose(decoded, formats.depth_value_from_metres(expected), atol=0.5 / 256 + 1e-3)
    # Written into the tree itself (the default), `cordaseg train`'s dataset finds every file.
    export_depth(metric, target, "stereo-mat", device="cpu", progress=False)
    records = find_samples(DatasetConfig(format="cityscapes", root=str(target), depth="stereo"))
    assert len(records) == 2 and all(r.depth.is_file() for r in records)
    summary = export_depth(metric, source, "gta-disparity", out_root=tmp_path / "gta", device="cpu", progress=False)
    assert summary.files == 2 and (tmp_path / "gta" / "disparity" / "00001.png").is_file()


def test_scale_free_depth_gets_the_median_rule(world, tmp_path):
    _, target = world
    mono = _checkpoint(tmp_path, "mono", "video")
    summary = export_depth(mono, target, "stereo-mat", out_root=tmp_path / "m", median_depth_m=12.0,
                           device="cpu", progress=False)
    assert not summary.metric
    depths = [formats.read_stereo_depth_mat(p) for p in sorted((tmp_path / "m").rglob("*.mat"))]
    medians = [np.median(d) for d in depths]
    assert np.median(medians) == pytest.approx(12.0, rel=1e-3)
    fixed = export_depth(mono, target, "stereo-mat", out_root=tmp_path / "s", scale=2.0, device="cpu",
                         progress=False)
    assert fixed.scale == 2.0


def test_export_errors(world, tmp_path):
    source, target = world
    metric = _checkpoint(tmp_path, "stereo", "cityscapes")
    with pytest.raises(CordasegError, match="GTA5 image folder"):
        export_depth(metric, target, "gta-disparity", device="cpu", progress=False)
    with pytest.raises(CordasegError, match="Cityscapes train image folder"):
        export_depth(metric, source, "cityscapes-mono", device="cpu", progress=False)
    not_depth = tmp_path / "seg.pth"
    torch.save({"format": "cordaseg", "model": {}}, not_depth)
    with pytest.raises(CheckpointError, match="not a self-supervised depth checkpoint"):
        load_depth_checkpoint(not_depth)
    wrong = tmp_path / "wrong.pth"
    payload = torch.load(metric, weights_only=True)
    payload["config"]["model"] = {**TINY_MODEL, "encoder_width": 16}
    torch.save(payload, wrong)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_depth_checkpoint(wrong)


@pytest.mark.slow
def test_self_supervised_target_tree_is_read_by_the_segmentation_loader(world, tmp_path):
    from cordaseg.data.datasets import build_dataset
    from cordaseg.depth.pipeline import self_supervised_target_depth

    _, target = world
    tree, checkpoint = self_supervised_target_depth(
        target, tmp_path / "work",
        config={"model": TINY_MODEL, "data": {"size": [64, 64]},
                "optim": {"batch_size": 2, "iterations": 2}, "run": {"device": "cpu", "workers": 0}})
    assert checkpoint.is_file() and (tree / "leftImg8bit").is_symlink() and not (tree / "depth").is_symlink()
    cfg = DatasetConfig(format="cityscapes", root=str(tree), depth="stereo", use_labels=False,
                        resize_scale=1.0, crop=(32, 32))
    item = build_dataset(cfg, train=True)[0]
    own = read_depth("stereo", formats.cityscapes_paths(target, "train", "synthtown", item["name"]).depth)
    exported = read_depth("stereo", formats.cityscapes_paths(tree, "train", "synthtown", item["name"]).depth)
    assert item["depth"].shape == (32, 32) and not np.array_equal(own, exported)
    assert np.all(exported > formats.INVALID_DEPTH)  # every pixel has self-supervised depth
