"""Self-supervised depth training: the step's losses and gradients, the run, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cordaseg.cli import main
from cordaseg.config import ConfigError, from_dict, load
from cordaseg.data import formats
from cordaseg.data.datasets import read_depth
from cordaseg.depth.network import DepthModelConfig, DepthNetwork, PoseNetwork, depth_to_disparity
from cordaseg.depth.trainer import DepthLossConfig, DepthTrainConfig, depth_step, load_depth_checkpoint
from cordaseg.world import generate_world

TINY = DepthModelConfig(encoder_width=8, decoder_width=4, min_depth=1.0, max_depth=100.0)


def _batch(seed: int = 0, frames: bool = False, stereo: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, h, w = 2, 64, 64
    batch = {"image": torch.rand(b, 3, h, w, generator=g),
             "K": torch.tensor([[40.0, 0, 31.5], [0, 40.0, 31.5], [0, 0, 1]]).expand(b, 3, 3).clone(),
             "baseline": torch.full((b,), 0.3)}
    if stereo:
        batch["stereo"] = torch.rand(b, 3, h, w, generator=g)
    if frames:
        batch["frames"] = torch.rand(b, 2, 3, h, w, generator=g)
    return batch


def test_stereo_step_parts_and_gradients():
    torch.manual_seed(0)
    net = DepthNetwork(TINY)
    loss, parts = depth_step(net, None, _batch(), DepthLossConfig())
    assert set(parts) == {"photometric", "smoothness", "automask_fraction"}
    assert loss.item() == pytest.approx(parts["photometric"].item() + 1e-3 * parts["smoothness"].item(), rel=1e-6)
    assert 0.0 <= parts["automask_fraction"].item() <= 1.0
    loss.backward()
    assert all(p.grad is not None for p in net.decoder.heads.parameters())
    assert net.encoder.conv1.weight.grad.abs().sum() > 0


def test_mono_and_mono_stereo_steps_train_the_pose_network():
    torch.manual_seed(0)
    net, pose = DepthNetwork(TINY), PoseNetwork(TINY)
    for stereo in (False, True):
        pose.zero_grad()
        loss, _ = depth_step(net, pose, _batch(frames=True, stereo=stereo), DepthLossConfig(automask=False))
        loss.backward()
        assert pose.head[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pose network"):
        depth_step(net, None, _batch(frames=True, stereo=False), DepthLossConfig())


def test_step_loss_is_lowest_at_the_true_depth():
    # A right view made from the left one with a known constant depth: the photometric loss of a
    # network whose output is that depth is lower than of one that predicts twice or half of it.
    g = torch.Generator().manual_seed(3)
    left = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=(64, 64), mode="bilinear")
    f, baseline, depth = 40.0, 0.5, 5.0
    shift = int(f * baseline / depth)  # 4 px of disparity
    right = torch.roll(left, -shift, dims=-1)
    batch = {"image": left, "stereo": right, "baseline": torch.tensor([baseline]),
             "K": torch.tensor([[[f, 0, 31.5], [0, f, 31.5], [0, 0, 1]]])}

    class Constant(torch.nn.Module):
        cfg = TINY

        def __init__(self, value):
            super().__init__()
            self.sigma = depth_to_disparity(torch.tensor(value), TINY.min_depth, TINY.max_depth)

        def forward(self, x):
            return [self.sigma.expand(x.shape[0], 1, x.shape[2] // 2**s, x.shape[3] // 2**s) for s in range(4)]

    losses = {d: depth_step(Constant(d), None, batch, DepthLossConfig(automask=False))[1]["photometric"].item()
              for d in (depth / 2, depth, depth * 2)}
    assert losses[depth] < 0.2 * min(losses[depth / 2], losses[depth * 2])


def test_initial_depth_sets_the_untrained_prediction():
    torch.manual_seed(0)
    images = torch.rand(1, 3, 64, 64)
    far = DepthNetwork(DepthModelConfig(encoder_width=8, decoder_width=4, initial_depth=20.0)).eval()
    zero_bias = DepthNetwork(DepthModelConfig(encoder_width=8, decoder_width=4, initial_depth=None)).eval()
    with torch.no_grad():
        assert far.predict_depth(images).median().item() == pytest.approx(20.0, rel=0.3)
        assert zero_bias.predict_depth(images).median().item() == pytest.approx(2 / (1 / 0.1 + 1 / 100), rel=0.3)
    with pytest.raises(ConfigError, match="initial_depth"):
        DepthModelConfig(initial_depth=500.0)


def test_config_validation():
    with pytest.raises(ConfigError, match="video"):
        from_dict(DepthTrainConfig, {"mode": "mono", "data": {"layout": "cityscapes"}})
    with pytest.raises(ConfigError, match="unknown key 'loss.ssim'"):
        from_dict(DepthTrainConfig, {"loss": {"ssim": 1}})
    assert from_dict(DepthTrainConfig, {"mode": "mono+stereo", "data": {"layout": "video"}}).metric
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("depth_*.yaml")):
        load(DepthTrainConfig, path)


@pytest.mark.slow
def test_train_export_check_through_the_cli(tmp_path, capsys):
    _, target = generate_world(tmp_path / "world", 0, 2, 0, size=(64, 32), workers=0, progress=False)
    config = tmp_path / "depth.yaml"
    config.write_text(
        "mode: stereo\n"
        "model: {encoder_width: 8, decoder_width: 4, min_depth: 2.0}\n"
        f"data: {{layout: cityscapes, root: {target}, size: [64, 64]}}\n"
        "optim: {batch_size: 2, iterations: 3}\n"
        f"run: {{out_dir: {tmp_path / 'run'}, device: cpu, workers: 0, log_interval: 2}}\n")
    assert main(["depth", "train", "--config", str(config), "optim.lr=0.001", "--quiet"]) == 0
    checkpoint = tmp_path / "run" / "depth_last.pth"
    net, cfg, metric = load_depth_checkpoint(checkpoint)
    assert metric and cfg.optim.lr == 0.001 and cfg.data.size == (64, 64)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 3] and all(np.isfinite(r["loss"]) for r in records)
    assert (tmp_path / "run" / "config.yaml").is_file()

    assert main(["depth", "export", "--checkpoint", str(checkpoint), "--data", str(target),
                 "--format", "cityscapes-mono", "--device", "cpu", "--quiet"]) == 0
    assert "wrote 2 cityscapes-mono files" in capsys.readouterr().out
    written = sorted((target / "disparity" / "train").rglob("*_leftImg8bit.png"))
    assert len(written) == 2 and read_depth("mono", written[0]).shape == (32, 64)

    assert main(["depth", "check", "--layout", "cityscapes-stereo", "--root", str(target)]) == 0
    formats.cityscapes_right_image_path(target, "train", "synthtown", "synthtown_000001_000019").unlink()
    assert main(["depth", "check", "--layout", "cityscapes-stereo", "--root", str(target)]) == 1
    assert "missing file" in capsys.readouterr().out
    assert main(["depth", "train", "--config", str(config), "mode=mono"]) == 2
    assert "video" in capsys.readouterr().err
