"""Training self-supervised depth (docs/method.md, "Self-supervised depth"; Monodepth2 sections 3-4).

:func:`depth_step` is the loss of one batch, a function of (networks, batch, config) that runs on
CPU with a tiny model: for every scale, the disparity is upsampled to the input resolution, turned
into depth, every source view (the stereo partner with the known baseline, and/or neighbouring
frames with the pose network's motion) is warped into the target view, and the per-pixel minimum
photometric error with auto-masking plus the edge-aware smoothness (weight / 2**scale) is
averaged over the scales.

Supervision modes: ``stereo`` (metric scale from the baseline), ``mono`` (scale-free, needs the
video layout) and ``mono+stereo`` (video layout with ``right/`` frames; metric).

:func:`train_depth` runs Adam with a step decay, writes ``config.yaml`` and ``metrics.jsonl`` in
the run folder and saves ``depth_last.pth`` (format ``cordaseg-depth``) atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml

from cordaseg.config import ConfigError, from_dict, to_dict
from cordaseg.depth.data import DepthDataConfig, SelfSupervisedDepthDataset
from cordaseg.depth.losses import min_reprojection, photometric_error, smoothness
from cordaseg.depth.network import DepthModelConfig, DepthNetwork, PoseNetwork, disparity_to_depth
from cordaseg.depth.warping import pose_to_transform, stereo_transform, warp
from cordaseg.errors import CheckpointError
from cordaseg.models.checkpoint_file import read_file
from cordaseg.runtime.device import resolve_device
from cordaseg.runtime.files import atomic_save

CHECKPOINT_FORMAT = "cordaseg-depth"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "depth_last.pth"


@dataclass
class DepthLossConfig:
    """Weights of the self-supervised loss."""

    smoothness_weight: float = 1e-3
    """Edge-aware smoothness weight at scale 0 (divided by 2**scale)."""
    automask: bool = True
    """Auto-masking of pixels that an unwarped source explains better (static scenes, moving with the camera)."""


@dataclass
class DepthOptimConfig:
    """Adam with one step decay (Monodepth2: lr 1e-4, x0.1 after 15 of 20 epochs)."""

    lr: float = 1e-4
    """Learning rate of both networks."""
    batch_size: int = 12
    """Frames per batch."""
    iterations: int = 20000
    """Optimiser steps."""
    decay_at: float = 0.75
    """Fraction of ``iterations`` after which the learning rate is multiplied by ``decay_factor``."""
    decay_factor: float = 0.1
    """Learning-rate factor after ``decay_at``."""


@dataclass
class DepthRunConfig:
    """Where and how a run executes."""

    out_dir: str = "runs/depth"
    """Run folder: config.yaml, metrics.jsonl and the checkpoint."""
    seed: int = 0
    """Seed of the weights, shuffling and flips."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``."""
    workers: int = 2
    """Data-loading processes."""
    log_interval: int = 50
    """Iterations between log records (the only host syncs of the loop)."""
    checkpoint_interval: int = 2000
    """Iterations between checkpoint saves (the last iteration always saves)."""
    time_limit_s: float | None = None
    """Stop early (and save) after this many seconds; None runs all iterations."""


@dataclass
class DepthTrainConfig:
    """A self-supervised depth run (``cordaseg depth train --config FILE``)."""

    mode: Literal["stereo", "mono", "mono+stereo"] = "stereo"
    """Supervision: stereo pairs (metric), monocular video with a pose network (scale-free), or both."""
    model: DepthModelConfig = field(default_factory=DepthModelConfig)
    """Depth and pose networks."""
    data: DepthDataConfig = field(default_factory=DepthDataConfig)
    """Training frames."""
    loss: DepthLossConfig = field(default_factory=DepthLossConfig)
    """Loss weights."""
    optim: DepthOptimConfig = field(default_factory=DepthOptimConfig)
    """Optimiser and schedule."""
    run: DepthRunConfig = field(default_factory=DepthRunConfig)
    """Run folder, seed, device, logging."""

    def __post_init__(self) -> None:
        if self.mode != "stereo" and self.data.layout == "cityscapes":
            raise ConfigError(f"mode: {self.mode!r} needs frame sequences, i.e. data.layout: video")

    @property
    def uses_stereo(self) -> bool:
        return "stereo" in self.mode

    @property
    def uses_mono(self) -> bool:
        return "mono" in self.mode

    @property
    def metric(self) -> bool:
        """Stereo supervision fixes the scale: depth is in metres."""
        return self.uses_stereo


def _source_views(batch: dict[str, torch.Tensor], target: torch.Tensor, pose_net: PoseNetwork | None
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(source image (B, 3, H, W), target -> source transform (B, 4, 4)) of every source view."""
    views = []
    if "stereo" in batch:
        views.append((batch["stereo"], stereo_transform(batch["baseline"].to(target.dtype))))
    if "frames" in batch:
        if pose_net is None:
            raise ValueError("the batch has neighbouring frames but no pose network was given")
        for j in range(batch["frames"].shape[1]):
            source = batch["frames"][:, j]
            axis_angle, translation = pose_net(target, source)
            views.append((source, pose_to_transform(axis_angle, translation)))
    if not views:
        raise ValueError("the batch has no source view ('stereo' or 'frames')")
    return views


def depth_step(depth_net: DepthNetwork, pose_net: PoseNetwork | None, batch: dict[str, torch.Tensor],
               loss_cfg: DepthLossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Self-supervised loss of one batch -> (loss, named parts as detached tensors)."""
    target = batch["image"]  # (B, 3, H, W) in [0, 1]
    K = batch["K"]
    h, w = target.shape[-2:]
    views = _source_views(batch, target, pose_net)
    identity = None
    if loss_cfg.automask:
        identity = torch.cat([photometric_error(source, target) for source, _ in views], dim=1)  # (B, S, H, W)
    disparities = depth_net(target)
    photometric, smooth, automask = [], [], []
    for scale, sigma in enumerate(disparities):
        sigma_full = F.interpolate(sigma, size=(h, w), mode="bilinear", align_corners=False)
        depth = disparity_to_depth(sigma_full, depth_net.cfg.min_depth, depth_net.cfg.max_depth)
        reprojection = torch.cat([photometric_error(warp(source, depth, K, T), target) for source, T in views],
                                 dim=1)  # (B, S, H, W)
        per_pixel, mask = min_reprojection(reprojection, identity)
        photometric.append(per_pixel.mean())
        image_s = target if scale == 0 else F.interpolate(target, size=sigma.shape[-2:], mode="bilinear",
                                                          align_corners=False)
        smooth.append(smoothness(sigma, image_s) / 2**scale)
        automask.append(mask.float().mean())
    photometric_loss = torch.stack(photometric).mean()
    smoothness_loss = torch.stack(smooth).mean()
    loss = photometric_loss + loss_cfg.smoothness_weight * smoothness_loss
    parts = {"photometric": photometric_loss.detach(), "smoothness": smoothness_loss.detach(),
             "automask_fraction": torch.stack(automask).mean().detach()}
    return loss, parts


# ---------------------------------------------------------------------------------------------
# Checkpoints


def depth_payload(cfg: DepthTrainConfig, depth_net: DepthNetwork, pose_net: PoseNetwork | None,
                  iteration: int) -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "config": to_dict(cfg),
            "metric": cfg.metric, "iteration": iteration, "depth_net": depth_net.state_dict(),
            "pose_net": None if pose_net is None else pose_net.state_dict()}


def load_depth_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                          ) -> tuple[DepthNetwork, DepthTrainConfig, bool]:
    """(depth network in eval mode on ``device``, its training config, whether depth is metric)."""
    payload = read_file(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a self-supervised depth checkpoint (format {CHECKPOINT_FORMAT!r}); "
                              "a segmentation checkpoint cannot export depth files")
    try:
        cfg = from_dict(DepthTrainConfig, payload["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: its config does not load ({err})") from err
    net = DepthNetwork(cfg.model)
    try:
        net.load_state_dict(payload["depth_net"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: depth weights do not fit the network ({str(err).splitlines()[0]})") from err
    return net.to(device).eval(), cfg, bool(payload.get("metric", cfg.metric))


# ---------------------------------------------------------------------------------------------
# Training loop


def build_networks(cfg: DepthTrainConfig) -> tuple[DepthNetwork, PoseNetwork | None]:
    torch.manual_seed(cfg.run.seed)  # weight init only; the loop's randomness uses its own generators
    depth_net = DepthNetwork(cfg.model)
    pose_net = PoseNetwork(cfg.model) if cfg.uses_mono else None
    return depth_net, pose_net


def train_depth(cfg: DepthTrainConfig, progress: bool = True) -> Path:
    """Train depth (and pose) networks; returns the path of the final checkpoint."""
    device = resolve_device(cfg.run.device, key="run.device")
    out_dir = Path(cfg.run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    dataset = SelfSupervisedDepthDataset(cfg.data, stereo=cfg.uses_stereo, mono=cfg.uses_mono, seed=cfg.run.seed)
    depth_net, pose_net = build_networks(cfg)
    depth_net.to(device).train()
    params = list(depth_net.parameters())
    if pose_net is not None:
        pose_net.to(device).train()
        params += list(pose_net.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.optim.lr)
    decay_step = int(cfg.optim.decay_at * cfg.optim.iterations)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(decay_step, 1),
                                                gamma=cfg.optim.decay_factor)
    shuffle = torch.Generator().manual_seed(cfg.run.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=min(cfg.optim.batch_size, len(dataset)), shuffle=True, drop_last=True,
        num_workers=cfg.run.workers, generator=shuffle, persistent_workers=False,
        pin_memory=device.type == "cuda")
    checkpoint = out_dir / CHECKPOINT_NAME
    log = open(out_dir / "metrics.jsonl", "w", encoding="utf-8")  # noqa: SIM115  (runs do not resume)
    start = time.time()
    iteration, epoch = 0, 0
    running: dict[str, torch.Tensor] = {}
    try:
        while iteration < cfg.optim.iterations:
            dataset.set_epoch(epoch)
            for batch in loader:
                batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss, parts = depth_step(depth_net, pose_net, batch, cfg.loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                iteration += 1
                for name, value in {"loss": loss.detach(), **parts}.items():
                    running[name] = running.get(name, 0.0) + value
                done = iteration >= cfg.optim.iterations
                out_of_time = cfg.run.time_limit_s is not None and time.time() - start > cfg.run.time_limit_s
                if iteration % cfg.run.log_interval == 0 or done or out_of_time:
                    count = (iteration - 1) % cfg.run.log_interval + 1
                    # .item() here only: the logging interval is the loop's one host sync.
                    record = {k: float(v.item()) / count for k, v in running.items()}
                    record.update(iteration=iteration, lr=scheduler.get_last_lr()[0],
                                  elapsed_s=round(time.time() - start, 1))
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if progress:
                        print(f"depth iter {iteration}/{cfg.optim.iterations} loss {record['loss']:.4f} "
                              f"photometric {record['photometric']:.4f} automask {record['automask_fraction']:.2f}")
                    running = {}
                if done or out_of_time or iteration % cfg.run.checkpoint_interval == 0:
                    atomic_save(depth_payload(cfg, depth_net, pose_net, iteration), checkpoint)
                if done or out_of_time:
                    return checkpoint
            epoch += 1
    finally:
        log.close()
    return checkpoint

