"""``cordaseg evaluate`` and ``cordaseg predict`` end to end on a generated Cityscapes tree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cordaseg.cli import main
from cordaseg.data.synth import generate_tree
from cordaseg.models.checkpoint import atomic_save, model_payload
from cordaseg.models.corda import ModelConfig, build_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    tree = generate_tree("cityscapes", root / "cityscapes", num=2, size=(128, 64), seed=5,
                         depth="stereo", splits=("val",))
    torch.manual_seed(0)
    cfg = ModelConfig(backbone_depth=18, head_width=32, backbone_width=16)
    model = build_model(cfg)
    teacher = build_model(cfg)
    checkpoint = atomic_save(model_payload(model, cfg, teacher=teacher.state_dict()), root / "model.pt")
    return root, tree, checkpoint


@pytest.mark.slow
def test_evaluate_cli_writes_scores_and_report(setup, capsys):
    root, tree, checkpoint = setup
    report = root / "report"
    status = main(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(tree), "--input-size", "64x32",
                   "--num-workers", "0", "--no-progress", "--report", str(report), "--samples", "1",
                   "--device", "cpu"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "mIoU (19 classes)" in printed and "mIoU (13 classes)" in printed
    assert "depth head depth:" in printed  # --depth auto found the stereo files
    scores = json.loads((report / "scores.json").read_text())
    assert scores["num_images"] == 2 and set(scores["miou"]) == {"19", "16", "13"}
    # full resolution: every labelled pixel of the 128x64 labels is scored
    assert np.asarray(scores["confusion_matrix"]).sum() > 64 * 32
    for name in ("scores.csv", "confusion_matrix.png", "class_iou.png"):
        assert (report / name).is_file()
    assert len(list((report / "samples").glob("*.png"))) == 1


@pytest.mark.slow
def test_evaluate_cli_from_a_training_config_with_overrides_and_teacher(setup, capsys):
    root, tree, checkpoint = setup
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump({"model": {"backbone_depth": 18},
                                      "val": {"format": "cityscapes", "root": str(tree), "split": "val",
                                              "depth": "none", "eval_size": [64, 32]}}))
    status = main(["evaluate", "--checkpoint", str(checkpoint), "--config", str(config), "--weights", "teacher",
                   "--output-size", "input", "--num-workers", "0", "--no-progress", "--out", str(root / "t"),
                   "--flip", "--device", "cpu", "eval_size=[48,24]"])
    assert status == 0
    scores = json.loads((root / "t" / "scores.json").read_text())
    assert scores["depth"] == {}
    assert np.asarray(scores["confusion_matrix"]).sum() <= 2 * 48 * 24  # scored at the input size
    assert "(teacher)" in capsys.readouterr().out


def test_evaluate_cli_errors_name_the_problem(setup, capsys):
    root, tree, checkpoint = setup
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu"]) == 2
    assert "--config FILE and --data-root DIR" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(root / "nowhere"),
                 "--device", "cpu"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(tree), "--device", "cpu",
                 "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_predict_cli_on_a_folder(setup):
    root, tree, checkpoint = setup
    out = root / "pred"
    status = main(["predict", "--checkpoint", str(checkpoint), str(tree / "leftImg8bit" / "val"), "--out", str(out),
                   "--input-size", "64x32", "--label-ids", "--no-progress", "--device", "cpu"])
    assert status == 0
    files = sorted(p.relative_to(out).parts[0] for p in out.rglob("*.png"))
    assert files == ["color"] * 2 + ["depth"] * 2 + ["labelIds"] * 2 + ["overlay"] * 2
    for path in out.rglob("*.png"):
        with Image.open(path) as image:
            assert image.size == (128, 64)
