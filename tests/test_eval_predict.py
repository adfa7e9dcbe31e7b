"""predict on files and folders, and agreement of its labelIds with the official Cityscapes scripts."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from cordaseg.data.labels import CITYSCAPES_TRAIN_LABEL_IDS, PALETTE
from cordaseg.errors import DataError
from cordaseg.evaluation.inference import InferenceConfig
from cordaseg.evaluation.predict import PredictConfig, expand_inputs, predict_files
from cordaseg.models.corda import ModelConfig, build_model


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone_depth=18, head_width=32, backbone_width=16)).eval()


def _write_images(folder):
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "sub" / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(folder / "sub" / "grey.png")
    (folder / "notes.txt").write_text("not an image")
    return {"a": (40, 50), "sub/b": (48, 64), "sub/grey": (30, 30)}


def test_predict_on_a_folder_writes_readable_pngs_of_the_input_size(tmp_path, tiny_model):
    sizes = _write_images(tmp_path / "in")
    config = PredictConfig(input_size=(64, 32), write_label_ids=True, write_logits=True,
                           inference=InferenceConfig(flip=True))
    written = predict_files(tiny_model, [tmp_path / "in"], tmp_path / "out", config, progress=False)
    assert len(written) == 3 * 5
    palette = {tuple(c) for c in PALETTE}
    for stem, (height, width) in sizes.items():
        for kind in ("color", "depth", "overlay", "labelIds"):
            with Image.open(tmp_path / "out" / kind / f"{stem}.png") as image:
                array = np.asarray(image)
            assert array.shape[:2] == (height, width), (kind, stem)
            if kind == "color":
                assert {tuple(c) for c in array.reshape(-1, 3)} <= palette
            if kind == "labelIds":
                assert array.ndim == 2 and set(np.unique(array)) <= set(CITYSCAPES_TRAIN_LABEL_IDS)
        logits = np.load(tmp_path / "out" / "logits" / f"{stem}.npy")
        assert logits.shape == (19, 32, 64) and logits.dtype == np.float32


def test_predict_inputs_files_globs_and_errors(tmp_path):
    _write_images(tmp_path / "in")
    assert [str(s) for _, s in expand_inputs([tmp_path / "in" / "a.png"])] == ["a"]
    assert [str(s) for _, s in expand_inputs([str(tmp_path / "in" / "**" / "*.png")])] == ["a", "grey"]
    with pytest.raises(DataError, match="missing.png"):
        expand_inputs([tmp_path / "missing.png"])
    with pytest.raises(DataError, match="no images"):
        expand_inputs([str(tmp_path / "in" / "*.gif")])
    (tmp_path / "other").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "other" / "a.png")
    with pytest.raises(DataError, match="same output"):
        expand_inputs([tmp_path / "in" / "a.png", tmp_path / "other" / "a.png"])


@pytest.mark.slow
def test_label_ids_from_predict_score_the_same_under_the_official_scripts(tmp_path, monkeypatch):
    from cordaseg.data.datasets import DatasetConfig, build_dataset
    from cordaseg.data.formats import cityscapes_image_dir
    from cordaseg.data.synth import generate_tree
    from cordaseg.evaluation.evaluate import evaluate_segmentation

    root = generate_tree("cityscapes", tmp_path / "cityscapes", num=4, size=(256, 128), seed=3,
                         depth="stereo", splits=("val",))
    torch.manual_seed(0)
    # Zero head biases: with the reference's uniform biases an untrained net predicts one class
    # everywhere, and this test needs several predicted classes to compare the two scorers.
    model = build_model(ModelConfig(backbone_depth=18, head_width=32, backbone_width=16,
                                    head_bias_init="zero")).eval()
    dataset = build_dataset(DatasetConfig(format="cityscapes", root=str(root), split="val", depth="stereo",
                                          eval_size=(128, 64)), train=False)
    # batch size 1, like predict: the same arithmetic, so not even a near-tie can flip a pixel
    ours = evaluate_segmentation(model, dataset, device="cpu", batch_size=1, progress=False)
    assert ours.num_images == 4 and "depth" in ours.depth

    out = tmp_path / "predictions"
    predict_files(model, [cityscapes_image_dir(root, "official") / "val"], out,
                  PredictConfig(input_size=(128, 64), write_label_ids=True, write_color=False,
                                write_depth=False, write_overlay=False), progress=False)

    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(out / "labelIds"))
    official = importlib.import_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    args = official.args
    monkeypatch.setattr(args, "predictionPath", None)  # re-read CITYSCAPES_RESULTS
    monkeypatch.setattr(args, "predictionWalk", None)
    monkeypatch.setattr(args, "evalInstLevelScore", False)  # nIoU needs instance files
    monkeypatch.setattr(args, "JSONOutput", False)
    monkeypatch.setattr(args, "quiet", True)
    ground_truth = sorted((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    assert len(ground_truth) == 4
    predictions = [official.getPrediction(args, str(gt)) for gt in ground_truth]
    scores = official.evaluateImgLists(predictions, [str(gt) for gt in ground_truth], args)

    predicted_classes = int((ours.confusion.sum(axis=0) > 0).sum())
    assert predicted_classes >= 3
    assert scores["averageScoreClasses"] * 100 == pytest.approx(ours.miou[19], abs=1e-9)
    for index, label_id in enumerate(CITYSCAPES_TRAIN_LABEL_IDS):
        name = official.id2label[label_id].name
        theirs = scores["classScores"][name]
        if np.isnan(ours.iou[index]):
            assert np.isnan(theirs)
        else:
            assert theirs * 100 == pytest.approx(ours.iou[index], abs=1e-9)
