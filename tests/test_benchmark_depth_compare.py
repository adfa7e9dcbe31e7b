"""benchmarks/compare_depth_trees.py scores a tree against itself as perfect and a scaled copy as off."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from cordaseg.data.formats import read_stereo_depth_mat, write_stereo_depth_mat
from cordaseg.data.synth import generate_tree

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "compare_depth_trees.py"


def _compare(a: Path, b: Path) -> str:
    result = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_identical_and_scaled_trees(tmp_path):
    tree = generate_tree("cityscapes", tmp_path / "a", 2, size=(64, 32), seed=0, depth="stereo")
    assert "AbsRel 0.000" in _compare(tree, tree)
    scaled = tmp_path / "b"
    shutil.copytree(tree, scaled)
    for path in scaled.glob("depth/train/*/*.mat"):
        write_stereo_depth_mat(path, read_stereo_depth_mat(path) * 1.5)
    out = _compare(scaled, tree)
    assert "AbsRel 0.500" in out and "delta<1.25 0.000" in out
