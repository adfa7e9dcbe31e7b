"""The world's exact target depth, written as a Cityscapes stereo tree beside the matcher's depth."""

from __future__ import annotations

import numpy as np
import pytest

from cordaseg.data import formats
from cordaseg.data.datasets import DatasetConfig, build_dataset
from cordaseg.errors import DataError
from cordaseg.world import generate_world, render_frame, target_domain
from cordaseg.world.export import EXACT_DEPTH_MANIFEST, WorldConfig, _frame_rng, export_exact_depth
from cordaseg.world.scene import SKY

CFG = WorldConfig(num_source=0, num_target_train=2, num_target_val=2, size=(96, 48), seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(out, 0, 2, 2, size=CFG.size, seed=CFG.seed, progress=False, workers=0)
    return out, export_exact_depth(out, CFG, progress=False, workers=0)


def test_the_frames_rendered_again_are_the_worlds_frames(world):
    out, _ = world
    for split, city in (("train", "synthtown"), ("val", "synthvale")):
        frame = render_frame(target_domain(CFG.shift), CFG.size, _frame_rng(CFG.seed, split, 1))
        paths = formats.cityscapes_paths(out / "target", split, city, f"{city}_000001_000019")
        np.testing.assert_array_equal(formats.read_image_rgb(paths.image), frame.rgb)


def test_exact_depth_agrees_with_the_stereo_matcher_and_is_complete(world):
    out, tree = world
    frame_id = "synthtown_000000_000019"
    exact = formats.read_stereo_depth_mat(formats.cityscapes_paths(tree, "train", "synthtown", frame_id).depth)
    matcher = formats.read_stereo_depth_mat(formats.cityscapes_paths(out / "target", "train", "synthtown",
                                                                     frame_id).depth)
    sky = formats.read_label_ids(formats.cityscapes_paths(tree, "train", "synthtown", frame_id).label) == SKY
    assert sky.any() and (exact[sky] == 0).all() and (exact[~sky] > 0).all()  # depth everywhere but the sky
    both = (matcher > 0) & (exact > 0)
    assert both.mean() > 0.3 and (exact > 0).sum() > (matcher > 0).sum()  # the matcher leaves holes
    assert np.median(np.abs(matcher[both] - exact[both]) / exact[both]) < 0.05


def test_the_tree_reads_with_val_depth_and_links_the_images(world):
    out, tree = world
    assert (tree / "leftImg8bit").is_symlink() and not (tree / "depth").is_symlink()
    val = build_dataset(DatasetConfig(format="cityscapes", root=str(tree), split="val", depth="stereo",
                                      eval_size=CFG.size), train=False)
    assert len(val) == 2
    depth = val[0]["depth"]
    assert depth.shape == (48, 96) and (depth != 1.0).float().mean() > 0.5
    assert not (out / "target" / "depth" / "val").exists()  # the world's own tree is left as it was


def test_second_call_is_cached_and_a_missing_world_is_an_error(world, tmp_path):
    out, tree = world
    stamp = (tree / EXACT_DEPTH_MANIFEST).stat().st_mtime_ns
    assert export_exact_depth(out, CFG, progress=False, workers=0) == tree
    assert export_exact_depth(out, CFG, splits=("val",), progress=False, workers=0) == tree  # fewer splits
    assert (tree / EXACT_DEPTH_MANIFEST).stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="no finished world"):
        export_exact_depth(tmp_path, CFG, progress=False)
