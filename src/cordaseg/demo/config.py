"""The demo's settings (:class:`DemoConfig`, ``configs/demo.yaml``) and the four methods it compares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cordaseg.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from cordaseg.engine.config import FIDELITY_SWITCHES
from cordaseg.models.corda import ModelConfig
from cordaseg.world.export import WorldConfig

# The four runs, in the order they are trained and reported.
METHODS = ("source_only", "oracle", "dacs", "corda")
METHOD_TITLES = {"source_only": "source-only", "oracle": "target oracle", "dacs": "DACS", "corda": "CorDA"}


@dataclass
class DemoConfig:
    """Everything ``cordaseg demo`` does; saved as ``demo_config.yaml`` in the output folder."""

    world: WorldConfig = field(default_factory=lambda: WorldConfig(
        num_source=300, num_target_train=300, num_target_val=60, size=(256, 128)))
    """The synthetic world: frame counts, size, strength of the shift, layout seed."""
    backbone_depth: int = 18
    """ResNet depth of every model (18: basic blocks, the CPU-sized choice)."""
    backbone_width: int = 16
    """Stem channels of the backbone (64 in the paper); every stage scales with it."""
    head_width: int = 32
    """Channels of CorDA's task branches and distillation (256 in the paper)."""
    crop: tuple[int, int] = (128, 128)
    """Training crop (W, H), taken from frames kept at the world's size."""
    batch_size: int = 2
    """Source images (and as many target images) per iteration, as in the paper."""
    lr: float = 5e-3
    """Base learning rate of the backbone (heads: 10x). Higher than the paper's 2.5e-4, which is
    tuned for a COCO-pretrained ResNet-101; these networks start from random weights."""
    adaptation_lr_factor: float = 0.5
    """DACS and CorDA run at this fraction of ``lr``: they continue from trained weights."""
    source_iterations: int = 4000
    """Iterations of source-only and of the oracle; 0 plans them from the time budget ``minutes``."""
    adaptation_iterations: int = 2000
    """Iterations of DACS and of CorDA; 0 plans them from the time budget ``minutes``."""
    depth_iterations: int = 1200
    """Iterations of the self-supervised depth network (target_depth: self_supervised); 0 trains it
    for ``depth_seconds`` or ``depth_share`` of the budget instead."""
    minutes: float = 15.0
    """Wall-clock budget of the whole demo, world rendering included, where counts are planned (0)."""
    adaptation_share: float = 0.6
    """Fraction of the training time given to DACS and CorDA (the rest: source-only and oracle)."""
    min_iterations: int = 5
    """Fewest iterations a planned source-only or oracle run gets, however short the budget."""
    adaptation_floor: int = 200
    """Fewest iterations a planned DACS or CorDA run gets, however short the budget or busy the
    machine (the demo then runs past ``minutes``, with a warning). 200 iterations from the
    source-only weights are about the fewest in which adaptation shows: at 245 the busy-machine
    run of benchmarks/RESULTS.md recovered 31% of the gap."""
    probe_iterations: int = 8
    """Iterations of each method timed before planning (only the second half is counted)."""
    initial_head_fraction: float = 0.1
    """Fraction of the adaptation run whose pseudo-labels come from the initial semantic head."""
    eval_images: int = 0
    """Score on the first this many target val images (0: all)."""
    grid_images: int = 4
    """Target val images shown in report.png."""
    target_depth: Literal["stereo", "self_supervised"] = "self_supervised"
    """CorDA's target depth: a Monodepth2-style network trained here on the target stereo pairs
    (``cordaseg.depth``) and exported as stereo .mat files, as the paper uses self-supervised depth (default);
    or the tree's own stereo-matcher depth files (``stereo``), which skips that stage."""
    depth_share: float = 0.15
    """Fraction of the budget for training the self-supervised depth network when neither
    ``depth_iterations`` nor ``depth_seconds`` is set (target_depth: self_supervised)."""
    depth_seconds: float | None = None
    """Seconds for that training instead of ``depth_iterations`` or ``depth_share`` of the budget (a
    time limit: the result then depends on the machine's speed)."""
    val_depth: Literal["none", "exact"] = "none"
    """``exact``: score the val split with the world's exact depth (rendered again, see
    :func:`~cordaseg.world.export.export_exact_depth`) so that every method also gets its
    mIoU per range of distance."""
    threads: int = 0
    """torch intra-op threads; 0: one per CPU this process may use (:func:`cpu_threads`). Results can
    differ in the last bits between thread counts (the order of parallel sums), which training
    amplifies: set it (e.g. 2) to compare runs on machines with different numbers of CPUs."""
    seed: int = 0
    """Seed of the model initialisations, sample orders and adaptation draws."""
    fidelity: Literal["reference", "paper"] = "reference"
    """``recipe.fidelity`` of every run: the reference code's behaviour or the paper's text
    (docs/reference-behaviour.md)."""
    world_workers: int | None = None
    """Processes rendering the world (None: one per CPU)."""

    def __post_init__(self) -> None:
        if self.backbone_depth not in (18, 34, 50, 101):
            raise ConfigError(f"backbone_depth: {self.backbone_depth} is not one of 18, 34, 50, 101")
        if self.minutes <= 0:
            raise ConfigError(f"minutes: {self.minutes} must be > 0")
        if not 0.0 < self.depth_share < 0.5:
            raise ConfigError(f"depth_share: {self.depth_share} must lie in (0, 0.5)")
        if not 0.0 < self.adaptation_share < 1.0:
            raise ConfigError(f"adaptation_share: {self.adaptation_share} must lie in (0, 1)")
        if not 0.0 <= self.initial_head_fraction <= 1.0:
            raise ConfigError(f"initial_head_fraction: {self.initial_head_fraction} must lie in [0, 1]")
        for key in ("source_iterations", "adaptation_iterations", "depth_iterations", "eval_images", "grid_images",
                    "threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: {getattr(self, key)} must be >= 0")
        if self.min_iterations < 1 or self.adaptation_floor < 1 or self.probe_iterations < 2 or self.batch_size < 1:
            raise ConfigError("min_iterations, adaptation_floor and batch_size must be >= 1, probe_iterations >= 2")
        if self.lr <= 0 or self.adaptation_lr_factor <= 0:
            raise ConfigError("lr and adaptation_lr_factor must be > 0")
        width, height = self.world.size
        if self.crop[0] > width or self.crop[1] > height:
            raise ConfigError(f"crop: {tuple(self.crop)} is larger than world.size {tuple(self.world.size)}")

    def model(self, arch: str) -> ModelConfig:
        """The network of one method: DeepLabV2 ('deeplab') or CorDA ('corda'), with the model keys
        that ``fidelity`` sets."""
        switched = {key.split(".")[1]: values[self.fidelity] for key, values in FIDELITY_SWITCHES.items()
                    if key.startswith("model.")}
        return ModelConfig(arch=arch, backbone_depth=self.backbone_depth, backbone_width=self.backbone_width,
                           head_width=self.head_width, **switched)

    @property
    def fixed(self) -> bool:
        """Whether every iteration count is fixed (nothing is planned from the time budget)."""
        return bool(self.source_iterations and self.adaptation_iterations)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, nested mappings merged key by key (a new mapping)."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def load_demo_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DemoConfig:
    """The demo's defaults, updated by an optional YAML file, then by ``key=value`` overrides
    (so ``world.num_source=200`` keeps the demo's other world settings)."""
    data = to_dict(DemoConfig())
    if path is not None:
        data = merge(data, load_yaml(path))
    return from_dict(DemoConfig, apply_overrides(data, overrides or []))
