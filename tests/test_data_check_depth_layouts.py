"""`cordaseg data check` also checks the training trees of self-supervised depth."""

from __future__ import annotations

from cordaseg.cli import main
from cordaseg.data.synth import generate_tree


def test_cityscapes_stereo_tree_is_checked_by_data_check(tmp_path, capsys):
    root = generate_tree("cityscapes", tmp_path / "cs", 2, size=(128, 64), seed=0, depth="stereo")
    assert main(["data", "check", "--format", "cityscapes-stereo", "--root", str(root), "--no-progress"]) == 0
    right = sorted((root / "rightImg8bit" / "train").rglob("*_rightImg8bit.png"))
    right[0].unlink()
    assert main(["data", "check", "--format", "cityscapes-stereo", "--root", str(root), "--no-progress"]) == 1
    assert f"{right[0]}: missing file" in capsys.readouterr().out
