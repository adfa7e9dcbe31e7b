"""The shipped DAFormer / MIC / CorDA-on-DAFormer configs: each validates as written, and runs two
iterations (and an evaluation) on generated GTA5 + Cityscapes trees with tiny overrides (a
narrow, shallow encoder, 64x64 crops) on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cordaseg.data.synth import generate_tree
from cordaseg.engine.config import load_train_config
from cordaseg.engine.logging import read_metrics
from cordaseg.engine.trainer import train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["daformer_gta2cityscapes", "mic_daformer_gta2cityscapes", "corda_mic_daformer_gta2cityscapes",
           "corda_dinov2_gta2cityscapes"]
pytest.importorskip("transformers")  # part of the test extra: these run in CI


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_states_its_command_and_published_figure(name):
    path = REPO / "configs" / f"{name}.yaml"
    cfg = load_train_config(path)
    header = path.read_text().split("\nmodel:")[0]
    assert f"cordaseg train --config configs/{name}.yaml" in header
    assert "GPU time:" in header and "Published:" in header
    assert cfg.model.decoder == "daformer" and cfg.optim.name == "adamw"
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas) == (6e-5, 0.01, (0.9, 0.999))
    assert (cfg.optim.iterations, cfg.optim.batch_size, cfg.optim.warmup_iterations) == (40_000, 2, 1500)
    assert (cfg.optim.poly_power, cfg.optim.warmup_ratio, cfg.optim.head_lr_mult) == (1.0, 1e-6, 10.0)
    rcs = cfg.source.rare_class_sampling
    assert rcs.enabled and (rcs.temperature, rcs.min_pixels, rcs.min_crop_ratio) == (0.01, 3000, 0.5)
    assert cfg.adaptation.feature_distance_weight == 0.005
    assert (cfg.adaptation.pseudo_label_ignore_top, cfg.adaptation.pseudo_label_ignore_bottom) == (15, 120)
    assert cfg.source.crop == cfg.target.crop == (512, 512)
    assert cfg.adaptation.mic.enabled == (name != "daformer_gta2cityscapes")
    assert cfg.adaptation.method == ("corda" if name.startswith("corda") else "dacs")
    published = {"daformer_gta2cityscapes": "68.3", "mic_daformer_gta2cityscapes": "70.6"}
    assert published.get(name, "none") in header


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trees")
    return {"gta5": generate_tree("gta5", root / "gta5", 4, size=(128, 64), seed=1),
            "cityscapes": generate_tree("cityscapes", root / "cityscapes", 2, size=(256, 128), seed=2,
                                        depth="stereo")}


def tiny_overrides(name: str, trees: dict[str, Path], out_dir: Path) -> list[str]:
    backbone = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())["model"]["backbone"]
    blocks = "[4]" if backbone.startswith("dinov2") else "[1,1,1,1]"
    return [
        f"source.root={trees['gta5']}", f"target.root={trees['cityscapes']}", f"val.root={trees['cityscapes']}",
        f"run.out_dir={out_dir}", "run.device=cpu", "run.num_workers=0", "run.deterministic=true",
        "model.pretrained=null", "model.backbone_width=8", f"model.backbone_blocks={blocks}",
        "model.decoder_width=16", "model.head_width=16",
        "source.resize=[128,64]", "source.crop=[64,64]", "target.crop=[64,64]", "val.eval_size=[128,64]",
        "source.rare_class_sampling.min_pixels=100", "source.rare_class_sampling.stats_file=" + str(out_dir.parent /
                                                                                                   "stats.json"),
        "adaptation.pseudo_label_ignore_top=2", "adaptation.pseudo_label_ignore_bottom=8",
        "adaptation.mic.patch=16", "adaptation.initial_head_until=1",
        "optim.iterations=2", "optim.warmup_iterations=1",
        "eval.every=2", "eval.max_images=1", "checkpoint.every=2", "logging.every=1", "logging.image_every=2",
        "logging.progress=false", "logging.tensorboard=false",
    ]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:rare-class sampling")
@pytest.mark.filterwarnings("ignore:checkpoint.init is not set")  # model.pretrained=null: a random encoder
@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_two_tiny_iterations(name, trees, tmp_path):
    cfg = load_train_config(REPO / "configs" / f"{name}.yaml", tiny_overrides(name, trees, tmp_path / "run"))
    result = train(cfg)
    assert result.iteration == 2 and result.best_miou is not None
    terms = read_metrics(tmp_path / "run", "train")[-1]
    assert "feature_distance" in terms and "target_ce" in terms
    assert ("mic_loss" in terms) == cfg.adaptation.mic.enabled
    assert ("target_depth" in terms) == (cfg.adaptation.method == "corda")
