"""mIoU per range of ground-truth depth, on two 4x4 images whose confusions are counted by hand."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cordaseg.cli.evaluate import _depth_bins
from cordaseg.data.labels import IGNORE_INDEX
from cordaseg.evaluation.evaluate import EvalResult, evaluate_segmentation, write_csv, write_json
from cordaseg.evaluation.metrics import DepthBinnedConfusion, metres_from_depth_value
from cordaseg.models.output import CordaOutput

X = IGNORE_INDEX
INVALID = -1.0  # marks a pixel without depth in the tables below

# Image A: rows at 50, 30, 15 and 5 m; its top-left pixel has no depth.
LABEL_A = [[2, 2, 2, 2], [2, 2, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]]
PRED_A = [[2, 2, 2, 0], [2, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1]]
DEPTH_A = [[INVALID, 50, 50, 50], [30] * 4, [15] * 4, [5] * 4]
# Image B: rows at 45, 25, 12 and 3 m; its top-left label is ignored, its bottom-right pixel has no depth.
LABEL_B = [[X, 2, 2, 2], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
PRED_B = [[2, 2, 2, 2], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
DEPTH_B = [[45] * 4, [25] * 4, [12] * 4, [3, 3, 3, INVALID]]

# By hand, per range as (ground truth, prediction): count, then IoU = TP / (TP + FP + FN) per class
# present, mIoU over the classes present (in percent).
#   0-10 m  (row 4): (0,0) x6, (0,1) x1      road 6/7, sidewalk 0/1             -> 42.857, 7 px
#   10-20 m (row 3): (0,0) x5, (0,1), (1,0), (1,1)  road 5/7, sidewalk 1/3       -> 52.381, 8 px
#   20-40 m (row 2): (1,1) x4, (1,0) x2, (2,2), (2,1)  road 0/2, sidewalk 4/7, building 1/2 -> 35.714, 8 px
#   40+ m   (row 1): (2,2) x5, (2,0)         road 0/1, building 5/6             -> 41.667, 6 px
EXPECTED = {"0-10 m": (100 * (6 / 7 + 0) / 2, 7), "10-20 m": (100 * (5 / 7 + 1 / 3) / 2, 8),
            "20-40 m": (100 * (0 + 4 / 7 + 1 / 2) / 3, 8), "40+ m": (100 * (0 + 5 / 6) / 2, 6)}


def depth_value(metres: list[list[float]]) -> torch.Tensor:
    """Metres -> the loader's value 655.36 / (Z + 0.01); INVALID -> exactly 1.0."""
    z = torch.tensor(metres, dtype=torch.float64)
    return torch.where(z < 0, torch.ones_like(z), 655.36 / (z + 0.01)).float()


class ReadsPrediction(nn.Module):
    """Predicts the class written in image channel 0."""

    def forward(self, x: torch.Tensor) -> CordaOutput:
        classes = x[:, 0].round().long()
        return CordaOutput(semantic=F.one_hot(classes, 19).permute(0, 3, 1, 2).float())


def items() -> list[dict]:
    out = []
    for label, pred, depth in ((LABEL_A, PRED_A, DEPTH_A), (LABEL_B, PRED_B, DEPTH_B)):
        prediction = torch.tensor(pred, dtype=torch.float32)
        out.append({"image": torch.stack([prediction, torch.zeros(4, 4), torch.zeros(4, 4)]),
                    "label": torch.tensor(label), "depth": depth_value(depth)})
    return out


def test_depth_value_converts_back_to_metres():
    metres = metres_from_depth_value(depth_value([[5.0, 40.0, INVALID]]))
    assert metres[0, :2].tolist() == pytest.approx([5.0, 40.0], rel=1e-6)
    assert math.isnan(metres[0, 2])


def test_binned_confusion_counts_each_range_by_hand():
    binned = DepthBinnedConfusion((0, 10, 20, 40))
    for item in items():
        binned.update(item["image"][0].long(), item["label"], item["depth"])
    m = binned.numpy()
    assert m.shape == (4, 19, 19)
    assert (m[0, 0, 0], m[0, 0, 1], m[0].sum()) == (6, 1, 7)
    assert (m[1, 0, 0], m[1, 0, 1], m[1, 1, 0], m[1, 1, 1], m[1].sum()) == (5, 1, 1, 1, 8)
    assert (m[2, 1, 1], m[2, 1, 0], m[2, 2, 2], m[2, 2, 1], m[2].sum()) == (4, 2, 1, 1, 8)
    assert (m[3, 2, 2], m[3, 2, 0], m[3].sum()) == (5, 1, 6)


def test_evaluation_reports_miou_per_depth_range(tmp_path):
    result = evaluate_segmentation(ReadsPrediction(), items(), device="cpu", batch_size=2, progress=False)
    assert [b.name for b in result.depth_bins] == list(EXPECTED)
    for b in result.depth_bins:
        miou, pixels = EXPECTED[b.name]
        assert b.pixels == pixels
        assert b.miou[19] == pytest.approx(miou, abs=1e-9)
    assert "mIoU (19 classes) by ground-truth depth:" in result.format_table()
    assert "40+ m" in result.format_table()

    saved = json.loads(write_json(result, tmp_path / "scores.json").read_text())["depth_bins"]
    assert [(b["range"], b["min_m"], b["max_m"], b["pixels"]) for b in saved] == [
        ("0-10 m", 0.0, 10.0, 7), ("10-20 m", 10.0, 20.0, 8), ("20-40 m", 20.0, 40.0, 8), ("40+ m", 40.0, None, 6)]
    assert saved[3]["miou"]["19"] == pytest.approx(EXPECTED["40+ m"][0], abs=1e-4)
    assert saved[3]["iou"]["sidewalk"] is None  # no sidewalk beyond 40 m, neither labelled nor predicted
    rows = {row[0]: row[2] for row in csv.reader(write_csv(result, tmp_path / "scores.csv").open())}
    assert float(rows["mIoU19 depth 10-20 m"]) == pytest.approx(EXPECTED["10-20 m"][0], abs=1e-4)

    again = EvalResult.from_dict(json.loads((tmp_path / "scores.json").read_text()))
    assert again.to_dict() == result.to_dict()  # what a resumed benchmark reads back


def test_other_edges_and_no_depth():
    result = evaluate_segmentation(ReadsPrediction(), items(), device="cpu", progress=False, depth_bins=(20, 40))
    assert [(b.name, b.pixels) for b in result.depth_bins] == [("20-40 m", 8), ("40+ m", 6)]
    without = [{**item, "depth": torch.ones(4, 4)} for item in items()]  # all invalid: no depth files
    assert evaluate_segmentation(ReadsPrediction(), without, device="cpu", progress=False).depth_bins == []
    assert evaluate_segmentation(ReadsPrediction(), items(), device="cpu", progress=False,
                                 depth_bins=None).depth_bins == []


def test_cli_option_parses_edges():
    assert _depth_bins("0,10,20,40") == (0.0, 10.0, 20.0, 40.0)
    assert _depth_bins("none") is None
    for bad in ("10,5", "a,b", "-1,3"):
        with pytest.raises(Exception, match="lower edges"):
            _depth_bins(bad)
