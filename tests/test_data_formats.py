"""File encodings of docs/data-formats.md: decoders at known values, writers/readers round trips, traps."""

import cv2
import numpy as np
import pytest
from PIL import Image

from cordaseg.data import formats
from cordaseg.data.labels import (
    CITYSCAPES_ID_TO_TRAIN,
    CITYSCAPES_TRAIN_LABEL_IDS,
    SYNTHIA_ID_TO_TRAIN,
    SYNTHIA_TO_TRAIN,
)
from cordaseg.errors import DataError


def test_gta_disparity_decodes_to_v_over_256_plus_1():
    raw = np.array([[0, 256, 25600, 65535]], dtype=np.uint16)
    decoded = formats.decode_gta_disparity(raw)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, [[1.0, 2.0, 101.0, 65535 / 256 + 1]])
    np.testing.assert_array_equal(formats.decode_mono_disparity(raw), decoded)
    assert formats.decode_gta_disparity(raw)[0, 0] == formats.INVALID_DEPTH


def test_encode_gta_disparity_inverts_the_decoder():
    raw = np.arange(0, 65536, 97, dtype=np.uint16)
    np.testing.assert_array_equal(formats.encode_gta_disparity(formats.decode_gta_disparity(raw)), raw)


def test_synthia_depth_formula_at_known_values():
    raw = np.array([1000, 0, 65535, 150], dtype=np.uint16)
    decoded = formats.decode_synthia_depth(raw)
    expected = np.float32([655.36 / 10.01, 655.36 / 0.01, 1.0, 655.36 / 1.51])
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(formats.encode_synthia_depth(np.array([10.0, 1.5])), [1000, 150])


def test_stereo_depth_formula_and_invalid_values():
    depth_m = np.array([0.05, 0.0, -3.0, np.nan, np.inf, 0.1, 10.0, 1000.0])
    decoded = formats.decode_stereo_depth(depth_m)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded[:5], 1.0)  # below 0.1 m and non-finite: exactly invalid
    np.testing.assert_allclose(decoded[5:], np.float32([655.36 / 0.11, 655.36 / 10.01, 1.0]), rtol=1e-7)


def test_palette_label_png_keeps_ids_and_cv2_would_not(tmp_path):
    ids = np.arange(34, dtype=np.uint8).repeat(3).reshape(6, 17)
    path = tmp_path / "labels" / "00001.png"
    formats.write_palette_label_png(path, ids)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[3 * 7: 3 * 7 + 3] == [128, 64, 128]  # road's colour at ID 7
    np.testing.assert_array_equal(formats.read_label_ids(path), ids)
    # The trap the reader avoids: OpenCV returns palette colours, not IDs.
    assert cv2.imread(str(path)).shape == (6, 17, 3)


def test_grey_label_png_round_trip(tmp_path):
    ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
    formats.write_gray_label_png(tmp_path / "a.png", ids)
    np.testing.assert_array_equal(formats.read_label_ids(tmp_path / "a.png"), ids)


def test_synthia_label_is_16_bit_class_in_red(tmp_path):
    class_ids = np.array([[0, 3, 22, 300]], dtype=np.uint16)
    instance_ids = np.array([[0, 1, 4000, 65535]], dtype=np.uint16)
    path = tmp_path / "GT" / "LABELS" / "0000000.png"
    formats.write_synthia_label_png(path, class_ids, instance_ids)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (1, 4, 3)
    read_class, read_instance = formats.read_synthia_label(path)
    np.testing.assert_array_equal(read_class, class_ids)
    np.testing.assert_array_equal(read_instance, instance_ids)
    with Image.open(path) as image:  # PIL only sees 8 bits per channel here: the trap
        assert image.mode == "RGB"


def test_synthia_depth_png_reads_red_channel_not_channel_average(tmp_path):
    depth_cm = np.array([[1000, 2000], [65535, 5]], dtype=np.uint16)
    path = tmp_path / "d.png"
    formats.write_synthia_depth_png(path, depth_cm)
    np.testing.assert_array_equal(formats.read_uint16_png(path), depth_cm)
    averaged = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
    assert not np.array_equal(averaged, depth_cm)


def test_uint16_png_round_trip_through_cv2_and_pil(tmp_path):
    array = np.array([[0, 1, 25600, 65535]], dtype=np.uint16)
    formats.write_uint16_png(tmp_path / "u.png", array)
    np.testing.assert_array_equal(formats.read_uint16_png(tmp_path / "u.png"), array)
    with Image.open(tmp_path / "u.png") as image:
        np.testing.assert_array_equal(np.asarray(image), array)


def test_stereo_mat_and_camera_json_round_trip(tmp_path):
    depth = np.array([[0.0, 1.5], [20.0, 700.0]], dtype=np.float32)
    formats.write_stereo_depth_mat(tmp_path / "x_depth_stereoscopic.mat", depth)
    np.testing.assert_array_equal(formats.read_stereo_depth_mat(tmp_path / "x_depth_stereoscopic.mat"), depth)
    formats.write_camera_json(tmp_path / "c.json", baseline=0.21, fx=2262.5, fy=2265.3, u0=1096.9, v0=513.1)
    assert formats.read_camera_json(tmp_path / "c.json") == {
        "baseline": 0.21, "fx": 2262.5, "fy": 2265.3, "u0": 1096.9, "v0": 513.1}


def test_rgb_png_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    formats.write_rgb_png(tmp_path / "i.png", rgb)
    np.testing.assert_array_equal(formats.read_image_rgb(tmp_path / "i.png"), rgb)
    np.testing.assert_array_equal(formats.read_image_bgr(tmp_path / "i.png"), rgb[..., ::-1])


def test_readers_name_missing_and_broken_files(tmp_path):
    with pytest.raises(DataError, match="nothere.png: file not found"):
        formats.read_image_bgr(tmp_path / "nothere.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for reader in (formats.read_image_bgr, formats.read_label_ids, formats.read_uint16_png):
        with pytest.raises(DataError, match="broken.png"):
            reader(broken)
    (tmp_path / "bad.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="bad.mat"):
        formats.read_stereo_depth_mat(tmp_path / "bad.mat")


def test_every_mapping_table_entry():
    for label_id in range(256):
        expected = CITYSCAPES_TRAIN_LABEL_IDS.index(label_id) if label_id in CITYSCAPES_TRAIN_LABEL_IDS else 255
        assert CITYSCAPES_ID_TO_TRAIN[label_id] == expected
    for synthia_id in range(65536):
        assert SYNTHIA_ID_TO_TRAIN[synthia_id] == SYNTHIA_TO_TRAIN.get(synthia_id, 255)
    assert sorted(SYNTHIA_TO_TRAIN.values()) == list(range(19))


def test_layout_paths():
    paths = formats.gta5_paths("/r", "00042")
    assert (str(paths.image), str(paths.label), str(paths.depth)) == (
        "/r/images/00042.png", "/r/labels/00042.png", "/r/disparity/00042.png")
    raw = formats.synthia_paths("/r", "0000007", "raw")
    assert (str(raw.label), str(raw.depth)) == ("/r/GT/LABELS/0000007.png", "/r/Depth/Depth/0000007.png")
    assert str(formats.synthia_paths("/r", "0000007").label) == "/r/synthia_mapped_to_cityscapes/0000007.png"
    ref = formats.cityscapes_paths("/r", "train", "aachen", "aachen_000000_000019", "trainvaltest", "mono")
    assert str(ref.image) == "/r/leftImg8bit_trainvaltest/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert str(ref.label) == "/r/gtFine_trainvaltest/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    assert str(ref.depth) == "/r/disparity/train/aachen/aachen_000000_000019_leftImg8bit.png"
    stereo = formats.cityscapes_paths("/r", "train", "aachen", "aachen_000000_000019")
    assert str(stereo.depth) == "/r/depth/train/aachen/aachen_000000_000019_depth_stereoscopic.mat"
    assert str(formats.cityscapes_right_image_path("/r", "val", "lindau", "x")) == "/r/rightImg8bit/val/lindau/x_rightImg8bit.png"
    assert str(formats.cityscapes_camera_path("/r", "val", "lindau", "x")) == "/r/camera/val/lindau/x_camera.json"
