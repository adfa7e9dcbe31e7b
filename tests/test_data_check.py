"""``cordaseg data check`` and ``quick_check``: each planted defect is found, clean trees pass."""

import cv2
import numpy as np
import pytest

from cordaseg.cli import main
from cordaseg.data import formats
from cordaseg.data.check import check_tree, quick_check
from cordaseg.data.datasets import DatasetConfig, build_dataset, find_samples
from cordaseg.data.synth import generate_tree
from cordaseg.errors import DataError

SIZE = (48, 24)


def _tree(tmp_path, fmt, **kwargs):
    return generate_tree(fmt, tmp_path / fmt, 3, size=SIZE, seed=9, **kwargs)


def _problems(root, fmt="gta5", **cfg):
    report = check_tree(DatasetConfig(format=fmt, root=str(root), **cfg), workers=2, progress=False)
    return report, [(p.kind, p.path.name) for p in report.problems]


@pytest.mark.parametrize(("fmt", "cfg"), [
    ("gta5", {}),
    ("synthia", {}),
    ("synthia", {"synthia_labels": "raw"}),
    ("cityscapes", {}),
    ("cityscapes", {"depth": "mono"}),
    ("cityscapes", {"split": "val", "depth": "none"}),
])
def test_clean_trees_pass(tmp_path, fmt, cfg):
    report, problems = _problems(_tree(tmp_path, fmt), fmt, **cfg)
    assert problems == [] and report.ok
    assert report.counts["frames"] == 3 and report.counts["labels"] == 3
    assert report.counts["depth"] == (0 if cfg.get("depth") == "none" else 3)
    assert "no problems found" in report.summary()


def test_missing_label_partner(tmp_path):
    root = _tree(tmp_path, "gta5")
    (root / "labels" / "00002.png").unlink()
    report, problems = _problems(root)
    assert problems == [("missing", "00002.png")]
    assert "missing label file for image 00002.png" in str(report.problems[0])
    assert report.counts["labels"] == 2 and "1 missing" in report.summary()


@pytest.mark.parametrize("fmt", ["synthia", "cityscapes"])
def test_partner_files_without_an_image(tmp_path, fmt):
    root = _tree(tmp_path, fmt)
    record = find_samples(DatasetConfig(format=fmt, root=str(root)))[1]
    record.image.unlink()
    report, problems = _problems(root, fmt)
    assert sorted(problems) == sorted([("missing", record.label.name), ("missing", record.depth.name)])
    assert {p.message for p in report.problems} == {"label file without an image", "depth file without an image"}
    assert report.counts["frames"] == 2


def test_missing_depth_partner_and_sgm_disparity_hint(tmp_path):
    root = _tree(tmp_path, "cityscapes")
    record = find_samples(DatasetConfig(format="cityscapes", root=str(root)))[0]
    record.depth.unlink()
    _, problems = _problems(root, "cityscapes")
    assert problems == [("missing", record.depth.name)]
    mono = find_samples(DatasetConfig(format="cityscapes", root=str(root), depth="mono"))[1]
    sgm = mono.depth.with_name(mono.name + "_disparity.png")
    mono.depth.rename(sgm)
    report, problems = _problems(root, "cityscapes", depth="mono")
    assert problems == [("missing", mono.depth.name)]
    assert "SGM disparity" in report.problems[0].message


@pytest.mark.parametrize("folder", ["images", "labels", "disparity"])
def test_truncated_file(tmp_path, folder):
    root = _tree(tmp_path, "gta5")
    path = root / folder / "00003.png"
    path.write_bytes(path.read_bytes()[:200])
    report, problems = _problems(root)
    assert problems == [("unreadable", "00003.png")]
    assert str(path) in str(report.problems[0])


def test_unreadable_stereo_mat(tmp_path):
    root = _tree(tmp_path, "cityscapes")
    record = find_samples(DatasetConfig(format="cityscapes", root=str(root)))[2]
    record.depth.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    _, problems = _problems(root, "cityscapes")
    assert problems == [("unreadable", record.depth.name)]


def test_sizes_that_do_not_pair(tmp_path):
    root = _tree(tmp_path, "gta5")
    formats.write_uint16_png(root / "disparity" / "00001.png", np.full((20, 40), 5000, dtype=np.uint16))
    report, problems = _problems(root)
    assert problems == [("size", "00001.png")]
    assert "image 48x24" in report.problems[0].message and "depth 40x20" in report.problems[0].message
    # The fixed 1280x720 training resize makes the mismatch harmless: training may start.
    cfg = DatasetConfig(format="gta5", root=str(root), crop=(64, 64))
    assert quick_check(cfg) == 3
    item = build_dataset(cfg, train=True)[0]
    assert item["depth"].shape == (64, 64) and (item["depth"] > 1.0).all()


def test_wrong_bit_depth(tmp_path):
    root = _tree(tmp_path, "gta5")
    cv2.imwrite(str(root / "disparity" / "00002.png"), np.full(SIZE[::-1], 7, dtype=np.uint8))
    report, problems = _problems(root)
    assert problems == [("format", "00002.png")]
    assert "expected 16-bit" in report.problems[0].message


@pytest.mark.parametrize("defect", ["rgb_label", "grey_image", "single_channel_synthia_label"])
def test_wrong_channel_count(tmp_path, defect):
    if defect == "single_channel_synthia_label":
        root = _tree(tmp_path, "synthia")
        path = root / "GT" / "LABELS" / "0000001.png"
        formats.write_uint16_png(path, np.full(SIZE[::-1], 3, dtype=np.uint16))
        cfg = {"synthia_labels": "raw"}
        fmt = "synthia"
    else:
        root = _tree(tmp_path, "gta5")
        fmt, cfg = "gta5", {}
        if defect == "rgb_label":
            path = root / "labels" / "00001.png"
            formats.write_rgb_png(path, np.full((*SIZE[::-1], 3), 7, dtype=np.uint8))
        else:
            path = root / "images" / "00001.png"
            cv2.imwrite(str(path), np.full(SIZE[::-1], 90, dtype=np.uint8))
    report, problems = _problems(root, fmt, **cfg)
    assert problems == [("format", path.name)]
    assert str(path) in str(report.problems[0])


@pytest.mark.parametrize(("fmt", "value"), [("gta5", 40), ("synthia", 23)])
def test_label_values_outside_known_ids(tmp_path, fmt, value):
    root = _tree(tmp_path, fmt)
    record = find_samples(DatasetConfig(format=fmt, root=str(root)))[1]
    ids = np.full(SIZE[::-1], 7, dtype=np.uint8)
    ids[0, 0] = value
    formats.write_gray_label_png(record.label, ids)
    report, problems = _problems(root, fmt)
    assert problems == [("label_values", record.label.name)]
    assert f": {value}" in report.problems[0].message


def test_depth_all_invalid(tmp_path):
    root = _tree(tmp_path, "cityscapes")
    record = find_samples(DatasetConfig(format="cityscapes", root=str(root)))[1]
    formats.write_stereo_depth_mat(record.depth, np.zeros(SIZE[::-1]))  # stereo found nothing
    report, problems = _problems(root, "cityscapes")
    assert problems == [("depth_invalid", record.depth.name)]
    assert "invalid everywhere" in str(report.problems[0])


def test_missing_root_is_a_tree_problem(tmp_path):
    report, problems = _problems(tmp_path / "nowhere")
    assert [kind for kind, _ in problems] == ["tree"] and not report.ok


def test_cli_check_exit_codes_and_output(tmp_path, capsys):
    root = _tree(tmp_path, "cityscapes")
    assert main(["data", "check", "--format", "cityscapes", "--root", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cityscapes train" in out and "cityscapes val" in out and "no problems found" in out
    label = find_samples(DatasetConfig(format="cityscapes", root=str(root), split="val"))[0].label
    label.unlink()
    assert main(["data", "check", "--format", "cityscapes", "--root", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"{label}: missing label file" in out and "1 problems (1 missing)" in out
    assert main(["data", "check", "--format", "gta5", "--root", str(tmp_path / "none"), "--no-progress"]) == 1
    assert "dataset root not found" in capsys.readouterr().out
    assert main(["data", "check", "--format", "gta5", "--root", str(root), "--depth", "stereo"]) == 1
    assert "Cityscapes depth kind" in capsys.readouterr().err


def test_cli_synth_writes_a_tree_that_checks_clean(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--format", "synthia", "--out", str(out), "--num", "2", "--size", "40x24"]) == 0
    assert "wrote 2 synthia frames" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "RGB").iterdir()) == ["0000000.png", "0000001.png"]
    assert main(["data", "check", "--format", "synthia", "--root", str(out), "--synthia-labels", "raw",
                 "--no-progress"]) == 0
    with pytest.raises(SystemExit):
        main(["data", "synth", "--format", "gta5", "--out", str(out), "--size", "40by24"])
    with pytest.raises(SystemExit):
        main(["data", "synth", "--format", "gta5", "--out", str(out), "--num", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_quick_check(tmp_path):
    root = _tree(tmp_path, "gta5")
    cfg = DatasetConfig(format="gta5", root=str(root))
    assert quick_check(cfg) == 3
    formats.write_uint16_png(root / "disparity" / "00001.png", np.zeros((10, 10), dtype=np.uint16))
    assert quick_check(DatasetConfig(format="gta5", root=str(root), depth="none")) == 3
    with pytest.raises(DataError, match=r"00001.png: depth is invalid everywhere"):
        quick_check(cfg)
    (root / "disparity" / "00002.png").unlink()
    with pytest.raises(DataError, match=r"disparity/00002.png: missing depth file.*more problems.*data check"):
        quick_check(cfg)
