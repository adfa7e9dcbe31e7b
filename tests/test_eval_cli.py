"""``cordaseg evaluate`` and ``cordaseg predict`` end to end on generated Cityscapes, GTA5 and
SYNTHIA trees."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from cordaseg.cli import main
from cordaseg.cli.evaluate import build_eval_dataset
from cordaseg.data.datasets import DatasetConfig, build_dataset, read_label_train_ids
from cordaseg.data.labels import NUM_CLASSES, PROTOCOLS
from cordaseg.data.synth import generate_tree
from cordaseg.models.checkpoint import model_payload
from cordaseg.models.corda import ModelConfig, build_model
from cordaseg.models.output import CordaOutput
from cordaseg.runtime.files import atomic_save


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


SOURCE_SIZE = (64, 32)


@pytest.fixture(scope="module")
def source_trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("source_trees")
    return {fmt: generate_tree(fmt, root / fmt, num=2, size=SOURCE_SIZE, seed=seed)
            for fmt, seed in (("gta5", 6), ("synthia", 7))}


def _eval_args(**given) -> argparse.Namespace:
    values = {"config": None, "data_root": None, "format": None, "split": None, "depth": "auto", "input_size": None,
              "max_images": 0, "overrides": []}
    return argparse.Namespace(**{**values, **given})


def test_source_trees_are_evaluated_at_their_training_size_with_full_resolution_labels(source_trees):
    for fmt, tree in source_trees.items():
        dataset = build_eval_dataset(_eval_args(data_root=str(tree), format=fmt))
        assert dataset.cfg.format == fmt and dataset.cfg.depth == "native"  # --depth auto found the files
        item = dataset[0]
        assert item["image"].shape == (3, 720, 1280)
        assert item["label"].shape == item["depth"].shape == (SOURCE_SIZE[1], SOURCE_SIZE[0])
    cityscapes = DatasetConfig(format="cityscapes")
    assert cityscapes.eval_size == "auto" and cityscapes.target_eval_size() == (1024, 512)
    assert DatasetConfig(format="synthia", eval_size=None).target_eval_size() is None


@pytest.mark.parametrize("fmt", ["gta5", "synthia"])
def test_evaluate_cli_on_a_source_domain_tree(setup, source_trees, fmt, capsys):
    root, _, checkpoint = setup
    tree, out = source_trees[fmt], root / f"source_{fmt}"
    status = main(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(tree), "--format", fmt,
                   "--input-size", "64x32", "--num-workers", "0", "--no-progress", "--out", str(out), "--device", "cpu"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "mIoU (19 classes)" in printed and "mIoU (16 classes)" in printed and "mIoU (13 classes)" in printed
    assert "depth head depth:" in printed  # the tree's own depth files
    scores = json.loads((out / "scores.json").read_text())
    assert scores["num_images"] == 2 and (out / "scores.csv").is_file()
    # Every labelled pixel of the full-resolution labels is scored, with the format's ID mapping.
    cfg = DatasetConfig(format=fmt, root=str(tree))
    labels = np.stack([read_label_train_ids(cfg, r.label) for r in build_dataset(cfg, train=False).records])
    confusion = np.asarray(scores["confusion_matrix"])
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(labels[labels < NUM_CLASSES].ravel(),
                                                                     minlength=NUM_CLASSES))
    # Each protocol's mIoU is the mean over its classes that occur (ground truth or prediction).
    iou = [math.nan if v is None else v for v in scores["iou"].values()]
    for protocol, members in PROTOCOLS.items():
        expected = np.nanmean([iou[c] for c in members])
        assert scores["miou"][str(protocol)] == pytest.approx(expected, abs=1e-3)


class _OracleByImage(nn.Module):
    """A perfect model for the frames of one tree: finds each input image's label by its bytes."""

    def __init__(self, dataset):
        super().__init__()
        self.labels = {item["image"].numpy().tobytes(): item["label"] for item in dataset}

    def forward(self, image: torch.Tensor) -> CordaOutput:
        labels = torch.stack([self.labels[one.cpu().numpy().tobytes()] for one in image])  # (B, H, W)
        logits = nn.functional.one_hot(labels.clamp(max=NUM_CLASSES - 1), NUM_CLASSES)  # (B, H, W, C)
        return CordaOutput(semantic=logits.permute(0, 3, 1, 2).float())


@pytest.mark.parametrize("fmt", ["gta5", "synthia"])
def test_evaluate_cli_scores_a_perfect_model_100_on_a_source_tree(setup, source_trees, fmt, monkeypatch):
    root, _, _ = setup
    tree, out = source_trees[fmt], root / f"oracle_{fmt}"
    oracle = _OracleByImage(build_dataset(DatasetConfig(format=fmt, root=str(tree), depth="none", eval_size=None),
                                          train=False))
    monkeypatch.setattr("cordaseg.cli.evaluate.load_model",
                        lambda *args, **kwargs: (oracle, ModelConfig()))
    status = main(["evaluate", "--checkpoint", "oracle.pt", "--data-root", str(tree), "--format", fmt,
                   "--depth", "none", "--input-size", "64x32", "--num-workers", "0", "--no-progress",
                   "--out", str(out), "--device", "cpu"])
    assert status == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["miou"] == {"19": 100.0, "16": 100.0, "13": 100.0} and scores["pixel_accuracy"] == 100.0


def test_evaluate_cli_source_domain_errors(setup, source_trees, capsys):
    root, tree, checkpoint = setup
    config = root / "dataset.yaml"
    config.write_text(yaml.safe_dump({"format": "cityscapes", "root": str(tree), "split": "val"}))
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--config", str(config), "--format", "gta5",
                 "--device", "cpu"]) == 2
    assert "--format goes with --data-root" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(source_trees["gta5"]),
                 "--format", "gta5", "--split", "val", "--device", "cpu"]) == 2
    assert "list_file" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(source_trees["synthia"]),
                 "--format", "synthia", "--depth", "stereo", "--device", "cpu"]) == 2
    assert "Cityscapes depth kind" in capsys.readouterr().err
