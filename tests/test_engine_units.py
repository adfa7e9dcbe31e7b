"""Engine building blocks: sample order, RNG capture, checkpoint files, run logging."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cordaseg.engine import checkpoint as ckpt
from cordaseg.engine.config import load_train_config
from cordaseg.engine.logging import RunLogger, image_panels, read_metrics, truncate_metrics
from cordaseg.errors import CheckpointError


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(3)
    np.random.seed(4)  # noqa: NPY002 (the global RNG is what is being saved)
    torch.manual_seed(5)
    random.random()
    np.random.normal()  # noqa: NPY002 (leaves a cached gaussian in the state)
    state = ckpt.capture_rng_state()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())  # noqa: NPY002
    random.seed(99)
    np.random.seed(99)  # noqa: NPY002
    torch.manual_seed(99)
    ckpt.restore_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected  # noqa: NPY002


def test_checkpoint_listing_and_pruning_keep_the_newest(tmp_path):
    for it in (5, 10, 15, 20):
        (tmp_path / ckpt.checkpoint_name(it)).write_bytes(b"x")
    (tmp_path / "best.pt").write_bytes(b"x")
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint_00000020.pt"
    removed = ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["checkpoint_00000005.pt", "checkpoint_00000010.pt"]
    assert [it for it, _ in ckpt.list_checkpoints(tmp_path)] == [15, 20]
    assert (tmp_path / "best.pt").exists()
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


def test_load_checkpoint_rejects_files_that_cannot_resume(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a cordaseg checkpoint"):
        ckpt.load_checkpoint(tmp_path / "plain.pt")
    torch.save({"format": "cordaseg", "format_version": 1, "model": {}, "model_config": {}}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="missing 'teacher'"):
        ckpt.load_checkpoint(tmp_path / "m.pt")


def test_run_logger_writes_jsonl_and_tensorboard_and_truncates_on_resume(tmp_path):
    logger = RunLogger(tmp_path, enabled=True, tensorboard=True)
    for it in (10, 20, 30):
        logger.log(it, "train", {"loss": 1.0 / it, "lr": 0.1})
    logger.log(30, "val", {"mIoU": 12.5, "IoU": {"road": 50.0, "sky": float("nan")}})
    logger.log_images(30, {"pseudo_label": np.zeros((8, 8, 3), np.uint8)})
    logger.close()
    records = read_metrics(tmp_path)
    assert [r["iteration"] for r in records] == [10, 20, 30, 30]
    assert read_metrics(tmp_path, "val")[0]["IoU"]["road"] == 50.0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert truncate_metrics(tmp_path, after_iteration=20) == 2
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [10, 20]
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])


def test_disabled_logger_writes_nothing(tmp_path):
    logger = RunLogger(tmp_path / "run", enabled=False)
    logger.log(1, "train", {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "run").exists()


def test_image_panels_render_images_labels_logits_and_maps():
    visuals = {
        "mixed_image": torch.zeros(2, 3, 6, 5),
        "pseudo_label": torch.tensor([[[0, 255], [18, 1]]] * 2),
        "predictions_logits": torch.randn(2, 19, 4, 4),
        "pixel_weight": torch.rand(2, 6, 5),
        "depth": torch.rand(2, 1, 6, 5),
        "scalar": torch.tensor(1.0),
    }
    panels = image_panels(visuals)
    assert set(panels) == {"mixed_image", "pseudo_label", "predictions_logits", "pixel_weight", "depth"}
    assert all(p.dtype == np.uint8 and p.shape[-1] == 3 for p in panels.values())
    assert panels["pseudo_label"][0, 1].tolist() == [0, 0, 0]  # ignore is black
    weight = panels["pixel_weight"][..., 0]
    assert weight.min() == 0 and weight.max() == 255


SHIPPED = {
    "gta2cityscapes": ("corda", "corda", "gta5", "stereo"),
    "synthia2cityscapes": ("corda", "corda", "synthia", "stereo"),
    "synthia2cityscapes_mono": ("corda", "corda", "synthia", "mono"),
    "dacs_gta2cityscapes": ("dacs", "deeplab", "gta5", "none"),
    "source_only_gta2cityscapes": ("source_only", "deeplab", "gta5", None),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_configs_load_and_state_their_command(name):
    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"cordaseg train --config configs/{name}.yaml" in line for line in header)
    assert any("mIoU" in line for line in header) and any("GPU time" in line for line in header)
    cfg = load_train_config(path)
    method, arch, source, target_depth = SHIPPED[name]
    assert (cfg.adaptation.method, cfg.model.arch, cfg.source.format) == (method, arch, source)
    assert (cfg.target.depth if cfg.target else None) == target_depth
    assert cfg.model.backbone_depth == 101 and cfg.optim.iterations == 250_000 and cfg.optim.batch_size == 2
    # GTA recipe takes early pseudo-labels from the initial head; SYNTHIA's from the final head.
    if arch == "corda":
        assert cfg.adaptation.initial_head_until == (25001 if source == "gta5" else 0)
        assert cfg.model.initial_semantic == ("aspp" if source == "gta5" else "conv")


def test_facts_have_one_home_and_older_configs_still_load():
    # the ignore value, the invalid depth and the normalisation mean are the data package's
    from cordaseg.adaptation import AdaptationConfig
    from cordaseg.config import ConfigError
    from cordaseg.data.normalization import CAFFE_MEAN_BGR
    from cordaseg.engine.config import RETIRED_KEYS, check_sections, train_config_from_dict

    assert not {key.split(".")[1] for key in RETIRED_KEYS} & set(AdaptationConfig.__dataclass_fields__)
    old = {"adaptation": {"mean_bgr": list(CAFFE_MEAN_BGR), "ignore_index": 255, "invalid_depth": 1.0}}
    assert train_config_from_dict(old).source.mean_bgr == CAFFE_MEAN_BGR  # a saved config of an older run
    for key, value in (("ignore_index", 250), ("mean_bgr", [1.0, 2.0, 3.0]), ("invalid_depth", 0.0)):
        with pytest.raises(ConfigError, match=rf"adaptation\.{key}"):
            train_config_from_dict({"adaptation": {key: value}})
    cfg = load_train_config(None, ["target={format: cityscapes, mean_bgr: [1, 2, 3]}"])
    with pytest.raises(ConfigError, match=r"target\.mean_bgr.*source\.mean_bgr"):
        check_sections(cfg)


def test_dropout_masks_differ_across_ranks_and_repeat_on_resume():
    from cordaseg.engine.trainer import seed_stochastic_layers
    from cordaseg.models.corda import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="deeplab", backbone="mit_b0", backbone_width=8, backbone_blocks=(1, 1, 1, 1),
                                    decoder="daformer", decoder_width=16, head_width=16, decoder_dropout=0.5,
                                    drop_path_rate=0.5)).train()
    x = torch.randn(1, 3, 64, 64)

    def output(rank: int, iteration: int, start_seed: int) -> torch.Tensor:
        torch.manual_seed(start_seed)  # the state every rank starts from (the same weights everywhere)
        seed_stochastic_layers(7, iteration, rank)
        with torch.no_grad():
            return model(x).semantic

    rank0, rank1, rank2 = output(0, 3, 0), output(1, 3, 0), output(2, 3, 0)
    assert not torch.equal(rank0, rank1) and not torch.equal(rank1, rank2)
    assert torch.equal(output(1, 3, 123), rank1)  # the rank's masks follow (seed, iteration, rank) only
    assert not torch.equal(output(1, 4, 0), rank1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    seed_stochastic_layers(7, 3, 0)  # rank 0 (a single process) keeps its own stream
    assert torch.equal(torch.get_rng_state(), before)
