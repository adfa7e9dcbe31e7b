"""The synthetic street world written as GTA5 and Cityscapes trees, read back with the real readers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cordaseg.cli import main
from cordaseg.data import formats
from cordaseg.data.labels import CITYSCAPES_ID_TO_TRAIN
from cordaseg.errors import DataError
from cordaseg.world import SOURCE, generate_world, render_frame, target_domain
from cordaseg.world.export import MANIFEST, _frame_rng
from cordaseg.world.scene import SKY

SIZE = (96, 48)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    source, target = generate_world(out, 3, 2, 2, size=SIZE, shift=1.0, seed=4, progress=False, workers=0)
    return out, source, target


def test_source_is_a_gta5_tree_with_depth_on_the_stereo_scale(world):
    _, source, _ = world
    frame = render_frame(SOURCE, SIZE, _frame_rng(4, "source", 1))
    paths = formats.gta5_paths(source, "00002")
    np.testing.assert_array_equal(formats.read_image_rgb(paths.image), frame.rgb)
    labels = formats.read_label_ids(paths.label)
    np.testing.assert_array_equal(labels, frame.label_ids)
    assert (CITYSCAPES_ID_TO_TRAIN[labels] < 19).all()
    decoded = formats.decode_gta_disparity(formats.read_uint16_png(paths.depth))
    # The same inverse-depth-like value as the Cityscapes stereo decode of the metric depth.
    finite = np.isfinite(frame.depth)
    expected = formats.decode_stereo_depth(np.where(finite, frame.depth, 0.0))
    near = frame.depth < 655.36 / 257.0 - 0.01  # nearer than the 16-bit code reaches
    np.testing.assert_allclose(decoded[~near], expected[~near], atol=1 / 512 + 1e-6)
    assert (decoded[labels == SKY] == formats.INVALID_DEPTH).all()
    assert sorted(p.name for p in (source / "images").iterdir()) == ["00001.png", "00002.png", "00003.png"]


def test_target_is_a_cityscapes_tree_with_stereo_pairs(world):
    _, _, target = world
    frame = render_frame(target_domain(1.0), SIZE, _frame_rng(4, "train", 0), stereo=True)
    city, frame_id = "synthtown", "synthtown_000000_000019"
    paths = formats.cityscapes_paths(target, "train", city, frame_id, depth="stereo")
    np.testing.assert_array_equal(formats.read_image_rgb(paths.image), frame.rgb)
    right = formats.read_image_rgb(formats.cityscapes_right_image_path(target, "train", city, frame_id))
    np.testing.assert_array_equal(right, frame.right_rgb)
    labels = formats.read_label_ids(paths.label)
    np.testing.assert_array_equal(labels, frame.label_ids)
    depth = formats.read_stereo_depth_mat(paths.depth)
    assert depth.shape == (SIZE[1], SIZE[0])
    assert (depth[labels == SKY] == 0).all()
    valid = depth > 0
    assert 0.3 < valid.mean() < 1.0  # holes where stereo fails, but mostly measured
    np.testing.assert_allclose(depth[valid], frame.depth[valid], rtol=0.5)
    camera = formats.read_camera_json(formats.cityscapes_camera_path(target, "train", city, frame_id))
    assert camera["fx"] == pytest.approx(frame.camera.fx)
    assert camera["baseline"] == pytest.approx(0.22)
    pose = json.loads(formats.cityscapes_camera_path(target, "train", city, frame_id).read_text())["extrinsic"]
    assert pose["pitch"] == pytest.approx(frame.camera.pitch) and pose["z"] == pytest.approx(frame.camera.position[1])
    # Val has images and labels but, like Cityscapes, no training depth.
    val = formats.cityscapes_paths(target, "val", "synthvale", "synthvale_000001_000019", depth="stereo")
    assert val.image.is_file() and val.label.is_file() and not val.depth.exists()


def test_generation_is_cached_by_its_specification(world, tmp_path):
    out, source, _ = world
    spec = json.loads((out / MANIFEST).read_text())
    assert spec["num_source"] == 3 and spec["size"] == list(SIZE) and spec["seed"] == 4
    image = formats.gta5_paths(source, "00001").image
    before = image.stat().st_mtime_ns
    generate_world(out, 3, 2, 2, size=SIZE, shift=1.0, seed=4, progress=False, workers=0)
    assert image.stat().st_mtime_ns == before
    # Another seed is another world: everything is rendered again.
    generate_world(tmp_path, 1, 1, 1, size=SIZE, seed=1, progress=False, workers=0)
    first = formats.read_image_rgb(formats.gta5_paths(tmp_path / "source", "00001").image)
    generate_world(tmp_path, 1, 1, 1, size=SIZE, seed=2, progress=False, workers=0)
    second = formats.read_image_rgb(formats.gta5_paths(tmp_path / "source", "00001").image)
    assert not np.array_equal(first, second)
    assert json.loads((tmp_path / MANIFEST).read_text())["seed"] == 2


def test_parallel_workers_write_the_same_files(tmp_path):
    generate_world(tmp_path / "a", 4, 1, 0, size=(64, 32), progress=False, workers=0)
    generate_world(tmp_path / "b", 4, 1, 0, size=(64, 32), progress=False, workers=2)
    for stem in ("00001", "00004"):
        a = formats.read_image_rgb(formats.gta5_paths(tmp_path / "a" / "source", stem).image)
        b = formats.read_image_rgb(formats.gta5_paths(tmp_path / "b" / "source", stem).image)
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(DataError, match="num_target_val"):
        generate_world(tmp_path, 1, 1, -1, progress=False)
    with pytest.raises(DataError, match="shift"):
        generate_world(tmp_path, 1, 1, 1, shift=-1.0, progress=False)


def test_world_command_writes_both_trees(tmp_path, capsys):
    status = main(["world", "--out", str(tmp_path), "--source", "1", "--train", "1", "--val", "1",
                   "--size", "64x32", "--quiet", "--workers", "0", "--preview", str(tmp_path / "p.png")])
    assert status == 0
    assert "Cityscapes format" in capsys.readouterr().out
    # 4 rows of frames; columns: source image and labels, target image and labels, stereo depth.
    assert formats.read_image_rgb(tmp_path / "p.png").shape == (4 * 32, 5 * 64, 3)
    assert formats.gta5_paths(tmp_path / "source", "00001").depth.is_file()
    assert (tmp_path / "target" / "depth" / "train" / "synthtown").is_dir()
    assert main(["world", "--out", str(tmp_path), "--source", "-2", "--quiet"]) == 2
    assert "num_source" in capsys.readouterr().err


def test_inverse_depth_marks_the_sky_invalid():
    value = formats.depth_value_from_metres(np.array([np.inf, 10.0]))
    assert value[0] == formats.INVALID_DEPTH
    assert value[1] == pytest.approx(655.36 / 10.01)


def test_generated_trees_pass_data_check(world, capsys):
    _, source, target = world
    assert main(["data", "check", "--format", "gta5", "--root", str(source), "--no-progress"]) == 0
    assert main(["data", "check", "--format", "cityscapes", "--root", str(target), "--no-progress"]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_the_real_loaders_read_the_world(world):
    from cordaseg.data.datasets import DatasetConfig, build_dataset

    _, source, target = world
    gta = build_dataset(DatasetConfig(format="gta5", root=str(source), resize=SIZE, crop=(64, 32)), train=True)
    item = gta[0]
    assert len(gta) == 3 and item["image"].shape == (3, 32, 64) and item["label"].shape == (32, 64)
    assert int(item["label"].max()) < 19  # every pixel of the world is a labelled class
    city = build_dataset(DatasetConfig(format="cityscapes", root=str(target), split="train", resize=SIZE,
                                       crop=None), train=True)
    item = city[0]
    depth = item["depth"]
    assert len(city) == 2 and depth.shape == (SIZE[1], SIZE[0])
    # Invalid stereo pixels decode to exactly 1.0, valid ones to 655.36 / (d + 0.01) > 1.
    assert (depth == 1.0).any() and (depth > 2.0).float().mean() > 0.3


def test_world_config_is_a_checked_config_section(tmp_path):
    from cordaseg.config import ConfigError, from_dict, to_dict
    from cordaseg.world import WorldConfig, generate_world_from_config

    cfg = from_dict(WorldConfig, {"num_source": 1, "num_target_train": 1, "num_target_val": 1,
                                  "size": [64, 32], "seed": 3})
    assert cfg.size == (64, 32) and to_dict(cfg)["size"] == [64, 32]
    with pytest.raises(ConfigError, match="num_frames"):
        from_dict(WorldConfig, {"num_frames": 3})
    with pytest.raises(ConfigError, match="shift"):
        from_dict(WorldConfig, {"shift": -0.1})
    source, _ = generate_world_from_config(tmp_path, cfg, progress=False, workers=0)
    assert json.loads((tmp_path / MANIFEST).read_text())["seed"] == 3
    assert formats.gta5_paths(source, "00001").image.is_file()
