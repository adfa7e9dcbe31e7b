"""``cordaseg demo``: source-only, DACS, CorDA and a target oracle on the synthetic street world,
on a CPU in about 15 minutes.

Stages: render the world (cached); train source-only (DeepLabV2 on the GTA5-format source) and
the oracle (the same recipe on the labelled target train split); warm-start DACS and CorDA from
the source-only weights, as the paper starts from pretrained weights; evaluate the four
students on the target val split and write ``report.md`` / ``report.png``.

Warm start. DACS loads the whole source-only DeepLabV2. CorDA loads its backbone and puts the
DeepLabV2 ASPP classifier into its initial semantic head, which is the same module on the same
features in the GTA variant (``cordaseg.models.corda``); the task branches, the distillation and the final
heads start fresh, as they do in the paper. The pseudo-labels come from the initial head for the
first ``initial_head_fraction`` of the iterations, like the GTA recipe's 25,001 of 250,000.

Target depth. By default (``target_depth: self_supervised``) the demo first trains the
self-supervised stereo depth network on the target pairs (Monodepth2-style, as the paper's
Cityscapes depth) for ``depth_iterations`` and exports its depth as stereo ``.mat`` files. With
``target_depth: stereo`` CorDA reads the target tree's own stereo depth (``.mat`` files the world
computed with the flaws of a stereo matcher).

Iteration counts. By default they are fixed (``source_iterations``, ``adaptation_iterations``,
``depth_iterations``), so a seed gives the same numbers whatever the load of the machine. The
defaults take about 14 minutes on 2 idle CPU cores (:func:`expected_seconds` at
:data:`REFERENCE_SPEED`: 4000 x (0.033 + 0.033) + 1200 x 0.089 + 2000 x (0.086 + 0.127) s of
training, 45 s of rendering, 15 s of evaluation: 857 s; the default demo of benchmarks/RESULTS.md
with about as many iterations took 14.3 minutes). Setting ``source_iterations`` and
``adaptation_iterations`` to 0 (what ``cordaseg demo --minutes`` does) plans them from a time
budget instead: every method is timed
for a few iterations; the adaptation methods get ``adaptation_share`` of the training time with
equal counts, source-only and the oracle the rest with equal counts; after the two
source-supervised runs the adaptation counts are planned again from the time really left, scaled
by how much slower those runs went than their probes (a shared machine), and never below
``adaptation_floor``. A budget run depends on the machine's speed and load; a fixed run does not.

Threads. The demo loads data in its own process (``num_workers: 0``), so torch's intra-op
threads are the only workers: :func:`cpu_threads` sets one per CPU this process may use (the
affinity mask and a cgroup CPU quota, which torch's default of one per core ignores; more
threads than CPUs wait on each other at every operation).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from cordaseg.config import ConfigError, to_dict
from cordaseg.data.datasets import DatasetConfig, build_dataset
from cordaseg.demo.config import METHOD_TITLES, METHODS, DemoConfig, merge
from cordaseg.demo.report import write_report
from cordaseg.demo.results import DemoResult, MethodResult
from cordaseg.depth.pipeline import self_supervised_target_depth as train_and_export
from cordaseg.engine.config import TrainConfig, train_config_from_dict
from cordaseg.engine.logging import read_metrics
from cordaseg.engine.trainer import train
from cordaseg.errors import CheckpointError
from cordaseg.evaluation.evaluate import EvalResult, evaluate_segmentation
from cordaseg.models.checkpoint import load_state, model_payload
from cordaseg.models.checkpoint_file import read_file
from cordaseg.models.corda import ModelConfig, build_model
from cordaseg.runtime.files import atomic_save
from cordaseg.world.export import export_exact_depth, generate_world_from_config

# Seconds per training iteration of each run at the demo's default sizes on 2 idle CPU cores (AMD
# EPYC, torch 2.13 CPU), setup included, from the fixed-count runs of benchmarks/RESULTS.md;
# "depth" is an iteration of the self-supervised depth network (1,124 in 100 s). The demo's
# defaults and its time estimate come from these.
REFERENCE_SPEED = {"source_only": 0.033, "oracle": 0.033, "dacs": 0.086, "corda": 0.127, "depth": 0.089}
# Rendering the default world (660 frames, first run only: 1,000 frames take 1-2 minutes, README)
# and the evaluations of the four runs (their setup is in the speeds above), in seconds.
REFERENCE_WORLD_SECONDS = 45.0
REFERENCE_OVERHEAD_SECONDS = 15.0
# Source-supervised runs this many times slower than their probes make the demo warn that the
# machine got busier.
BUSY_FACTOR = 1.3


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
                 progress: bool = True, target_depth_root: Path | None = None,
                 extra: dict[str, Any] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of one demo run (validated like any config file). ``extra`` is a
    nested mapping of training-config values merged over the demo's, e.g. ``{"model":
    {"attention": False}}`` for the no-attention ablation."""
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
    return train_config_from_dict(merge(data, extra or {}))


def val_dataset(cfg: DemoConfig, target_root: Path, depth_root: Path | None = None):
    """The target val split, scored at the world's frame size; with ``depth_root`` (a tree of the
    same frames with val depth, e.g. the world's exact depth) its items carry depth."""
    root = target_root if depth_root is None else depth_root
    data = DatasetConfig(format="cityscapes", root=str(root), split="val",
                         depth="none" if depth_root is None else "stereo", eval_size=tuple(cfg.world.size))
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


def demo_target_depth(cfg: DemoConfig, target_root: Path, out_dir: Path, seconds: float | None,
                                 progress: bool = True, iterations: int = 0) -> Path:
    """Train the self-supervised stereo depth network on the target train pairs for ``iterations``
    (if > 0, else for at most ``seconds``), export its depth as stereo ``.mat`` files, and return a
    Cityscapes tree ``out_dir/self_supervised_depth/target`` that has the target's images with that
    depth (images linked, not copied).

    The network is sized for a CPU budget of minutes (encoder width 16, decoder width 8, Adam at
    1e-3: the settings of ``benchmarks/self_supervised_depth.py``, AbsRel ~0.29 after 50 s on the
    world). Inputs are half the world's frame size, rounded down to multiples of 32: at 256x128 the
    full size stayed at its initial depth for two minutes, while half size reached AbsRel 0.14
    against the tree's stereo-matcher depth in 100 s (300 pairs, 2 CPU cores).
    """
    width, height = cfg.world.size
    size = [max(64, width // 2 // 32 * 32), max(64, height // 2 // 32 * 32)]
    if iterations <= 0 and seconds is None:
        raise ConfigError("self-supervised target depth needs a number of iterations or of seconds")
    work_dir = out_dir / "self_supervised_depth"
    if work_dir.exists():  # a fresh run: an old depth_run would be resumed or mixed in
        shutil.rmtree(work_dir)
    # A fixed count trains the same on every machine; a time limit (with an iteration count too
    # large to reach, so the learning rate never decays) trains what the machine manages.
    length = {"iterations": iterations, "time_limit_s": None} if iterations > 0 else \
        {"iterations": 100_000, "time_limit_s": max(float(seconds), 1.0)}
    tree, _ = train_and_export(target_root, work_dir, fmt="stereo-mat", split="train", progress=progress, config={
        "mode": "stereo",
        "model": {"encoder_width": 16, "decoder_width": 8, "min_depth": 0.5},
        "data": {"size": size},
        "optim": {"batch_size": 4, "iterations": length["iterations"], "lr": 1e-3},
        "run": {"seed": cfg.seed, "device": "cpu", "workers": 0, "log_interval": 25,
                "time_limit_s": length["time_limit_s"]},
    })
    return tree


def ensure_self_supervised_depth(cfg: DemoConfig, target_root: Path, runs: Path, progress: bool = True) -> Path:
    """:func:`demo_target_depth` into ``runs``, unless a finished export with the same
    settings is already there (``runs/self_supervised_depth/done.json``); returns the tree."""
    work_dir = runs / "self_supervised_depth"
    marker = work_dir / "done.json"
    settings = {"world": to_dict(cfg.world), "seed": cfg.seed, "iterations": cfg.depth_iterations,
                "seconds": depth_seconds(cfg)}
    try:
        if json.loads(marker.read_text()) == settings:
            return work_dir / "target"
    except (OSError, json.JSONDecodeError):
        pass
    tree = demo_target_depth(cfg, target_root, runs, depth_seconds(cfg), progress=progress,
                                        iterations=cfg.depth_iterations)
    marker.write_text(json.dumps(settings, indent=2))
    return tree


def depth_seconds(cfg: DemoConfig) -> float | None:
    """The time limit of the self-supervised depth training (None: ``depth_iterations`` are run)."""
    if cfg.depth_seconds is not None:
        return cfg.depth_seconds
    return None if cfg.depth_iterations else cfg.depth_share * cfg.minutes * 60.0


# ---------------------------------------------------------------------------------- warm start


def corda_init_from_deeplab(deeplab_checkpoint: Path, model_cfg: ModelConfig, out_path: Path,
                            seed: int = 0) -> Path:
    """Write a CorDA checkpoint whose backbone and initial semantic ASPP head are the DeepLabV2
    weights of ``deeplab_checkpoint``; every other head is freshly initialised (seeded).

    With the DAFormer decoder (``model.decoder: daformer``) the source model's encoder and fusion
    decoder are taken as they are and its classifier becomes CorDA's initial semantic classifier on
    the fused features (``initial_semantic: aspp``), again the same module on the same features.

    For the simple-auxiliary-depth model (``arch: multitask``, ASPP semantic and depth heads on the
    backbone) the DeepLabV2 ASPP becomes its semantic head, the same module on the same features.
    """
    payload = read_file(deeplab_checkpoint)
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{deeplab_checkpoint}: not a cordaseg checkpoint with a 'model' entry")
    source = payload["model"]
    if model_cfg.arch == "multitask":
        semantic_target = "semantic_head."
    elif model_cfg.arch == "corda" and model_cfg.initial_semantic == "aspp":
        semantic_target = "semantic_initial_head."
    else:
        raise ConfigError("the warm start maps DeepLabV2 onto CorDA's ASPP initial head or the multitask "
                          "semantic head: model.arch must be 'corda' (initial_semantic 'aspp') or 'multitask'")
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    state = model.state_dict()
    taken = 0
    for key, value in source.items():
        if key.startswith(("backbone.", "decoder.")):  # the encoder; DAFormer's fusion decoder: same modules
            new_key = key
        elif key.startswith("semantic_head."):
            new_key = semantic_target + key[len("semantic_head."):]
        else:
            raise CheckpointError(f"{deeplab_checkpoint}: unexpected key {key} for a DeepLabV2 model")
        if new_key not in state or state[new_key].shape != value.shape:
            raise CheckpointError(f"{deeplab_checkpoint}: {key} does not fit {new_key} of the {model_cfg.arch} model "
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


def plan_iterations(seconds: float, speed: dict[str, float], share: float, minimum: int = 1,
                    adaptation_floor: int = 1) -> dict[str, int]:
    """Iteration counts that fill ``seconds`` of training: source-only and oracle get
    ``1 - share`` of it with equal counts (at least ``minimum``), DACS and CorDA ``share`` with
    equal counts (at least ``adaptation_floor`` and ``minimum``)."""
    seconds = max(seconds, 0.0)
    source = (1.0 - share) * seconds / (speed["source_only"] + speed["oracle"])
    adapt = share * seconds / (speed["dacs"] + speed["corda"])
    source_n, adapt_n = max(minimum, int(source)), max(minimum, adaptation_floor, int(adapt))
    return {"source_only": source_n, "oracle": source_n, "dacs": adapt_n, "corda": adapt_n}


def adaptation_iterations_left(seconds: float, speed: dict[str, float], minimum: int = 1) -> int:
    """Equal DACS and CorDA iteration counts that fill the ``seconds`` that are left (at least ``minimum``)."""
    return max(minimum, int(max(seconds, 0.0) / (speed["dacs"] + speed["corda"])))


def fixed_plan(cfg: DemoConfig) -> dict[str, int]:
    """The iteration counts ``cfg`` fixes (a method whose count is planned is left out)."""
    plan = {}
    if cfg.source_iterations:
        plan["source_only"] = plan["oracle"] = cfg.source_iterations
    if cfg.adaptation_iterations:
        plan["dacs"] = plan["corda"] = cfg.adaptation_iterations
    return plan


def make_plan(cfg: DemoConfig, seconds: float, speed: dict[str, float] | None) -> dict[str, int]:
    """Iteration counts of the four runs: the fixed ones of ``cfg``, the others planned to fill
    ``seconds`` at the probed ``speed`` (s/iteration per method; not needed when all are fixed)."""
    plan = fixed_plan(cfg)
    if len(plan) == len(METHODS):
        return plan
    if speed is None:
        raise ConfigError("planning iteration counts from the time budget needs the probed speeds")
    planned = plan_iterations(seconds, speed, cfg.adaptation_share, cfg.min_iterations, cfg.adaptation_floor)
    return {**planned, **plan}


def expected_seconds(cfg: DemoConfig, plan: dict[str, int], speed: dict[str, float] | None = None,
                     world: bool = True) -> float:
    """Wall-clock seconds the demo should take with ``plan`` at ``speed`` (default
    :data:`REFERENCE_SPEED`, 2 idle cores): the four runs, the depth network, the world's
    rendering (``world``) and a fixed allowance for evaluation and setup."""
    speed = {**REFERENCE_SPEED, **(speed or {})}
    seconds = sum(plan[m] * speed[m] for m in plan) + REFERENCE_OVERHEAD_SECONDS
    if cfg.target_depth == "self_supervised":
        limit = depth_seconds(cfg)
        seconds += limit if limit is not None else cfg.depth_iterations * speed["depth"]
    return seconds + (REFERENCE_WORLD_SECONDS if world else 0.0)


def cpu_threads() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (cpu.max)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


# ---------------------------------------------------------------------------------- one run

SCORES_FILE = "scores.json"


def _evaluate(model, dataset, keep_samples: int = 0) -> EvalResult:
    return evaluate_segmentation(model, dataset, device="cpu", batch_size=4, progress=False,
                                 keep_samples=keep_samples)


def run_fingerprint(train_cfg: TrainConfig, cfg: DemoConfig, upstream: str = "",
                    target_depth: dict[str, Any] | None = None) -> str:
    """A hash of what determines a run's scores: its training config (the progress display aside),
    the world, the val split it is scored on, the fingerprint of the run it continues from
    (``upstream``) and how its target depth was made. A finished run with the same fingerprint is
    read back instead of trained again when resuming. The code is not part of it: after changing
    the code, run into a fresh folder."""
    train = to_dict(train_cfg)
    train["logging"] = {k: v for k, v in train["logging"].items() if k != "progress"}
    key = {"train": train, "world": to_dict(cfg.world), "val": {"eval_images": cfg.eval_images, "depth": cfg.val_depth},
           "upstream": upstream, "target_depth": target_depth}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_run(run_dir: Path, name: str, fingerprint: str) -> MethodResult | None:
    """The result saved in ``run_dir/scores.json`` if it has ``fingerprint`` and its checkpoint is
    still there; else None."""
    try:
        saved = json.loads((run_dir / SCORES_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    checkpoint = Path(saved.get("checkpoint") or "")
    if saved.get("fingerprint") != fingerprint or not checkpoint.is_file():
        return None
    return MethodResult(name, int(saved["iterations"]), float(saved["seconds_per_iteration"]),
                        float(saved["train_seconds"]), EvalResult.from_dict(saved["evaluation"]), checkpoint,
                        fingerprint, resumed=True)


def _save_scores(run_dir: Path, result: MethodResult) -> Path:
    path = run_dir / SCORES_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({
        "fingerprint": result.fingerprint, "method": result.method, "iterations": result.iterations,
        "seconds_per_iteration": result.seconds_per_iteration, "train_seconds": result.train_seconds,
        "checkpoint": str(result.checkpoint), "evaluation": result.evaluation.to_dict(),
    }, indent=2))
    return tmp.replace(path)


def train_and_score(cfg: DemoConfig, name: str, method: str, world: tuple[Path, Path], runs: Path,
                    iterations: int, val, *, warm_start: MethodResult | None = None,
                    extra: dict[str, Any] | None = None, target_depth: str | None = None,
                    target_depth_root: Path | None = None, prepare: Callable[[], Any] | None = None,
                    resume: bool = False, progress: bool = True, keep_samples: int = 0) -> MethodResult:
    """Train the run ``name`` (``method``: source_only, oracle, dacs or corda, with the training
    config values ``extra`` over the demo's) into ``runs/name``, score it on ``val`` and save the
    scores as ``runs/name/scores.json``.

    ``warm_start`` is the source-only run it continues from: a DeepLabV2 run loads its checkpoint
    as it is; a CorDA or multitask model its backbone and ASPP (:func:`corda_init_from_deeplab`,
    written to ``runs/<name>_init.pt``). ``target_depth`` names where CorDA's target depth comes
    from ("stereo", "self_supervised", "exact"; read from ``target_depth_root`` when given).
    ``prepare`` runs just before training, not when the run is resumed (e.g. training the depth
    network whose export ``target_depth_root`` is). With ``resume``, a finished run of the same
    :func:`run_fingerprint` is read back instead of trained.
    """
    source_root, target_root = world
    run_dir = runs / name

    def config(init: Path | None) -> TrainConfig:
        return train_config(cfg, method, source_root, target_root, run_dir, iterations, init=init,
                            progress=progress, target_depth_root=target_depth_root, extra=extra)

    converted = warm_start is not None and config(None).model.arch != "deeplab"
    init = None if warm_start is None else runs / f"{name}_init.pt" if converted else warm_start.checkpoint
    train_cfg = config(init)
    depth_key = None
    if train_cfg.adaptation.uses_depth:
        depth_key = {"kind": target_depth or "stereo"}
        if target_depth == "self_supervised":
            depth_key.update(iterations=cfg.depth_iterations, seconds=depth_seconds(cfg))
    fingerprint = run_fingerprint(train_cfg, cfg, warm_start.fingerprint if warm_start else "", depth_key)
    if resume and (done := finished_run(run_dir, name, fingerprint)) is not None:
        return done
    if prepare is not None:
        prepare()
    if converted:
        corda_init_from_deeplab(warm_start.checkpoint, train_cfg.model, init, seed=cfg.seed)
    start = time.perf_counter()
    trained = _run(train_cfg)
    seconds = time.perf_counter() - start
    result = MethodResult(name, iterations, seconds / iterations, seconds,
                          _evaluate(trained.student, val, keep_samples), trained.last_checkpoint, fingerprint)
    _save_scores(run_dir, result)
    return result


def train_variant(cfg: DemoConfig, name: str, world: tuple[Path, Path], runs: Path, iterations: int, val,
                  source: MethodResult, *, extra: dict[str, Any] | None = None, target_depth: str | None = None,
                  target_depth_root: Path | None = None, prepare: Callable[[], Any] | None = None,
                  resume: bool = False, progress: bool = True) -> MethodResult:
    """Train and score one more CorDA variant, warm-started from the same source-only run as the
    demo's CorDA: an ablation (``extra``, e.g. ``{"model": {"attention": False}}``,
    ``{"adaptation": {"depth_weighting": False}}``, ``{"model": {"arch": "multitask"}}``) or
    another target depth (``target_depth`` and its tree ``target_depth_root``)."""
    return train_and_score(cfg, name, "corda", world, runs, iterations, val, warm_start=source, extra=extra,
                           target_depth=target_depth, target_depth_root=target_depth_root, prepare=prepare,
                           resume=resume, progress=progress)


# ---------------------------------------------------------------------------------- the demo


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


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def run_demo(cfg: DemoConfig, out_dir: str | Path, quiet: bool = False, resume: bool = False) -> DemoResult:
    """Run the whole demo into ``out_dir`` and return the scores (see the module docstring). With
    ``resume``, runs finished by an earlier call with the same settings are read back from their
    ``scores.json`` (:func:`train_and_score`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    threads = cfg.threads or cpu_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_demo(cfg, out_dir, _Progress(quiet), threads, resume)
    finally:
        torch.set_num_threads(previous)


def _run_demo(cfg: DemoConfig, out_dir: Path, say: _Progress, threads: int, resume: bool) -> DemoResult:
    world_dir, runs = out_dir / "world", out_dir / "runs"
    if cfg.fixed:
        plan = make_plan(cfg, 0.0, None)
        say(f"fixed iteration counts ({', '.join(f'{METHOD_TITLES[m]} {plan[m]}' for m in METHODS)}); "
            f"expected ~{_minutes(expected_seconds(cfg, plan, world=not (world_dir / 'world.json').is_file()))} "
            f"on 2 idle CPU cores; {threads} torch threads")
    world, val = _world_stage(cfg, world_dir, say)
    speed, eval_seconds = _speed_stage(cfg, world, val, runs, threads, say)
    depth = _TargetDepth(cfg, world[1], runs, speed, say)
    results = _training_stages(cfg, world, val, runs, speed, eval_seconds, depth, resume, say)
    say("stage 5/5: report")
    total = say.elapsed()
    paths = write_report(out_dir, cfg, results, total)
    say(f"done in {total / 60:.1f} min: {paths[0]}, {paths[1]}")
    return DemoResult(out_dir, results, total, *paths, threads=threads)


def _world_stage(cfg: DemoConfig, world_dir: Path, say: _Progress) -> tuple[tuple[Path, Path], Any]:
    """Stage 1: the world (rendered once, then cached) and its target val split."""
    say(f"stage 1/5: world ({cfg.world.num_source} source, {cfg.world.num_target_train} target train, "
        f"{cfg.world.num_target_val} target val frames at {cfg.world.size[0]}x{cfg.world.size[1]}; cached)")
    world = generate_world_from_config(world_dir, cfg.world, progress=not say.quiet, workers=cfg.world_workers)
    depth_val = None
    if cfg.val_depth == "exact":
        depth_val = export_exact_depth(world_dir, cfg.world, splits=("val",), progress=not say.quiet,
                                       workers=cfg.world_workers)
    return world, val_dataset(cfg, world[1], depth_val)


def _speed_stage(cfg: DemoConfig, world: tuple[Path, Path], val, runs: Path, threads: int, say: _Progress
                 ) -> tuple[dict[str, float], float]:
    """Stage 2: seconds per iteration of every method, probed (time-budget mode) or the reference
    machine's (fixed counts), and the expected seconds of the evaluations; the ETA scales them by
    how fast the finished runs really went."""
    speed: dict[str, float] = dict(REFERENCE_SPEED)
    if cfg.fixed:
        say("stage 2/5: fixed iteration counts, no timing needed")
        return speed, 0.0
    say(f"stage 2/5: timing {cfg.probe_iterations} iterations of each method ({threads} torch threads)")
    probed, eval_seconds = _probe(cfg, *world, val, runs / "probe")
    speed.update(probed)
    say("  s/iteration: " + ", ".join(f"{METHOD_TITLES[m]} {speed[m]:.3f}" for m in METHODS)
        + f"; evaluation of all four ~{eval_seconds:.0f} s")
    return speed, eval_seconds


class _TargetDepth:
    """CorDA's target depth in the demo: with ``target_depth: self_supervised`` the depth network is
    trained (and exported) just before CorDA, in stage 4; otherwise the tree's own stereo depth."""

    def __init__(self, cfg: DemoConfig, target_root: Path, runs: Path, speed: dict[str, float], say: _Progress):
        self.cfg, self.target_root, self.runs, self.say = cfg, target_root, runs, say
        self.self_supervised = cfg.target_depth == "self_supervised"
        self.limit = depth_seconds(cfg)
        expected = self.limit if self.limit is not None else cfg.depth_iterations * speed["depth"]
        self.seconds = expected if self.self_supervised else 0.0
        self.root = runs / "self_supervised_depth" / "target" if self.self_supervised else None

    def train(self) -> None:
        length = f"{self.cfg.depth_iterations} iterations" if self.limit is None else f"{self.limit / 60:.1f} min"
        self.say(f"stage 4/5: self-supervised stereo depth on the target train pairs ({length}), exported for CorDA")
        tree = ensure_self_supervised_depth(self.cfg, self.target_root, self.runs, progress=not self.say.quiet)
        assert tree == self.root, (tree, self.root)


def _training_stages(cfg: DemoConfig, world: tuple[Path, Path], val, runs: Path, speed: dict[str, float],
                     eval_seconds: float, depth: _TargetDepth, resume: bool, say: _Progress) -> dict[str, MethodResult]:
    """Stages 3 and 4: source-only and the oracle, then DACS and CorDA from the source-only weights
    (re-planned from the time left in time-budget mode), each scored on the target val split."""
    budget = cfg.minutes * 60.0
    margin = 10.0 + 0.05 * budget  # setup of each run (datasets, model, checkpoint) and the report
    plan = make_plan(cfg, budget - say.elapsed() - eval_seconds - margin - depth.seconds, speed)
    say("  plan: " + ", ".join(f"{METHOD_TITLES[m]} {plan[m]} it" for m in METHODS))
    results: dict[str, MethodResult] = {}
    slowdown = 1.0  # measured / expected time of the runs trained so far
    for index, method in enumerate(METHODS):
        if method == "dacs" and not cfg.adaptation_iterations:
            _replan(cfg, plan, speed, results, budget - say.elapsed() - eval_seconds * 0.5 - margin - depth.seconds,
                    say)
        stage = 3 if method in ("source_only", "oracle") else 4
        say(f"stage {stage}/5: training {METHOD_TITLES[method]} for {plan[method]} iterations "
            f"(~{_minutes(plan[method] * speed[method] * slowdown)})")
        corda = method == "corda"
        result = train_and_score(
            cfg, method, method, world, runs, plan[method], val,
            warm_start=results["source_only"] if method in ("dacs", "corda") else None,
            target_depth=cfg.target_depth if corda else None, target_depth_root=depth.root if corda else None,
            prepare=depth.train if corda and depth.self_supervised else None,
            resume=resume, progress=not say.quiet, keep_samples=cfg.grid_images)
        results[method] = result
        trained = [r for r in results.values() if not r.resumed]
        if trained:
            slowdown = sum(r.train_seconds for r in trained) / sum(r.iterations * speed[r.method] for r in trained)
        to_come = METHODS[index + 1:]
        left = sum(plan[m] * speed[m] for m in to_come) * slowdown + (depth.seconds if "corda" in to_come else 0.0)
        left += REFERENCE_OVERHEAD_SECONDS * len(to_come) / len(METHODS)
        how = "read back from its scores.json" if result.resumed else f"{result.train_seconds:.0f} s of training"
        say(f"  {METHOD_TITLES[method]}: target val mIoU {result.miou:.1f} ({how}); ETA ~{_minutes(left)} more")
    return results


def _replan(cfg: DemoConfig, plan: dict[str, int], speed: dict[str, float], results: dict[str, MethodResult],
            left: float, say: _Progress) -> None:
    """Plan DACS and CorDA again from the ``left`` seconds, at the probed speed scaled by how much
    slower (or faster) the machine ran the two finished runs; warn when it is busier than when it
    probed, or when the floor does not fit the budget."""
    done = ("source_only", "oracle")
    # A ratio of sums: a single probe disturbed by other load weighs only by its share.
    measured = sum(results[m].train_seconds for m in done) / sum(plan[m] * speed[m] for m in done)
    slowdown = min(3.0, max(0.33, measured))
    expected = {m: v * slowdown for m, v in speed.items()}
    fit = adaptation_iterations_left(left, expected, 0)
    floor = max(cfg.min_iterations, cfg.adaptation_floor)
    plan["dacs"] = plan["corda"] = max(fit, floor)
    say(f"  re-planned from the time left ({left:.0f} s, runs took {measured:.2f}x the probed time): "
        f"DACS and CorDA {plan['dacs']} it each")
    if measured > BUSY_FACTOR:
        warnings.warn(f"the machine ran source-only and the oracle {measured:.1f}x slower than when it was probed "
                      "(other work on its CPUs?): DACS and CorDA get fewer iterations than planned; fixed iteration "
                      "counts (the default, without --minutes) give results that do not depend on the load",
                      RuntimeWarning, stacklevel=3)
    if fit < floor:
        warnings.warn(f"only {fit} DACS and CorDA iterations fit the time left; running the floor of {floor} "
                      f"(adaptation_floor), so the demo takes longer than {cfg.minutes:g} min",
                      RuntimeWarning, stacklevel=3)
