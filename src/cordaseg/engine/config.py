"""The training configuration tree (the recipe of docs/method.md; every key in docs/config.md).

:class:`TrainConfig` composes the model, the three datasets (source, target, validation), the
adaptation step and the engine's own sections (optimiser, run, evaluation, checkpoints, logging).
It is loaded from YAML plus ``key=value`` overrides by :func:`load_train_config`, and
:func:`validate` checks what can be checked before any model is built or any data is read: every
problem is a :class:`~cordaseg.config.ConfigError` (or a ``DataError`` / ``CheckpointError``)
whose one-line message names the key or the path.

Scaling with several GPUs: ``optim.batch_size`` is per process, so the effective batch is
``batch_size * world_size`` source images (plus as many target images). The learning rate is
``optim.lr`` as written, whatever the world size; set ``optim.lr_scaling: linear`` to multiply it
by ``world_size * batch_size / optim.reference_batch`` (the paper's recipe is batch 2 at 2.5e-4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from cordaseg.adaptation.config import AdaptationConfig
from cordaseg.config import ConfigError, apply_overrides, from_dict, load_yaml
from cordaseg.data.datasets import DatasetConfig, find_samples
from cordaseg.data.formats import INVALID_DEPTH
from cordaseg.data.labels import IGNORE_INDEX
from cordaseg.data.normalization import CAFFE_MEAN_BGR
from cordaseg.data.transforms import resized_size
from cordaseg.errors import DataError
from cordaseg.models.corda import ModelConfig


@dataclass
class OptimConfig:
    """SGD with the poly schedule (docs/method.md, "Optimiser and schedule"), or DAFormer's AdamW with a linear warm-up
    (:mod:`cordaseg.engine.adamw`, :mod:`cordaseg.engine.lr_schedule`)."""

    name: Literal["sgd", "adamw"] = "sgd"
    """'sgd' (CorDA, DACS) or 'adamw' (DAFormer, MIC: lr 6e-5, betas (0.9, 0.999), weight_decay
    0.01, heads at head_lr_mult = 10 times the lr)."""
    iterations: int = 250_000
    """Total training iterations; the poly schedule reaches 0 here."""
    lr: float = 2.5e-4
    """Base learning rate of the backbone group (the heads use ``head_lr_mult`` times it)."""
    head_lr_mult: float = 10.0
    """Learning-rate multiplier of every head (initial branches, distillation, final heads)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """SGD: L2 weight decay on every trainable parameter; AdamW: decoupled weight decay (DAFormer: 0.01)."""
    poly_power: float = 0.9
    """Exponent of the poly schedule lr_i = lr * (1 - i / iterations) ** poly_power (DAFormer: 1.0)."""
    warmup_iterations: int = 0
    """Linear warm-up over the first this many iterations, on top of the poly schedule (DAFormer:
    1500): lr_i = poly_i * (1 - (1 - i / warmup_iterations) * (1 - warmup_ratio)). 0 = none."""
    warmup_ratio: float = 1e-6
    """Fraction of the poly learning rate at iteration 0 of the warm-up (DAFormer: 1e-6)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW only: the moment coefficients (DAFormer: 0.9, 0.999)."""
    eps: float = 1e-8
    """AdamW only: the denominator's epsilon (PyTorch's and mmcv's default)."""
    no_decay_norms: bool = False
    """AdamW only: no weight decay on the encoder's layer norms (DAFormer: true, its mmcv
    ``decay_mult=0`` for parameters named "norm"; the decoder keeps its decay)."""
    batch_size: int = 2
    """Source images per iteration and per process (as many target images); the paper uses 2 on 1 GPU."""
    lr_scaling: Literal["none", "linear"] = "none"
    """'linear' multiplies lr by world_size * batch_size / reference_batch; 'none' keeps lr as written."""
    reference_batch: int = 2
    """The effective batch that ``lr`` was tuned for (used by lr_scaling: linear)."""
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = "auto"
    """SGD kernels, same update either way: 'fused' (one kernel for all parameters), 'foreach'
    (a few multi-tensor kernels), 'for_loop' (one update per tensor); 'auto' = fused on CUDA,
    PyTorch's default elsewhere."""
    param_multiplicity: Literal["reference", "once"] = "reference"
    """SGD only (AdamW updates every tensor once). 'reference': each backbone tensor is updated as
    many times per step as the reference's parameter list names it (stem conv 1x, residual-block
    convs 3x, projection convs 4x; about 3x the nominal backbone step and weight decay), as the
    published models were trained; 'once': every tensor updated once (plain SGD, the paper's
    text). See docs/reference-behaviour.md."""
    divergence_loss: float = 1.0e4
    """The run stops as diverged when the training loss exceeds this (or is NaN / infinite), without
    checkpointing the diverged weights; the reference's losses stay below ~10."""

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"optim.iterations: {self.iterations} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"optim.batch_size: {self.batch_size} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: {self.lr} must be > 0")
        if self.reference_batch < 1:
            raise ConfigError(f"optim.reference_batch: {self.reference_batch} must be >= 1")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"optim.momentum: {self.momentum} must be >= 0 and < 1")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay: {self.weight_decay} must be >= 0")
        if not self.divergence_loss > 0:
            raise ConfigError(f"optim.divergence_loss: {self.divergence_loss} must be > 0")
        if self.warmup_iterations < 0:
            raise ConfigError(f"optim.warmup_iterations: {self.warmup_iterations} must be >= 0")
        if not 0.0 < self.warmup_ratio <= 1.0:
            raise ConfigError(f"optim.warmup_ratio: {self.warmup_ratio} must lie in (0, 1]")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError(f"optim.betas: {list(self.betas)} must each lie in [0, 1)")
        if not self.eps > 0:
            raise ConfigError(f"optim.eps: {self.eps} must be > 0")


@dataclass
class RunConfig:
    """Where the run writes, which device and numerics it uses, and its seed."""

    out_dir: str = "runs/corda"
    """Run directory: resolved config, metrics.jsonl, TensorBoard events, checkpoints."""
    seed: int = 0
    """Seed of the sample order, of every step's generator and of the model initialisation."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes this process's CUDA device when there is one, else the CPU."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32 (the reference) or bf16 autocast for the forward passes and losses."""
    channels_last: bool = False
    """Keep images and weights in channels_last memory format (faster convolutions on GPUs)."""
    deterministic: bool = False
    """Deterministic kernels and no cudnn.benchmark: bit-identical reruns and resumes, slower."""
    teacher_stream: bool = True
    """On CUDA, run the teacher's forward on a second stream, overlapped with the student's passes
    (passed to the adaptation step, :func:`cordaseg.adaptation.passes.launch_pseudo_labels`; the
    values do not change)."""
    compile: bool = False
    """torch.compile the student and the teacher for the training passes (default mode). The first
    iterations take minutes longer; measure the gain first (benchmarks/train_step.py --compile 0 1)."""
    num_workers: int = 2
    """DataLoader worker processes per dataset and per process (0: load in the main process)."""
    auto_resume: bool = True
    """Resume from the newest checkpoint in out_dir when there is one (otherwise that is an error)."""
    sync_batchnorm: bool = False
    """Under torchrun, every batch-norm layer of the student and of the EMA teacher normalises with
    the mean and variance of the global batch (all processes), as the reference's
    use_sync_batchnorm: 2 processes of batch 1 then train like 1 process of batch 2. Costs one
    all-reduce per layer and pass. In a single process batch norm stays exactly plain (a warning)."""

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"run.num_workers: {self.num_workers} must be >= 0")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"run.seed: {self.seed} must be >= 0 and < 2**63 (a NumPy seed)")


@dataclass
class EvalConfig:
    """Evaluation of the student on the target validation set during training (docs/method.md, "Evaluation")."""

    every: int = 5000
    """Evaluate every this many iterations (and after the last one); 0 disables evaluation."""
    batch_size: int = 1
    """Validation images per forward pass and per process."""
    max_images: int = 0
    """Evaluate on the first this many validation images only (0: all); for quick checks."""
    keep_best: bool = True
    """Save ``best.pt`` (model weights) whenever the validation mIoU improves."""

    def __post_init__(self) -> None:
        if self.every < 0 or self.batch_size < 1 or self.max_images < 0:
            raise ConfigError("eval: every and max_images must be >= 0 and batch_size >= 1")


@dataclass
class CheckpointConfig:
    """Training checkpoints and the initial weights."""

    every: int = 5000
    """Write a training checkpoint every this many iterations (and after the last one)."""
    keep_last: int = 3
    """Keep only the newest this many training checkpoints (best.pt is kept separately)."""
    init: str | None = None
    """DeepLab initialisation file (COCO or ImageNet DeepLabV2 ResNet-101), or a cordaseg checkpoint
    of the same model; None trains from scratch (with a warning)."""
    trust_pickle: bool = False
    """Allow full unpickling of an old init file that weights_only loading refuses (can run code)."""

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"checkpoint.every: {self.every} must be >= 1")
        if self.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last: {self.keep_last} must be >= 1")


@dataclass
class LoggingConfig:
    """What the run shows while it trains."""

    every: int = 50
    """Log the loss terms, lr and throughput every this many iterations (a host sync each time)."""
    image_every: int = 1000
    """Write image panels (source, target, mixed, pseudo-label, weights, predictions) this often; 0: never."""
    tensorboard: bool = True
    """Mirror every scalar and image panel to TensorBoard under <out_dir>/tensorboard."""
    progress: bool = True
    """Show a progress bar with iterations/s and ETA (rank 0 only)."""

    def __post_init__(self) -> None:
        if self.every < 1 or self.image_every < 0:
            raise ConfigError("logging: every must be >= 1 and image_every >= 0")


FIDELITY_SWITCHES: dict[str, dict[str, object]] = {
    "optim.param_multiplicity": {"reference": "reference", "paper": "once"},
    "adaptation.depth_weight": {"reference": "reference_cross_batch", "paper": "per_image"},
    "adaptation.augment_decision": {"reference": "per_batch", "paper": "per_image"},
    "adaptation.classmix_ignore_as_class": {"reference": True, "paper": False},
    "model.aspp_branches": {"reference": 2, "paper": 4},
    "model.head_bias_init": {"reference": "uniform", "paper": "zero"},
}
"""The keys that ``recipe.fidelity`` sets, with their value in each mode (docs/reference-behaviour.md)."""


@dataclass
class RecipeConfig:
    """Which behaviour to follow where the reference code differs from the paper's text."""

    fidelity: Literal["reference", "paper"] = "reference"
    """'reference': train as the reference code trained the published models (parameter
    multiplicity, cross-batch depth weight, per-batch augmentation decisions, ignore value as a
    ClassMix class, two-branch ASPP, default head-bias initialisation); 'paper': the paper's text
    and plain framework semantics. Sets every key of ``FIDELITY_SWITCHES`` that the config does
    not set itself, so each one can still be overridden; the saved config holds the result."""


def apply_fidelity(data: dict) -> dict:
    """Fill the keys of :data:`FIDELITY_SWITCHES` that ``data`` leaves unset from ``recipe.fidelity``.

    ``data`` is the raw config mapping (YAML plus overrides); returns a new mapping.
    """
    recipe = data.get("recipe") or {}
    fidelity = recipe.get("fidelity", "reference") if isinstance(recipe, dict) else "reference"
    if fidelity not in ("reference", "paper"):
        raise ConfigError(f"recipe.fidelity: {fidelity!r} is not one of 'reference', 'paper'")
    out = dict(data)
    for key, values in FIDELITY_SWITCHES.items():
        section, name = key.split(".")
        current = out.get(section)
        if current is None:
            current = {}
        if not isinstance(current, dict):
            continue  # from_dict reports the wrong type, naming the section
        if name not in current:
            out[section] = {**current, name: values[fidelity]}
    return out


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as ``config.yaml`` in the run directory and inside
    every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network (arch, backbone depth, heads)."""
    source: DatasetConfig = field(default_factory=DatasetConfig)
    """Labelled source training set (GTA5 or SYNTHIA)."""
    target: DatasetConfig | None = None
    """Unlabelled target training set (Cityscapes train); not needed for source-only training."""
    val: DatasetConfig | None = None
    """Target validation set (Cityscapes val); None disables evaluation."""
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    """The adaptation step: method (corda / dacs / source_only), pseudo-labels, weights, mixing."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run directory, device, numerics, seed."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Validation during training."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints and initial weights."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics, TensorBoard, progress bar."""
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    """Reference or paper behaviour where they differ (applied when the config is loaded)."""


RETIRED_KEYS: dict[str, str] = {
    "adaptation.mean_bgr": "source.mean_bgr",
    "adaptation.ignore_index": "the ignore value 255 of data/labels.py",
    "adaptation.invalid_depth": "the invalid depth 1.0 of data/formats.py",
}
"""Keys of earlier versions whose fact now has one home elsewhere: the saved configs of older runs
(``config.yaml``, the config inside a checkpoint) still load when they hold that home's value."""


def _retire_keys(data: dict) -> dict:
    """``data`` without the :data:`RETIRED_KEYS`; one that holds another value than its new home
    is a ConfigError naming both."""
    adaptation = data.get("adaptation")
    if not isinstance(adaptation, dict) or not any(f"adaptation.{k}" in RETIRED_KEYS for k in adaptation):
        return data
    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    now = {"adaptation.mean_bgr": list(source.get("mean_bgr", CAFFE_MEAN_BGR)),
           "adaptation.ignore_index": IGNORE_INDEX, "adaptation.invalid_depth": INVALID_DEPTH}
    adaptation = dict(adaptation)
    for key, home in RETIRED_KEYS.items():
        name = key.split(".")[1]
        if name not in adaptation:
            continue
        value = adaptation.pop(name)
        if (list(value) if isinstance(value, (list, tuple)) else value) != now[key]:
            raise ConfigError(f"{key}: {value!r} differs from {home} ({now[key]!r}); {key} is no longer "
                              f"a setting of its own (docs/config.md)")
    return {**data, "adaptation": adaptation}


def train_config_from_dict(data: dict) -> TrainConfig:
    """A config mapping -> :class:`TrainConfig`, with the :data:`RETIRED_KEYS` of older configs
    checked and dropped and ``recipe.fidelity`` applied first."""
    return from_dict(TrainConfig, apply_fidelity(_retire_keys(data)))


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file plus ``key=value`` overrides -> :class:`TrainConfig` (unknown keys and wrong types
    are ConfigErrors naming the dotted key)."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return train_config_from_dict(data)


def _check_dataset(key: str, data: DatasetConfig, train: bool) -> None:
    """Root folder present; for training sets, the crop fits inside the resized frame."""
    if not data.root:
        raise DataError(f"{key}.root: no dataset folder given")
    if not Path(data.root).is_dir():
        raise DataError(f"{key}.root: dataset folder not found: {data.root}")
    if not train or data.crop is None:
        return
    resize, scale = data.target_resize()
    if resize is None:
        # A scale of the frame size: read the size from one image's header (no pixels decoded).
        records = find_samples(data)
        if not records:
            raise DataError(f"{key}.root: no {data.format} frames found under {data.root}")
        with Image.open(records[0].image) as first:
            resize = resized_size(first.size, None, scale)
    crop_w, crop_h = data.crop
    if crop_w > resize[0] or crop_h > resize[1]:
        raise ConfigError(
            f"{key}.crop: {crop_w}x{crop_h} is larger than the resized image {resize[0]}x{resize[1]} "
            f"(set {key}.crop or {key}.resize)"
        )


def _check_normalisation(cfg: TrainConfig) -> None:
    """Every dataset normalises its images with the source's mean (the step mixes source and target
    images, the network sees both); a transformer backbone expects the caffe mean it converts from."""
    for key in ("target", "val"):
        section = getattr(cfg, key)
        if section is not None and tuple(section.mean_bgr) != tuple(cfg.source.mean_bgr):
            raise ConfigError(f"{key}.mean_bgr: {tuple(section.mean_bgr)} differs from source.mean_bgr "
                              f"{tuple(cfg.source.mean_bgr)}; every dataset of a run must normalise alike")
    if cfg.model.backbone != "resnet" and tuple(cfg.source.mean_bgr) != tuple(CAFFE_MEAN_BGR):
        raise ConfigError(f"source.mean_bgr: the {cfg.model.backbone} backbone converts images normalised with the "
                          f"caffe mean {CAFFE_MEAN_BGR} (data/normalization.py), not {tuple(cfg.source.mean_bgr)}")


def check_sections(cfg: TrainConfig) -> None:
    """The checks between sections that need no files: what ``cordaseg train --validate-only``
    runs, and the first part of :func:`validate`; each failure names the key."""
    method = cfg.adaptation.method
    if method == "corda" and not cfg.model.has_depth:
        raise ConfigError(
            f"adaptation.method: 'corda' needs depth heads, but model.arch '{cfg.model.arch}' has none "
            "(use adaptation.method=dacs, or model.arch=corda)"
        )
    if cfg.adaptation.uses_target and cfg.target is None:
        raise ConfigError(f"target: adaptation.method '{method}' needs a target dataset section")
    for key in ("target", "val"):
        section = getattr(cfg, key)
        if section is not None and section.rare_class_sampling.enabled:
            raise ConfigError(f"{key}.rare_class_sampling.enabled: only the labelled source set is sampled by class")
    if cfg.source.rare_class_sampling.enabled and not cfg.source.use_labels:
        raise ConfigError("source.rare_class_sampling.enabled: needs source.use_labels (the class statistics)")
    _check_normalisation(cfg)


def validate(cfg: TrainConfig) -> None:
    """Checks that need no model and no pixels (:func:`check_sections`, then the data folders, the
    initial weights and the output folder); each failure names the key or path."""
    check_sections(cfg)
    _check_dataset("source", cfg.source, train=True)
    if cfg.adaptation.uses_target:
        _check_dataset("target", cfg.target, train=True)
    if cfg.val is not None and cfg.eval.every:
        _check_dataset("val", cfg.val, train=False)
    if cfg.checkpoint.init is not None and not Path(cfg.checkpoint.init).is_file():
        raise ConfigError(f"checkpoint.init: file not found: {cfg.checkpoint.init}")
    out_dir = Path(cfg.run.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"run.out_dir: {out_dir} exists and is not a folder")
