"""``cordaseg demo``: source-only, DACS, CorDA and a target oracle on the synthetic street world
(issue 6, part 4), on a CPU within a fixed time budget.

Stages: render the world (cached); probe the seconds per iteration of every method with a few
iterations; plan the iteration counts from those measurements and the time left; train
source-only (DeepLabV2 on the GTA5-format source) and the oracle (the same recipe on the labelled
target train split); warm-start DACS and CorDA from the source-only weights, as the paper starts
from pretrained weights (spec sections 2 and 3); evaluate the four students on the target val
split (spec section 4) and write ``report.md`` / ``report.png``.

Warm start. DACS loads the whole source-only DeepLabV2. CorDA loads its backbone and puts the
DeepLabV2 ASPP classifier into its initial semantic head, which is the same module on the same
features in the GTA variant (spec section 2); the task branches, the distillation and the final
heads start fresh, as they do in the paper. The pseudo-labels come from the initial head for the
first ``initial_head_fraction`` of the iterations, like the GTA recipe's 25,001 of 250,000.

Target depth. By default CorDA reads the target tree's stereo depth (``.mat`` files the world
computed with the flaws of a stereo matcher). With ``target_depth: self_supervised`` the demo
first trains the self-supervised stereo depth network on the target pairs (spec section 8) for
``depth_share`` of the budget and exports its depth in the same format, as the paper does.

Time planning. The adaptation methods get ``adaptation_share`` of the training time and the
same number of iterations each; source-only and the oracle share the rest, with the same number
of iterations each. After the two source-supervised runs, the adaptation iterations are planned
again from the time that is really left, scaled by how much slower or faster those two runs went
than their probes said (the machine may be shared). ``source_iterations`` and
``adaptation_iterations`` fix the counts instead (the benchmark does; with both set, nothing is
probed and the budget is not used).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Subset

from cordaseg.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from cordaseg.data.datasets import DatasetConfig, build_dataset
from cordaseg.data.world.export import WorldConfig, generate_world_from_config
from cordaseg.engine.config import FIDELITY_SWITCHES, TrainConfig, train_config_from_dict
from cordaseg.engine.logging import read_metrics
from cordaseg.engine.trainer import train
from cordaseg.errors import CheckpointError
from cordaseg.evaluation.evaluate import EvalResult, evaluate_segmentation
from cordaseg.models.checkpoint import atomic_save, load_state, model_payload, read_file
from cordaseg.models.corda import ModelConfig, build_model

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
    minutes: float = 15.0
    """Wall-clock budget of the whole demo, world rendering included."""
    adaptation_share: float = 0.6
    """Fraction of the training time given to DACS and CorDA (the rest: source-only and oracle)."""
    source_iterations: int = 0
    """Iterations of source-only and of the oracle; 0 plans them from the time budget."""
    adaptation_iterations: int = 0
    """Iterations of DACS and of CorDA; 0 plans them from the time budget."""
    min_iterations: int = 5
    """Fewest iterations a planned run gets, however short the budget."""
    probe_iterations: int = 8
    """Iterations of each method timed before planning (only the second half is counted)."""
    initial_head_fraction: float = 0.1
    """Fraction of the adaptation run whose pseudo-labels come from the initial semantic head."""
    eval_images: int = 0
    """Score on the first this many target val images (0: all)."""
    grid_images: int = 4
    """Target val images shown in report.png."""
    target_depth: Literal["stereo", "self_supervised"] = "self_supervised"
    """CorDA's target depth: a Monodepth2-style network trained here on the target stereo pairs (spec
    section 8) and exported as stereo .mat files, as the paper uses self-supervised depth (default);
    or the tree's own stereo-matcher depth files (``stereo``), which skips that stage."""
    depth_share: float = 0.15
    """Fraction of the budget for training the self-supervised depth network (target_depth: self_supervised)."""
    depth_seconds: float | None = None
    """Seconds for that training instead of ``depth_share`` of the budget (for fixed iteration counts)."""
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
        for key in ("source_iterations", "adaptation_iterations", "eval_images", "grid_images"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: {getattr(self, key)} must be >= 0")
        if self.min_iterations < 1 or self.probe_iterations < 2 or self.batch_size < 1:
            raise ConfigError("min_iterations and batch_size must be >= 1, probe_iterations >= 2")
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


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def load_demo_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DemoConfig:
    """The demo's defaults, updated by an optional YAML file, then by ``key=value`` overrides
    (so ``world.num_source=200`` keeps the demo's other world settings)."""
    data = to_dict(DemoConfig())
    if path is not None:
        data = _merge(data, load_yaml(path))
    return from_dict(DemoConfig, apply_overrides(data, overrides or []))


@dataclass
class MethodResult:
    """One trained method, scored on the target val split."""

    method: str
    """One of :data:`METHODS`."""
    iterations: int
    """Training iterations run."""
    seconds_per_iteration: float
    """Measured training speed: the run's wall-clock time (setup included) over its iterations."""
    train_seconds: float
    """Wall-clock time of the training run (setup included)."""
    evaluation: EvalResult
    """Scores and kept samples on the target val split."""

    @property
    def miou(self) -> float:
        return float(self.evaluation.miou[19])


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out_dir: Path
    """The output folder (world/, runs/, report.md, report.png, results.json)."""
    methods: dict[str, MethodResult]
    """Method name -> its result, in :data:`METHODS` order."""
    seconds: float
    """Wall-clock time of the whole demo."""
    report_md: Path
    report_png: Path
    results_json: Path


class _Progress:
    """Stage lines with the elapsed time, printed as the demo goes (nothing when quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        if not self.quiet:
            minutes, seconds = divmod(int(self.elapsed()), 60)
            print(f"[demo {minutes:02d}:{seconds:02d}] {message}", flush=True)


# ---------------------------------------------------------------------------------- configs


def _datasets(cfg: DemoConfig, method: str, source_root: Path, target_root: Path,
              target_depth_root: Path | None = None) -> dict[str, Any]:
    """The source (and target) dataset sections of one method's training config; CorDA reads its
    target depth from ``target_depth_root`` when given (a tree of self-supervised depth)."""
    size, crop = list(cfg.world.size), list(cfg.crop)
    depth = method == "corda"
    if method == "oracle":
        # The target train split with its labels, through the same recipe as source-only.
        source = {"format": "cityscapes", "root": str(target_root), "split": "train", "depth": "none",
                  "use_labels": True, "resize_scale": 1.0, "crop": crop}
    else:
        source = {"format": "gta5", "root": str(source_root), "depth": "native" if depth else "none",
                  "resize": size, "crop": crop}
    sections: dict[str, Any] = {"source": source}
    if method in ("dacs", "corda"):
        root = target_depth_root if depth and target_depth_root is not None else target_root
        sections["target"] = {"format": "cityscapes", "root": str(root), "split": "train",
                              "depth": "stereo" if depth else "none", "use_labels": False,
                              "resize_scale": 1.0, "crop": crop}
    return sections


def train_config(cfg: DemoConfig, method: str, source_root: Path, target_root: Path, run_dir: Path,
                 iterations: int, init: Path | None = None, log_every: int = 10,
                 progress: bool = True, target_depth_root: Path | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of one demo run (validated like any config file)."""
    adapting = method in ("dacs", "corda")
    data: dict[str, Any] = {
        "model": to_dict(cfg.model("corda" if method == "corda" else "deeplab")),
        **_datasets(cfg, method, source_root, target_root, target_depth_root),
        "adaptation": {
            "method": method if adapting else "source_only",
            "initial_head_until": int(round(cfg.initial_head_fraction * iterations)),
        },
        "optim": {"iterations": iterations, "batch_size": cfg.batch_size,
                  "lr": cfg.lr * (cfg.adaptation_lr_factor if adapting else 1.0)},
        "run": {"out_dir": str(run_dir), "seed": cfg.seed, "device": "cpu", "num_workers": 0,
                "auto_resume": False},
        "recipe": {"fidelity": cfg.fidelity},
        "eval": {"every": 0},
        "checkpoint": {"every": iterations, "keep_last": 1, "init": None if init is None else str(init)},
        "logging": {"every": max(1, min(log_every, iterations)), "image_every": 0, "tensorboard": False,
                    "progress": progress},
    }
    return train_config_from_dict(data)


def val_dataset(cfg: DemoConfig, target_root: Path):
    """The target val split, scored at the world's frame size."""
    data = DatasetConfig(format="cityscapes", root=str(target_root), split="val", depth="none",
                         eval_size=tuple(cfg.world.size))
    dataset = build_dataset(data, train=False, seed=cfg.seed)
    if cfg.eval_images:
        dataset = Subset(dataset, range(min(cfg.eval_images, len(dataset))))
    return dataset


def _run(train_cfg: TrainConfig):
    """Train one fresh run (an old run folder of the same name is replaced)."""
    run_dir = Path(train_cfg.run.out_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    with warnings.catch_warnings():
        # The source-supervised runs start from random weights on purpose (no pretrained file here).
        warnings.filterwarnings("ignore", message="checkpoint.init is not set")
        return train(train_cfg)


# ---------------------------------------------------------------------------------- target depth


def self_supervised_target_depth(cfg: DemoConfig, target_root: Path, out_dir: Path, seconds: float,
                                 progress: bool = True) -> Path:
    """Train the self-supervised stereo depth network on the target train pairs for at most
    ``seconds``, export its depth as stereo ``.mat`` files, and return a Cityscapes tree that has
    the target's images with that depth (images linked, not copied).

    The network is sized for a CPU budget of minutes (encoder width 16, decoder width 8, Adam at
    1e-3: the settings of ``benchmarks/self_supervised_depth.py``, AbsRel ~0.29 after 50 s on the
    world). Inputs are half the world's frame size, rounded down to multiples of 32: at 256x128 the
    full size stayed at its initial depth for two minutes, while half size reached AbsRel 0.14
    against the tree's stereo-matcher depth in 100 s (300 pairs, 2 CPU cores).
    """
    from cordaseg.depth.pipeline import self_supervised_target_depth as train_and_export

    width, height = cfg.world.size
    size = [max(64, width // 2 // 32 * 32), max(64, height // 2 // 32 * 32)]
    work_dir = out_dir / "self_supervised_depth"
    if work_dir.exists():  # a fresh run: an old depth_run would be resumed or mixed in
        shutil.rmtree(work_dir)
    tree, _ = train_and_export(target_root, work_dir, fmt="stereo-mat", split="train", progress=progress, config={
        "mode": "stereo",
        "model": {"encoder_width": 16, "decoder_width": 8, "min_depth": 0.5},
        "data": {"size": size},
        "optim": {"batch_size": 4, "iterations": 100_000, "lr": 1e-3},
        "run": {"seed": cfg.seed, "device": "cpu", "workers": 0, "log_interval": 25,
                "time_limit_s": max(seconds, 1.0)},
    })
    return tree


# ---------------------------------------------------------------------------------- warm start


def corda_init_from_deeplab(deeplab_checkpoint: Path, model_cfg: ModelConfig, out_path: Path,
                            seed: int = 0) -> Path:
    """Write a CorDA checkpoint whose backbone and initial semantic ASPP head are the DeepLabV2
    weights of ``deeplab_checkpoint``; every other head is freshly initialised (seeded)."""
    payload = read_file(deeplab_checkpoint)
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{deeplab_checkpoint}: not a cordaseg checkpoint with a 'model' entry")
    source = payload["model"]
    if model_cfg.arch != "corda" or model_cfg.initial_semantic != "aspp":
        raise ConfigError("the warm start maps DeepLabV2 onto CorDA's ASPP initial head: "
                          "model.arch must be 'corda' and model.initial_semantic 'aspp'")
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    state = model.state_dict()
    taken = 0
    for key, value in source.items():
        if key.startswith("backbone."):
            new_key = key
        elif key.startswith("semantic_head."):
            new_key = "semantic_initial_head." + key[len("semantic_head."):]
        else:
            raise CheckpointError(f"{deeplab_checkpoint}: unexpected key {key} for a DeepLabV2 model")
        if new_key not in state or state[new_key].shape != value.shape:
            raise CheckpointError(f"{deeplab_checkpoint}: {key} does not fit {new_key} of the CorDA model "
                                  "(different backbone depth or width?)")
        state[new_key] = value
        taken += 1
    load_state(model, state, out_path)
    return atomic_save(model_payload(model, model_cfg, warm_start=str(deeplab_checkpoint), keys_taken=taken),
                       out_path)


# ---------------------------------------------------------------------------------- planning


def probe_speed(run_dir: Path) -> float:
    """Median seconds per iteration over the second half of a probe run's iterations."""
    rates = [float(r["it_per_s"]) for r in read_metrics(run_dir, "train")]
    # The first iterations of a process also build its convolution kernels: keep the later half.
    rates = rates[len(rates) // 2:]
    if not rates:
        raise CheckpointError(f"{run_dir}: the probe run logged no iterations")
    return 1.0 / statistics.median(rates)


def plan_iterations(seconds: float, speed: dict[str, float], share: float, minimum: int = 1) -> dict[str, int]:
    """Iteration counts that fill ``seconds`` of training: source-only and oracle get
    ``1 - share`` of it with equal counts, DACS and CorDA ``share`` with equal counts."""
    seconds = max(seconds, 0.0)
    source = (1.0 - share) * seconds / (speed["source_only"] + speed["oracle"])
    adapt = share * seconds / (speed["dacs"] + speed["corda"])
    source_n, adapt_n = max(minimum, int(source)), max(minimum, int(adapt))
    return {"source_only": source_n, "oracle": source_n, "dacs": adapt_n, "corda": adapt_n}


def adaptation_iterations_left(seconds: float, speed: dict[str, float], minimum: int = 1) -> int:
    """Equal DACS and CorDA iteration counts that fill the ``seconds`` that are left."""
    return max(minimum, int(max(seconds, 0.0) / (speed["dacs"] + speed["corda"])))


# ---------------------------------------------------------------------------------- the demo


def _evaluate(model, dataset, cfg: DemoConfig) -> EvalResult:
    return evaluate_segmentation(model, dataset, device="cpu", batch_size=4, progress=False,
                                 keep_samples=cfg.grid_images)


def _probe(cfg: DemoConfig, source_root: Path, target_root: Path, val, probe_root: Path
           ) -> tuple[dict[str, float], float]:
    """Seconds per iteration of every method, and the expected seconds of the four evaluations."""
    # A throwaway run first: a process's first iterations also build its convolution kernels.
    _run(train_config(cfg, "source_only", source_root, target_root, probe_root / "warmup", 2, progress=False))
    speed = {}
    for method in METHODS:
        probe_dir = probe_root / method
        _run(train_config(cfg, method, source_root, target_root, probe_dir, cfg.probe_iterations, log_every=1,
                          progress=False))
        speed[method] = probe_speed(probe_dir)
    start = time.perf_counter()
    count = min(4, len(val))
    evaluate_segmentation(build_model(cfg.model("corda")), Subset(val, range(count)), device="cpu",
                          batch_size=4, progress=False)
    eval_seconds = (time.perf_counter() - start) / count * len(val) * len(METHODS)
    shutil.rmtree(probe_root)
    return speed, eval_seconds


def run_demo(cfg: DemoConfig, out_dir: str | Path, quiet: bool = False) -> DemoResult:
    """Run the whole demo into ``out_dir`` and return the scores (see the module docstring)."""
    from cordaseg.demo.report import write_report

    out_dir = Path(out_dir)
    say = _Progress(quiet)
    budget = cfg.minutes * 60.0
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo_config.json").write_text(json.dumps(to_dict(cfg), indent=2))

    say(f"stage 1/5: world ({cfg.world.num_source} source, {cfg.world.num_target_train} target train, "
        f"{cfg.world.num_target_val} target val frames at {cfg.world.size[0]}x{cfg.world.size[1]}; cached)")
    source_root, target_root = generate_world_from_config(out_dir / "world", cfg.world, progress=not quiet,
                                                          workers=cfg.world_workers)
    val = val_dataset(cfg, target_root)
    runs = out_dir / "runs"

    planned = not (cfg.source_iterations and cfg.adaptation_iterations)
    speed: dict[str, float] = {}
    eval_seconds = 0.0
    if planned:
        say(f"stage 2/5: timing {cfg.probe_iterations} iterations of each method")
        speed, eval_seconds = _probe(cfg, source_root, target_root, val, runs / "probe")
        say("  s/iteration: " + ", ".join(f"{METHOD_TITLES[m]} {speed[m]:.3f}" for m in METHODS)
            + f"; evaluation of all four ~{eval_seconds:.0f} s")
    else:
        say("stage 2/5: fixed iteration counts, no timing needed")

    target_depth_root = None
    if cfg.target_depth == "self_supervised":
        seconds = cfg.depth_seconds if cfg.depth_seconds is not None else cfg.depth_share * budget
        say(f"stage 2b/5: self-supervised stereo depth on the target train pairs (~{seconds / 60:.1f} min), "
            "exported for CorDA")
        target_depth_root = self_supervised_target_depth(cfg, target_root, runs, seconds, progress=not quiet)

    # Setup of each run (datasets, model, checkpoint) and the report: a fixed margin.
    margin = 10.0 + 0.05 * budget
    plan = plan_iterations(budget - say.elapsed() - eval_seconds - margin, speed, cfg.adaptation_share,
                           cfg.min_iterations) if planned else {}
    if cfg.source_iterations:
        plan["source_only"] = plan["oracle"] = cfg.source_iterations
    if cfg.adaptation_iterations:
        plan["dacs"] = plan["corda"] = cfg.adaptation_iterations
    say("  plan: " + ", ".join(f"{METHOD_TITLES[m]} {plan[m]} it" for m in METHODS))

    results: dict[str, MethodResult] = {}
    trained: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for method in METHODS:
        if method == "dacs" and not cfg.adaptation_iterations:
            # How much slower (or faster) the machine ran the two finished runs than the probes said.
            # A ratio of sums: a single probe disturbed by other load weighs only by its share.
            done = ("source_only", "oracle")
            slowdown = min(3.0, max(0.33, sum(timings[m] for m in done) / sum(plan[m] * speed[m] for m in done)))
            left = budget - say.elapsed() - eval_seconds * 0.5 - margin
            expected = {m: v * slowdown for m, v in speed.items()}
            plan["dacs"] = plan["corda"] = adaptation_iterations_left(left, expected, cfg.min_iterations)
            say(f"  re-planned from the time left ({left:.0f} s, runs took {slowdown:.2f}x the probed time): "
                f"DACS and CorDA {plan['dacs']} it each")
        stage = 3 if method in ("source_only", "oracle") else 4
        expect = f" (~{plan[method] * speed[method] / 60:.1f} min)" if planned else ""
        say(f"stage {stage}/5: training {METHOD_TITLES[method]} for {plan[method]} iterations{expect}")
        init = None
        if method == "dacs":
            init = trained["source_only"].last_checkpoint
        elif method == "corda":
            init = corda_init_from_deeplab(trained["source_only"].last_checkpoint, cfg.model("corda"),
                                           runs / "corda_init.pt", seed=cfg.seed)
        start = time.perf_counter()
        result = _run(train_config(cfg, method, source_root, target_root, runs / method, plan[method], init=init,
                                   progress=not quiet, target_depth_root=target_depth_root))
        timings[method] = time.perf_counter() - start
        trained[method] = result
        evaluation = _evaluate(result.student, val, cfg)
        results[method] = MethodResult(method, plan[method], timings[method] / plan[method], timings[method],
                                       evaluation)
        say(f"  {METHOD_TITLES[method]}: target val mIoU {results[method].miou:.1f} "
            f"({timings[method]:.0f} s of training)")

    say("stage 5/5: report")
    total = say.elapsed()
    paths = write_report(out_dir, cfg, results, total)
    say(f"done in {total / 60:.1f} min: {paths[0]}, {paths[1]}")
    return DemoResult(out_dir, results, total, *paths)


def summary(methods: dict[str, MethodResult], seconds: float) -> dict[str, Any]:
    """JSON-safe numbers of a demo: per method iterations, timings, mIoU and per-class IoU."""
    def number(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 2)

    return {
        "seconds": round(seconds, 1),
        "methods": {
            name: {
                "iterations": r.iterations,
                "seconds_per_iteration": round(r.seconds_per_iteration, 4),
                "train_seconds": round(r.train_seconds, 1),
                "miou": number(r.miou),
                "iou": {c: number(v) for c, v in zip(r.evaluation.class_names, r.evaluation.iou)},
            }
            for name, r in methods.items()
        },
    }
