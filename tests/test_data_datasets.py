"""Datasets of docs/data-formats.md on generated trees: decoded values, ID mappings, geometry, configs."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cordaseg.config import ConfigError, from_dict, to_dict
from cordaseg.data import formats, transforms
from cordaseg.data.datasets import NATIVE_DEPTH, DatasetConfig, build_dataset, find_samples, read_depth
from cordaseg.data.labels import CITYSCAPES_ID_TO_TRAIN, SYNTHIA_ID_TO_TRAIN
from cordaseg.data.normalization import CAFFE_MEAN_BGR
from cordaseg.data.synth import generate_tree
from cordaseg.errors import DataError

SIZE = (64, 32)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    return {
        "gta5": generate_tree("gta5", base / "gta5", 3, size=SIZE, seed=1),
        "synthia": generate_tree("synthia", base / "synthia", 3, size=SIZE, seed=2),
        "cityscapes": generate_tree("cityscapes", base / "cityscapes", 2, size=SIZE, seed=3),
        "reference": generate_tree("cityscapes", base / "reference", 2, size=SIZE, seed=4, depth="mono",
                                   layout="trainvaltest", splits=("train",)),
    }


def _eval_item(cfg, index=0):
    return build_dataset(cfg, train=False)[index]


@pytest.mark.parametrize("fmt", ["gta5", "synthia", "cityscapes"])
def test_training_item_contract(trees, fmt):
    dataset = build_dataset(DatasetConfig(format=fmt, root=str(trees[fmt])), train=True, seed=5)
    item = dataset[1]
    assert item["image"].shape == (3, 512, 512) and item["image"].dtype == torch.float32
    assert item["label"].shape == (512, 512) and item["label"].dtype == torch.int64
    assert item["depth"].shape == (512, 512) and item["depth"].dtype == torch.float32
    values = set(item["label"].unique().tolist())
    assert values <= set(range(19)) | {255} and len(values - {255}) >= 2
    assert (item["depth"] >= 1.0).all() and (item["depth"] > 1.0).any()
    assert item["original_size"].tolist() == [SIZE[1], SIZE[0]]
    assert item["index"] == 1 and item["name"] == dataset.records[1].name


def test_gta_depth_and_label_values_at_known_pixels(trees, tmp_path):
    root = tmp_path / "gta"
    generate_tree("gta5", root, 1, size=(16, 16))
    disparity = np.zeros((16, 16), dtype=np.uint16)
    disparity[3, 5] = 25600
    formats.write_uint16_png(root / "disparity" / "00001.png", disparity)
    label_ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
    formats.write_palette_label_png(root / "labels" / "00001.png", label_ids)
    item = _eval_item(DatasetConfig(format="gta5", root=str(root), eval_size=None))
    assert item["depth"][3, 5] == 101.0 and item["depth"][0, 0] == 1.0
    np.testing.assert_array_equal(item["label"].numpy(), CITYSCAPES_ID_TO_TRAIN[label_ids])


def test_cityscapes_stereo_depth_values_and_palette_labels(tmp_path):
    root = tmp_path / "cs"
    generate_tree("cityscapes", root, 1, size=(16, 16), splits=("train",))
    paths = find_samples(DatasetConfig(format="cityscapes", root=str(root)))[0]
    depth_m = np.full((16, 16), 20.0, dtype=np.float32)
    depth_m[2, 3] = 0.05
    depth_m[4, 4] = 10.0
    formats.write_stereo_depth_mat(paths.depth, depth_m)
    label_ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
    formats.write_palette_label_png(paths.label, label_ids)  # palette labels are read as IDs too
    item = _eval_item(DatasetConfig(format="cityscapes", root=str(root), eval_size=None))
    assert item["depth"][2, 3] == 1.0
    assert item["depth"][4, 4] == np.float32(655.36 / 10.01)
    np.testing.assert_array_equal(item["label"].numpy(), CITYSCAPES_ID_TO_TRAIN[label_ids])


def test_synthia_depth_and_both_label_kinds(tmp_path):
    root = tmp_path / "syn"
    generate_tree("synthia", root, 1, size=(16, 16))
    depth_cm = np.full((16, 16), 2000, dtype=np.uint16)
    depth_cm[1, 2] = 1000
    formats.write_synthia_depth_png(root / "Depth" / "Depth" / "0000000.png", depth_cm)
    mapped = np.arange(256, dtype=np.uint8).reshape(16, 16)
    formats.write_gray_label_png(root / "synthia_mapped_to_cityscapes" / "0000000.png", mapped)
    raw = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    raw.reshape(-1)[:23] = np.arange(23)  # every SYNTHIA class ID, plus large values that must be ignored
    formats.write_synthia_label_png(root / "GT" / "LABELS" / "0000000.png", raw, raw[::-1])
    item = _eval_item(DatasetConfig(format="synthia", root=str(root), eval_size=None))
    assert item["depth"][1, 2] == np.float32(655.36 / 10.01)
    np.testing.assert_array_equal(item["label"].numpy(), SYNTHIA_ID_TO_TRAIN[mapped])
    raw_item = _eval_item(DatasetConfig(format="synthia", root=str(root), eval_size=None, synthia_labels="raw"))
    np.testing.assert_array_equal(raw_item["label"].numpy(), SYNTHIA_ID_TO_TRAIN[raw])
    assert raw_item["label"][0, 3] == 0 and raw_item["label"][2, 0] == 255


def test_synth_cli_writes_synthia_depth_in_three_equal_channels(tmp_path):
    from cordaseg.cli import main

    assert main(["data", "synth", "--format", "synthia", "--out", str(tmp_path), "--num", "1",
                 "--size", "40x24", "--seed", "3"]) == 0
    path = str(tmp_path / "Depth" / "Depth" / "0000000.png")
    stored = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16 and stored.shape == (24, 40, 3)
    np.testing.assert_array_equal(stored[..., 0], stored[..., 2])
    np.testing.assert_array_equal(stored[..., 1], stored[..., 2])
    np.testing.assert_array_equal(cv2.imread(path, cv2.IMREAD_ANYDEPTH), stored[..., 2])  # the reference's read
    centimetres = stored[..., 2].astype(np.float64)
    assert len(np.unique(centimetres)) > 5 and (centimetres == 65535).any()  # the sky saturates 16 bits
    item = _eval_item(DatasetConfig(format="synthia", root=str(tmp_path), eval_size=None))
    expected = (655.36 / (centimetres / 100 + 0.01)).astype(np.float32)
    np.testing.assert_allclose(item["depth"].numpy(), expected, rtol=1e-6)
    assert (item["depth"].numpy()[centimetres == 65535] == 1.0).all()


def _reference_crop(array, resample, target, window, flip, library="pil"):
    """Resize the whole frame with PIL or OpenCV, then crop: what the one-step geometry must equal."""
    if library == "opencv":
        full = cv2.resize(array, target, interpolation=transforms.CV2_INTERPOLATION[resample])
    else:
        full = np.asarray(Image.fromarray(array).resize(target, transforms.RESAMPLE[resample]))
    x0, y0, w, h = window
    crop = full[y0:y0 + h, x0:x0 + w]
    return crop[:, ::-1] if flip else crop


@pytest.mark.parametrize(("fmt", "image_rs", "depth_rs", "extra"), [
    ("gta5", "bicubic", "bilinear", {}),
    ("synthia", "bicubic", "nearest", {}),
    ("cityscapes", "bilinear", "nearest", {}),
    ("gta5", "bicubic", "bilinear", {"flip": True, "scale_range": (0.5, 1.5), "crop": (300, 200)}),
])
def test_crop_equals_crop_of_fully_resized_frame_per_modality(trees, fmt, image_rs, depth_rs, extra):
    cfg = DatasetConfig(format=fmt, root=str(trees[fmt]), **extra)
    dataset = build_dataset(cfg, train=True, seed=11)
    dataset.set_epoch(3)
    item = dataset[1]
    record = dataset.records[1]
    image = formats.read_image_bgr(record.image)
    source = (image.shape[1], image.shape[0])
    resize, scale = cfg.target_resize()
    target = transforms.resized_size(source, resize, scale)
    assert target == ((1280, 720) if fmt != "cityscapes" else (SIZE[0] // 2, SIZE[1] // 2))
    geometry = transforms.sample_geometry(np.random.default_rng([11, 3, 1]), source, target, cfg.crop,
                                          cfg.scale_range, cfg.flip)
    x0, y0, w, h = geometry.window
    assert (w, h) == cfg.crop
    if fmt != "cityscapes":  # frames larger than the crop: the window lies inside the frame
        assert 0 <= x0 <= geometry.target_size[0] - w and 0 <= y0 <= geometry.target_size[1] - h
        expected_image = _reference_crop(image, image_rs, geometry.target_size, geometry.window, geometry.flip)
        got = item["image"].numpy().transpose(1, 2, 0) + np.float32(CAFFE_MEAN_BGR)
        assert np.abs(got - expected_image).max() <= 1.0 + 1e-3
        from cordaseg.data.datasets import read_label_train_ids
        label = read_label_train_ids(cfg, record.label)
        np.testing.assert_array_equal(item["label"].numpy(), _reference_crop(
            label, "nearest", geometry.target_size, geometry.window, geometry.flip))
        depth = read_depth(cfg.depth_kind, record.depth)
        # GTA5 and SYNTHIA depth: OpenCV on the whole decoded frame, as the reference, exactly.
        expected_depth = _reference_crop(depth, depth_rs, geometry.target_size, geometry.window, geometry.flip,
                                         "opencv")
        np.testing.assert_array_equal(item["depth"].numpy(), expected_depth)
        source_values = set(np.unique(depth).tolist())
        new_values = set(np.unique(item["depth"].numpy()).tolist()) - source_values
        assert bool(new_values) == (depth_rs == "bilinear")  # nearest never invents values
    else:  # half of 64x32 is smaller than the crop: the frame sits inside ignore / invalid padding
        label = item["label"].numpy()
        inside = label[-y0:-y0 + SIZE[1] // 2, -x0:-x0 + SIZE[0] // 2]
        assert (label == 255).sum() >= 512 * 512 - inside.size
        assert (item["depth"].numpy() == 1.0).sum() >= 512 * 512 - inside.size
        assert np.abs(item["image"].numpy()[:, 0 if y0 < 0 else -1, :]).max() < 0.5  # mean colour padding


REAL_SIZES = {"gta5": (1914, 1052), "synthia": (1280, 760)}


def _real_size_tree_with_noisy_depth(fmt, root):
    """One frame at the real size: noise image and labels, noisy depth with 5% of the pixels and
    40x40 blocks on a 200-pixel grid exactly invalid (bilinear keeps 1.0 only inside a block)."""
    generate_tree(fmt, root, 1, size=(16, 16))
    record = find_samples(DatasetConfig(format=fmt, root=str(root)))[0]
    width, height = REAL_SIZES[fmt]
    rng = np.random.default_rng(9)
    formats.write_rgb_png(record.image, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    label_ids = rng.integers(0, 34, (height, width), dtype=np.uint8)
    raw = rng.integers(1, 65535, (height, width), dtype=np.uint16)
    rows, cols = np.indices(raw.shape)
    blocks = (rows % 200 < 40) & (cols % 200 < 40)
    if fmt == "gta5":
        formats.write_palette_label_png(record.label, label_ids)
        raw[(rng.random(raw.shape) < 0.05) | blocks] = 0  # disparity 0 decodes to exactly 1.0
        formats.write_uint16_png(record.depth, raw)
    else:
        formats.write_gray_label_png(record.label, label_ids)
        raw[(rng.random(raw.shape) < 0.05) | blocks] = 65535  # 655.35 m decodes to exactly 1.0
        formats.write_synthia_depth_png(record.depth, raw)
    return record


@pytest.mark.parametrize(("fmt", "interpolation"), [("gta5", cv2.INTER_LINEAR), ("synthia", cv2.INTER_NEAREST)])
def test_training_depth_is_cv2_resize_of_the_full_frame_then_crop(tmp_path, fmt, interpolation):
    record = _real_size_tree_with_noisy_depth(fmt, tmp_path / fmt)
    full = cv2.resize(read_depth(NATIVE_DEPTH[fmt], record.depth), (1280, 720), interpolation=interpolation)
    cfg = DatasetConfig(format=fmt, root=str(tmp_path / fmt))
    assert cfg.depth_backend == "opencv"
    pil_cfg = DatasetConfig(format=fmt, root=str(tmp_path / fmt), depth_resize="pil")
    dataset, pil_dataset = build_dataset(cfg, train=True, seed=4), build_dataset(pil_cfg, train=True, seed=4)
    for epoch in (0, 1, 2):
        item = dataset[(epoch, 0)]
        geometry = transforms.sample_geometry(np.random.default_rng([4, epoch, 0]), REAL_SIZES[fmt], (1280, 720),
                                              (512, 512))
        x0, y0, w, h = geometry.window
        depth = item["depth"].numpy()
        assert depth.dtype == np.float32
        np.testing.assert_array_equal(depth, full[y0:y0 + h, x0:x0 + w])
        assert (depth == 1.0).any()
        # depth_resize=pil keeps the PIL path: the same crop, other values and other invalid pixels
        pil_item = pil_dataset[(epoch, 0)]
        torch.testing.assert_close(pil_item["image"], item["image"])
        torch.testing.assert_close(pil_item["label"], item["label"])
        pil_depth = pil_item["depth"].numpy()
        assert not np.array_equal(pil_depth, depth) and not np.array_equal(pil_depth == 1.0, depth == 1.0)


def test_depth_resize_reference_per_format_and_config_errors():
    assert DatasetConfig(format="cityscapes").depth_backend == "pil"  # the reference's PIL crop transforms
    assert DatasetConfig(format="cityscapes", depth_resize="opencv").depth_backend == "opencv"
    assert DatasetConfig(format="synthia", depth_resize="pil").depth_backend == "pil"
    with pytest.raises(ConfigError, match="depth_resize"):
        from_dict(DatasetConfig, {"format": "gta5", "depth_resize": "scipy"})


def test_randomness_depends_only_on_seed_epoch_and_index(trees):
    cfg = DatasetConfig(format="gta5", root=str(trees["gta5"]), crop=(64, 64))
    first = build_dataset(cfg, train=True, seed=7)
    second = build_dataset(cfg, train=True, seed=7)
    torch.testing.assert_close(first[(4, 1)]["image"], second[(4, 1)]["image"])
    second.set_epoch(4)
    torch.testing.assert_close(first[(4, 1)]["depth"], second[1]["depth"])
    assert not torch.equal(first[(4, 1)]["image"], first[(5, 1)]["image"])
    assert not torch.equal(first[(4, 1)]["image"], build_dataset(cfg, train=True, seed=8)[(4, 1)]["image"])


def test_cityscapes_evaluation_item_and_reference_layout(trees):
    cfg = DatasetConfig(format="cityscapes", root=str(trees["cityscapes"]), split="val", depth="none",
                        eval_size=(32, 16))
    dataset = build_dataset(cfg, train=False)
    assert len(dataset) == 2 and dataset.records[0].extra["city"] in ("frankfurt", "lindau")
    item = dataset[0]
    assert item["image"].shape == (3, 16, 32)
    assert item["label"].shape == (SIZE[1], SIZE[0]) and (item["depth"] == 1.0).all()
    assert item["name"].endswith("_000019") and item["image_path"].endswith("_leftImg8bit.png")

    mono = DatasetConfig(format="cityscapes", root=str(trees["reference"]), depth="mono", eval_size=None)
    records = find_samples(mono)
    assert "leftImg8bit_trainvaltest" in str(records[0].image) and records[0].extra["layout"] == "trainvaltest"
    raw = formats.read_uint16_png(records[0].depth)
    np.testing.assert_array_equal(_eval_item(mono)["depth"].numpy(), formats.decode_mono_disparity(raw))


def test_list_file_and_unlabelled_target(trees, tmp_path):
    list_file = tmp_path / "list.txt"
    list_file.write_text("# subset\n00003.png\n\n00001.png\n")
    cfg = DatasetConfig(format="gta5", root=str(trees["gta5"]), list_file=str(list_file), use_labels=False)
    dataset = build_dataset(cfg, train=True)
    assert [r.name for r in dataset.records] == ["00003", "00001"]
    assert (dataset[0]["label"] == 255).all()
    cs_list = tmp_path / "cs.txt"
    cs_list.write_text("bochum/bochum_000000_000020_leftImg8bit.png\n")
    cs = DatasetConfig(format="cityscapes", root=str(trees["cityscapes"]), list_file=str(cs_list))
    assert [r.name for r in find_samples(cs)] == ["bochum_000000_000020"]


def test_config_round_trip_and_errors(tmp_path):
    cfg = from_dict(DatasetConfig, {"format": "synthia", "root": "/x", "crop": [256, 128], "flip": True})
    assert cfg.crop == (256, 128) and from_dict(DatasetConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="Cityscapes depth kind"):
        DatasetConfig(format="gta5", depth="stereo")
    with pytest.raises(ConfigError, match="cropp"):
        from_dict(DatasetConfig, {"cropp": [1, 2]})
    with pytest.raises(ConfigError, match="resize"):
        DatasetConfig(resize=(10, 10), resize_scale=0.5)
    with pytest.raises(DataError, match="dataset root not found"):
        build_dataset(DatasetConfig(root=str(tmp_path / "missing")), train=True)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no gta5 frames"):
        build_dataset(DatasetConfig(root=str(tmp_path)), train=True)


def test_cat_max_ratio_recrops_until_no_class_dominates(tmp_path):
    root = tmp_path / "gta"
    generate_tree("gta5", root, 1, size=(64, 16))
    ids = np.full((16, 64), 7, dtype=np.uint8)  # road (train ID 0) ...
    ids[:, 24:40] = 26  # ... and a car (train ID 13) in the middle quarter of the frame
    ids[:4, :] = 0  # unlabelled rows (ignore): not counted
    formats.write_palette_label_png(root / "labels" / "00001.png", ids)
    common = dict(format="gta5", root=str(root), depth="none", resize=(64, 16), crop=(16, 16))
    plain = build_dataset(DatasetConfig(**common), train=True, seed=0)
    ruled = build_dataset(DatasetConfig(**common, cat_max_ratio=0.75), train=True, seed=0)

    def passes(label: torch.Tensor) -> bool:
        # 12 labelled rows: a window passes with 5-11 of its 16 columns on the car (x0 13-19 or 29-35 of 0-48).
        return not transforms.dominated(label.numpy().astype(np.uint8), 0.75, 255)

    draws = 60
    plain_pass = ruled_pass = 0
    for draw in range(draws):
        first, item = plain[(0, 0, draw)]["label"], ruled[(0, 0, draw)]["label"]
        plain_pass += passes(first)
        ruled_pass += passes(item)
        if passes(first):
            assert torch.equal(item, first)  # a first crop that passes is kept
    # One window passes with probability 14/49; with up to 10 more tries, 1 - (35/49)^11 ~ 0.975.
    assert plain_pass / draws < 0.5 and ruled_pass / draws > 0.9


def test_cat_max_ratio_keeps_the_eleventh_crop_of_a_single_class_frame(tmp_path):
    root = tmp_path / "gta"
    generate_tree("gta5", root, 1, size=(64, 16))
    formats.write_palette_label_png(root / "labels" / "00001.png", np.full((16, 64), 7, dtype=np.uint8))
    cfg = DatasetConfig(format="gta5", root=str(root), depth="none", resize=(64, 16), crop=(16, 16),
                        cat_max_ratio=0.75)
    dataset = build_dataset(cfg, train=True, seed=3)
    rng = np.random.default_rng([3, 0, 0, 5])
    geometry = transforms.sample_geometry(rng, (64, 16), (64, 16), (16, 16))
    for _ in range(10):
        geometry = transforms.draw_window(rng, (64, 16), (16, 16))
    x0 = geometry[0]
    image = dataset[(0, 0, 5)]["image"]
    whole = build_dataset(DatasetConfig(format="gta5", root=str(root), depth="none", resize=(64, 16), crop=None),
                          train=True, seed=3)[(0, 0, 5)]["image"]
    torch.testing.assert_close(image, whole[:, :, x0:x0 + 16], rtol=0, atol=0)


def test_cat_max_ratio_errors():
    with pytest.raises(ConfigError, match="cat_max_ratio"):
        DatasetConfig(cat_max_ratio=0.0)
    with pytest.raises(ConfigError, match="use_labels"):
        DatasetConfig(cat_max_ratio=0.75, use_labels=False)
