"""DAFormer's and MIC's options through ``train`` on generated trees with the tiny CorDA model:
AdamW with warm-up, rare-class sampling, feature distance, pseudo-label row crop and MIC together,
and a run interrupted part-way that resumes bit for bit (AdamW state, class-sampled source order,
the frozen reference rebuilt, MIC masks). The feature distance takes the source pass's own
features (``predict_and_encode``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from cordaseg.data.rare_class import STATS_FILE
from cordaseg.data.synth import generate_tree
from cordaseg.engine import checkpoint as ckpt
from cordaseg.engine import trainer as trainer_module
from cordaseg.engine.config import load_train_config
from cordaseg.engine.logging import read_metrics
from cordaseg.engine.lr_schedule import scheduled_lr
from cordaseg.engine.trainer import TrainingInterrupted, train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_cpu.yaml"
OPTIONS = (
    "optim.name=adamw", "optim.lr=6e-5", "optim.weight_decay=0.01", "optim.poly_power=1.0",
    "optim.warmup_iterations=2", "optim.no_decay_norms=true",
    "source.rare_class_sampling.enabled=true", "source.rare_class_sampling.min_pixels=100",
    "adaptation.feature_distance_weight=0.005",
    "adaptation.pseudo_label_ignore_top=2", "adaptation.pseudo_label_ignore_bottom=8",
    "adaptation.mic.enabled=true", "adaptation.mic.patch=16", "adaptation.confidence_threshold=0.5",
    "optim.iterations=4", "optim.batch_size=1", "checkpoint.every=2", "eval.every=0",
    "logging.every=1", "logging.image_every=2", "checkpoint.init=null",
)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trees")
    return {"gta5": generate_tree("gta5", root / "gta5", 6, size=(128, 64), seed=1),
            "cityscapes": generate_tree("cityscapes", root / "cityscapes", 4, size=(256, 128), seed=2,
                                        depth="stereo")}


def config(trees, out_dir: Path):
    return load_train_config(TINY, [f"source.root={trees['gta5']}", f"target.root={trees['cityscapes']}",
                                    f"val.root={trees['cityscapes']}", f"run.out_dir={out_dir}", *OPTIONS])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:checkpoint.init is not set")
@pytest.mark.filterwarnings("ignore:rare-class sampling")
def test_daformer_and_mic_options_train_and_resume_bit_for_bit(trees, tmp_path, monkeypatch):
    straight = train(config(trees, tmp_path / "straight"))
    assert (trees["gta5"] / STATS_FILE).is_file()  # the class statistics, cached in the dataset root
    records = read_metrics(tmp_path / "straight", "train")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    for name in ("feature_distance", "mic_ce", "mic_ce_initial", "mic_loss", "target_ce"):
        assert name in records[-1]
    cfg = config(trees, tmp_path / "straight")
    assert [r["lr"] for r in records] == pytest.approx([scheduled_lr(6e-5, i, cfg.optim) for i in range(4)])
    saved = ckpt.load_checkpoint(tmp_path / "straight" / ckpt.checkpoint_name(4))
    groups = saved["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["backbone", "heads"]  # the ResNet has no layer norms
    assert [g["weight_decay"] for g in groups] == [0.01, 0.01]
    assert all("exp_avg_sq" in state for state in saved["optimizer"]["state"].values())

    step = trainer_module.adaptation_step

    def interrupted(student, teacher, batch, cfg, iteration, generator, **kwargs):
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return step(student, teacher, batch, cfg, iteration, generator, **kwargs)

    monkeypatch.setattr(trainer_module, "adaptation_step", interrupted)
    with pytest.raises(TrainingInterrupted):
        train(config(trees, tmp_path / "resumed"))
    assert ckpt.latest_checkpoint(tmp_path / "resumed").name == ckpt.checkpoint_name(3)
    monkeypatch.setattr(trainer_module, "adaptation_step", step)
    resumed = train(config(trees, tmp_path / "resumed"), resume=True)

    assert resumed.iteration == straight.iteration == 4
    for ours, theirs in ((resumed.student, straight.student), (resumed.teacher, straight.teacher)):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), f"{name} differs after resuming"
    a = ckpt.load_checkpoint(tmp_path / "resumed" / ckpt.checkpoint_name(4))
    for key, state in saved["optimizer"]["state"].items():
        for field in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[field], a["optimizer"]["state"][key][field])
    assert a["data_state"]["source"] == saved["data_state"]["source"]
    resumed_losses = [r["loss"] for r in read_metrics(tmp_path / "resumed", "train")]
    assert resumed_losses == [r["loss"] for r in records]
