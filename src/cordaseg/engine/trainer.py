"""The training loop around the adaptation step (docs/method.md, "Training step").

:func:`train` runs one configured recipe (CorDA, DACS or source-only) for ``optim.iterations``
iterations: SGD with the poly schedule and the 1x / 10x parameter groups, the EMA teacher,
periodic evaluation with best-model keeping, atomic checkpoints (the last K kept) and exact
resume, ``metrics.jsonl`` + TensorBoard + a progress bar, and DDP when launched by ``torchrun``.

Where randomness comes from: the model initialisation from ``run.seed``; the sample order from
(seed, stream, epoch) (:class:`cordaseg.data.loader.EpochSampler`); each iteration's ClassMix and
augmentation from a generator seeded with (seed, iteration, rank). None of them depends on what
happened earlier in the process, so a run resumed from a checkpoint continues exactly as the
uninterrupted run would (bit-identically in ``run.deterministic`` mode).

Host-device syncs are deliberate: the loss is checked for non-finite values (and for values above
``optim.divergence_loss``), and the loss terms read, only at the logging interval and before every
evaluation and checkpoint; so a checkpoint is only written after iterations whose losses were all
finite and below that bound.

The run folder (:mod:`cordaseg.engine.run_folder`) decides where a run starts: it continues the
folder's current lineage of checkpoints, branches, or starts again, and refuses to mix runs. On
SIGINT or SIGTERM the loop stops after the current iteration, writes a checkpoint there and raises
:class:`TrainingInterrupted`, which names it.
"""

from __future__ import annotations

import copy
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Subset

from cordaseg.adaptation import adaptation_step
from cordaseg.adaptation.feature_distance import frozen_reference
from cordaseg.config import to_dict
from cordaseg.data.check import quick_check
from cordaseg.data.datasets import build_dataset
from cordaseg.data.loader import make_loader
from cordaseg.data.rare_class import rare_class_source
from cordaseg.engine import checkpoint as ckpt
from cordaseg.engine import run_folder
from cordaseg.engine.config import TrainConfig, validate
from cordaseg.engine.iteration import (
    apply_sgd_flags,
    build_optimizer,
    make_state,
    numerics,
    train_iteration,
)
from cordaseg.engine.logging import METRICS_FILE, RunLogger, image_panels, progress_bar
from cordaseg.engine.sync_batchnorm import convert_sync_batchnorm
from cordaseg.errors import CordasegError, DataError
from cordaseg.evaluation.evaluate import evaluate_segmentation
from cordaseg.models.checkpoint import (
    is_project_checkpoint,
    load_init_weights,
    load_state,
    model_payload,
    read_file,
)
from cordaseg.models.corda import build_model
from cordaseg.runtime import distributed
from cordaseg.runtime.device import resolve_device
from cordaseg.runtime.files import atomic_save
from cordaseg.runtime.outputs import check_folder

# Stream identifiers mixed into seeds, so that source order, target order and step draws differ.
_SOURCE_STREAM, _TARGET_STREAM, _STEP_STREAM, _STOCHASTIC_STREAM = 1, 2, 3, 4


class TrainingDiverged(CordasegError):
    """The loss became NaN, infinite or larger than ``optim.divergence_loss``; the run stopped
    without writing a checkpoint of the diverged weights."""


class TrainingInterrupted(CordasegError):
    """SIGINT or SIGTERM stopped the run; a checkpoint of the last completed iteration was written."""

    def __init__(self, checkpoint: Path | None, iteration: int, signum: int) -> None:
        self.checkpoint = checkpoint
        self.iteration = iteration
        self.signum = signum
        name = signal.Signals(signum).name
        where = f"saved {checkpoint}" if checkpoint is not None else "no checkpoint written"
        super().__init__(f"{name}: stopped after iteration {iteration}; {where}")


@dataclass
class TrainResult:
    """What :func:`train` leaves behind (the modules are those of this process)."""

    iteration: int
    """Iterations completed."""
    run_dir: Path
    """The run directory."""
    last_checkpoint: Path | None
    """The newest training checkpoint written by this process (rank 0), if any."""
    best_miou: float | None
    """Best validation mIoU seen (percent), if evaluation ran."""
    student: nn.Module
    """The trained student (unwrapped from DDP)."""
    teacher: nn.Module | None
    """The EMA teacher (None for source-only training)."""
    is_main: bool = True
    """True on the process that wrote the run directory (rank 0)."""


@dataclass
class StartPlan:
    """What :func:`preflight` found: where the run starts from."""

    resume_path: Path | None = None
    """Training checkpoint to resume from."""
    resume: dict[str, Any] | None = None
    """Its contents (already checked against the config)."""
    init_state: dict[str, Any] | None = None
    """Initial weights for a fresh run: a DeepLab init state dict or a cordaseg checkpoint."""
    start: run_folder.RunStart | None = None
    """Run id, lineage and what the run may do to its folder."""


def preflight(cfg: TrainConfig, resume: bool | str | Path | None, allow_config_change: bool = False) -> StartPlan:
    """Validate the config, the device and the output folder, check the data trees cheaply, and
    find the starting point, before any model is built."""
    validate(cfg)
    resolve_device(cfg.run.device, key="run.device")
    check_folder(cfg.run.out_dir, "run.out_dir")
    # A cheap version of `cordaseg data check`: partners exist, first and last frames decode.
    quick_check(cfg.source)
    if cfg.adaptation.uses_target:
        quick_check(cfg.target)
    if cfg.val is not None and cfg.eval.every:
        quick_check(cfg.val)
    start = run_folder.plan_start(cfg, resume, allow_config_change)
    if start.resume is not None:
        return StartPlan(resume_path=start.resume_path, resume=start.resume, start=start)
    if cfg.checkpoint.init is None:
        return StartPlan(start=start)
    state = read_file(cfg.checkpoint.init, trust_pickle=cfg.checkpoint.trust_pickle,
                      trust_hint="set checkpoint.trust_pickle=true")
    if is_project_checkpoint(state):
        ckpt.check_same_model(state, cfg.model, cfg.checkpoint.init)
    return StartPlan(init_state=state, start=start)


def effective_lr(cfg: TrainConfig, world_size: int) -> float:
    """Base learning rate after ``optim.lr_scaling`` for this world size."""
    if cfg.optim.lr_scaling == "linear":
        return cfg.optim.lr * world_size * cfg.optim.batch_size / cfg.optim.reference_batch
    return cfg.optim.lr


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (seed, stream, iteration, rank), stable across runs."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def seed_stochastic_layers(seed: int, iteration: int, rank: int) -> None:
    """Give this rank its own dropout and drop-path masks for ``iteration``.

    Dropout and drop path (the transformer backbones and the DAFormer decoder) draw from torch's
    global generator, which every rank seeds alike for the same initial weights; left alone, every
    rank would then draw the same masks and the regularisation would not be independent across
    the global batch. Rank 0 keeps its global stream (a single process trains exactly as before,
    and checkpoints keep that stream's state); every other rank reseeds it per iteration from
    (seed, iteration, rank), so a resumed run draws the same masks as an uninterrupted one."""
    if rank > 0:
        torch.manual_seed(derive_seed(seed, _STOCHASTIC_STREAM, iteration, rank))


class BatchStream:
    """Endless batches of one training set for this rank, resumable at a batch boundary.

    Wraps :func:`cordaseg.data.loader.make_loader`, whose sample order and per-item randomness
    depend only on (seed, epoch, index); the position is (epoch, batches taken in the epoch).
    """

    def __init__(self, dataset, batch_size: int, workers: int, seed: int, ctx: distributed.DistributedContext,
                 epoch: int = 0, batch: int = 0, what: str = "dataset", sampler_factory=None) -> None:
        self.loader = make_loader(dataset, batch_size, workers=workers, seed=seed, rank=ctx.rank,
                                  world_size=ctx.world_size, pin_memory=ctx.device.type == "cuda",
                                  sampler_factory=sampler_factory)
        self.batch_size = batch_size
        if self.loader.sampler.per_rank() < batch_size:
            raise DataError(f"{what}: {len(dataset)} frames are too few for batch size {batch_size} on "
                            f"{ctx.world_size} process(es)")
        self.epoch, self.batch = epoch, batch
        self._iterator = None

    def __next__(self) -> dict[str, Any]:
        while True:
            if self._iterator is None:
                self.loader.sampler.set_epoch(self.epoch, self.batch * self.batch_size)
                self._iterator = iter(self.loader)
            try:
                item = next(self._iterator)
            except StopIteration:
                self.epoch, self.batch, self._iterator = self.epoch + 1, 0, None
                continue
            self.batch += 1
            return item

    def state(self) -> dict[str, int]:
        """Position after the batches handed out so far."""
        return {"epoch": self.epoch, "batch": self.batch}


def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved


class _Run:
    """State of one training run in this process."""

    def __init__(self, cfg: TrainConfig, ctx: distributed.DistributedContext, plan: StartPlan) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.plan = plan
        self.run_dir = Path(cfg.run.out_dir)
        device = ctx.device

        torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
        student = build_model(cfg.model)
        if plan.init_state is not None:
            self._initialise(student, plan.init_state)
        elif plan.resume is None and getattr(cfg.model, "pretrained", None) is None:
            # (a transformer encoder with model.pretrained got its weights in build_model)
            warnings.warn("checkpoint.init is not set: training from randomly initialised weights "
                          "(the paper starts from a COCO-pretrained DeepLabV2)", stacklevel=2)
        if cfg.run.sync_batchnorm and ctx.enabled:
            # Before the teacher is copied: its batch statistics are global too, as the reference
            # converts both models.
            student = convert_sync_batchnorm(student)
        elif cfg.run.sync_batchnorm:
            warnings.warn("run.sync_batchnorm: a single process, so batch norm stays plain", stacklevel=2)
        student.to(device)
        if cfg.run.channels_last:
            student.to(memory_format=torch.channels_last)
        student.train()
        self.teacher = None
        if cfg.adaptation.uses_target:
            self.teacher = copy.deepcopy(student).requires_grad_(False)
            self.teacher.train()  # the reference's teacher normalises with batch statistics
            # ... but predicts without dropout and drop path, as DAFormer's and MIC's teachers do
            # (the transformer models have both; the ResNet model has neither).
            self.teacher.set_stochastic(False)
        self.student = student
        self.base_lr = effective_lr(cfg, ctx.world_size)
        self.optimizer = build_optimizer(student, cfg, self.base_lr, device)
        self.feature_reference = self._feature_reference(student) if cfg.adaptation.feature_distance_weight else None
        self.iteration = 0
        self.best_miou: float | None = None
        data_state: dict[str, dict[str, int]] = {"source": {}, "target": {}}
        if plan.resume is not None:
            data_state = self._restore(plan.resume)
        self.model = distributed.wrap_student(student, ctx)
        self.state = make_state(self.model, self.teacher, self.optimizer, cfg, self.base_lr,
                                feature_reference=self.feature_reference)

        self.source = build_dataset(cfg.source, train=True, seed=cfg.run.seed)
        source_sampler = None
        if cfg.source.rare_class_sampling.enabled:
            self.source, source_sampler = rare_class_source(
                self.source, self.run_dir, is_main=ctx.is_main, barrier=lambda: distributed.barrier(ctx),
                workers=max(1, cfg.run.num_workers), progress=ctx.is_main and cfg.logging.progress)
        self.target = build_dataset(cfg.target, train=True, seed=cfg.run.seed + 1) if self.teacher else None
        self.val = build_dataset(cfg.val, train=False, seed=cfg.run.seed) if cfg.val and cfg.eval.every else None
        bs, workers = cfg.optim.batch_size, cfg.run.num_workers
        self.source_stream = BatchStream(self.source, bs, workers, derive_seed(cfg.run.seed, _SOURCE_STREAM), ctx,
                                         **data_state["source"], what="source", sampler_factory=source_sampler)
        self.target_stream = None
        if self.target is not None:
            self.target_stream = BatchStream(self.target, bs, workers, derive_seed(cfg.run.seed, _TARGET_STREAM),
                                             ctx, **data_state["target"], what="target")
        self.start = plan.start or run_folder.RunStart(run_folder.new_id(), run_folder.new_id())
        if ctx.is_main:
            self._prepare_folder()
        # A resumed run first drops what the interrupted one logged after its last checkpoint; the
        # same run started again from scratch drops everything it logged.
        resume_from = self.iteration if plan.resume is not None else (0 if self.start.restart else None)
        self.logger = RunLogger(self.run_dir, enabled=ctx.is_main, tensorboard=cfg.logging.tensorboard,
                                resume_from=resume_from)
        self.last_checkpoint: Path | None = plan.resume_path
        self._saved_at = self.iteration if plan.resume is not None else None
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ setup helpers
    def _prepare_folder(self) -> None:
        """Rank 0, before anything is logged: clear what a killed run left half-written, keep the
        metrics of a lineage this run leaves, and record the run in run.json."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_folder.remove_temporaries(self.run_dir)
        previous = (self.start.record or {}).get("lineage")
        metrics = self.run_dir / METRICS_FILE
        if previous not in (None, self.start.lineage) and metrics.is_file():
            # Resuming another lineage truncates metrics.jsonl at its iteration; keep the old line's.
            shutil.copyfile(metrics, self.run_dir / f"metrics_{previous}.jsonl")
        run_folder.write_record(self.run_dir, self.start.new_record(self.iteration))

    def _announce(self) -> None:
        """Rank 0: where the run writes and where it starts from."""
        start = self.start
        if self.plan.resume_path is None:
            how = "starting again from scratch (no checkpoint was written before)" if start.restart else \
                "starting from scratch"
        elif start.branch_of is not None:
            how = (f"branching from {self.plan.resume_path} (iteration {self.iteration}); the newer checkpoints "
                   "of the line it leaves are kept")
        else:
            how = f"resuming from {self.plan.resume_path} (iteration {self.iteration})"
        if start.config_changes:
            how += f"; config changes recorded in run.json: {run_folder.describe_changes(start.config_changes)}"
        print(f"train: run {start.run_id} in {self.run_dir}, {how}", flush=True)
        board = f"; TensorBoard: tensorboard --logdir {self.run_dir / 'tensorboard'}" if self.cfg.logging.tensorboard else ""
        print(f"train: config.yaml, metrics.jsonl and checkpoints go to {self.run_dir}{board}", flush=True)

    def _feature_reference(self, student: nn.Module) -> nn.Module:
        """The frozen network as training started, for the feature distance: a copy of the freshly
        initialised student, or, when resuming, the same network built and initialised again."""
        if self.plan.resume is None:
            return frozen_reference(student)
        cfg = self.cfg
        torch.manual_seed(cfg.run.seed)  # the RNG state is restored from the checkpoint afterwards
        initial = build_model(cfg.model)
        if cfg.checkpoint.init is not None:
            self._initialise(initial, read_file(cfg.checkpoint.init, trust_pickle=cfg.checkpoint.trust_pickle,
                                                trust_hint="set checkpoint.trust_pickle=true"))
        if cfg.run.channels_last:
            initial.to(memory_format=torch.channels_last)
        return frozen_reference(initial.to(self.ctx.device))

    def _initialise(self, student: nn.Module, init_state: dict[str, Any]) -> None:
        if is_project_checkpoint(init_state):
            load_state(student, init_state["model"], self.cfg.checkpoint.init)
        else:
            load_init_weights(student, init_state)

    def _restore(self, payload: dict[str, Any]) -> dict[str, dict[str, int]]:
        path = self.plan.resume_path
        load_state(self.student, payload["model"], path)
        if self.teacher is not None:
            load_state(self.teacher, payload["teacher"], path)
        self.optimizer.load_state_dict(payload["optimizer"])
        apply_sgd_flags(self.optimizer, self.cfg, self.ctx.device)
        self.iteration = int(payload["iteration"])
        best = payload.get("best_miou")
        self.best_miou = None if best is None else float(best)
        ckpt.restore_rng_state(payload["rng"])
        data_state = payload["data_state"]
        if int(data_state.get("world_size", 1)) != self.ctx.world_size:
            warnings.warn(f"{path} was written by a run with world_size {data_state.get('world_size')}, "
                          f"this one has {self.ctx.world_size}: the data order will differ", stacklevel=2)
        return {name: {k: int(v) for k, v in data_state.get(name, {}).items()} for name in ("source", "target")}

    # ------------------------------------------------------------------ per-iteration work
    def _next_batch(self) -> dict[str, Any]:
        """The step's flat batch: source_image/label/depth and target_image/depth."""
        device, cl = self.ctx.device, self.cfg.run.channels_last
        source = _to_device(next(self.source_stream), device, cl)
        batch = {"source_image": source["image"], "source_label": source["label"],
                 "source_depth": source.get("depth")}
        if self.target_stream is not None:
            target = _to_device(next(self.target_stream), device, cl)
            batch.update(target_image=target["image"], target_depth=target.get("depth"))
        return batch

    def _check_finite(self, nonfinite: torch.Tensor, loss_peak: torch.Tensor, since: int) -> None:
        """Stop the run (on every rank) if any loss since iteration ``since`` was not finite or
        exceeded ``optim.divergence_loss``; ``loss_peak`` (the largest loss since) is reset."""
        # One host sync for both values.
        bad_value, peak = torch.stack([nonfinite.float(), loss_peak.float()]).tolist()
        loss_peak.zero_()
        bound = self.cfg.optim.divergence_loss
        if not distributed.broadcast_flag(bool(bad_value) or peak > bound, self.ctx):
            return
        what = "became NaN or infinite" if bad_value or peak != peak else f"reached {peak:.3g}, above " \
            f"optim.divergence_loss={bound:g}"
        where = self.last_checkpoint or "none was written"
        advice = "Lower optim.lr" if self.cfg.run.precision == "fp32" else "Lower optim.lr or use run.precision=fp32"
        again = f"resume with --resume {self.last_checkpoint}" if self.last_checkpoint else "train again"
        raise TrainingDiverged(
            f"the loss {what} between iterations {since} and {self.iteration}; stopped without saving. "
            f"Last good checkpoint: {where}. {advice}, then {again} (and --allow-config-change)"
        )

    # ------------------------------------------------------------------ stopping on a signal
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # asked twice: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.ctx.is_main:
            print(f"\ncordaseg: {signal.Signals(signum).name}: stopping after this iteration with a checkpoint "
                  "(send it again to stop at once, without one)", file=sys.stderr, flush=True)

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Stop cleanly on SIGINT / SIGTERM; returns the handlers to restore (none off the main thread,
        where Python cannot install any)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}

    def _stop_requested(self, at_log_step: bool) -> bool:
        stop = self._stop_signal is not None
        if self.ctx.enabled:  # every rank must take the same branch: agree at the logging interval only
            return at_log_step and distributed.broadcast_flag(stop, self.ctx)
        return stop

    def _save(self) -> None:
        if self.ctx.is_main:
            payload = model_payload(
                self.student, self.cfg.model,
                teacher=self.teacher.state_dict() if self.teacher is not None else {},
                optimizer=self.optimizer.state_dict(),
                iteration=self.iteration,
                config=to_dict(self.cfg),
                rng=ckpt.capture_rng_state(),
                data_state={"source": self.source_stream.state(),
                            "target": self.target_stream.state() if self.target_stream else {},
                            "world_size": self.ctx.world_size},
                best_miou=self.best_miou,
                run_id=self.start.run_id,
                lineage=self.start.lineage,
            )
            path = atomic_save(payload, self.run_dir / ckpt.checkpoint_name(self.iteration, self.start.tag))
            # Only this lineage's checkpoints: a branch never deletes the line it branched from.
            run_folder.prune_lineage(self.run_dir, self.start.lineage, self.cfg.checkpoint.keep_last)
            self.last_checkpoint = path
        self._saved_at = self.iteration
        distributed.barrier(self.ctx)

    def _evaluate(self) -> None:
        """Student mIoU on the validation set (docs/method.md, "Evaluation"), sharded over the ranks."""
        cfg = self.cfg
        dataset = self.val
        if cfg.eval.max_images:
            dataset = Subset(dataset, range(min(cfg.eval.max_images, len(dataset))))
        result = evaluate_segmentation(
            self.student, dataset, device=self.ctx.device, num_classes=cfg.model.num_classes,
            precision=cfg.run.precision, batch_size=cfg.eval.batch_size, distributed=self.ctx.enabled,
            progress=False,
        )
        miou = result.miou[cfg.model.num_classes] if cfg.model.num_classes in result.miou else \
            next(iter(result.miou.values()))
        improved = self.best_miou is None or miou > self.best_miou
        if improved:
            self.best_miou = miou
        self.logger.log(self.iteration, "val", {
            "mIoU": miou,
            "best_mIoU": self.best_miou,
            **{f"mIoU_{k}": v for k, v in result.miou.items()},
            "IoU": dict(zip(result.class_names, (float(v) for v in result.iou))),
        })
        if improved and cfg.eval.keep_best and self.ctx.is_main:
            # A branch keeps its own best model beside the one of the line it left.
            name = "best.pt" if self.start.tag is None else f"best.{self.start.tag}.pt"
            atomic_save(model_payload(self.student, cfg.model, iteration=self.iteration, config=to_dict(cfg),
                                      miou=miou, run_id=self.start.run_id, lineage=self.start.lineage),
                        self.run_dir / name)

    def fit(self, announce: bool = False) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        total = cfg.optim.iterations
        if ctx.is_main:
            config_file = self.run_dir / run_folder.CONFIG_FILE
            tmp = config_file.with_name(f".{config_file.name}.tmp")
            tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
            tmp.replace(config_file)
            if announce:
                self._announce()
        bar = progress_bar(total, self.iteration, ctx.is_main and cfg.logging.progress)
        nonfinite = torch.zeros((), dtype=torch.bool, device=ctx.device)
        loss_peak = torch.zeros((), dtype=torch.float32, device=ctx.device)
        checked_at, window_start, window_time = self.iteration, self.iteration, time.perf_counter()
        previous_handlers = self._install_signal_handlers()
        try:
            while self.iteration < total:
                i = self.iteration
                batch = self._next_batch()
                generator = torch.Generator(device=ctx.device)
                generator.manual_seed(derive_seed(cfg.run.seed, _STEP_STREAM, i, ctx.rank))
                seed_stochastic_layers(cfg.run.seed, i, ctx.rank)
                with_visuals = bool(cfg.logging.image_every) and (i + 1) % cfg.logging.image_every == 0
                # The step is looked up here, at call time, so that tests can substitute it.
                result = train_iteration(self.state, batch, i, generator, with_visuals=with_visuals and ctx.is_main,
                                         step=adaptation_step)
                out, lr = result.step, result.lr
                nonfinite |= ~torch.isfinite(out.loss.detach())
                torch.maximum(loss_peak, out.loss.detach().float(), out=loss_peak)
                self.iteration = done = i + 1
                bar.update(1)

                at_log_step = done % cfg.logging.every == 0 or done == total
                if at_log_step:
                    self._check_finite(nonfinite, loss_peak, checked_at)
                    checked_at = done
                    now = time.perf_counter()
                    # .item() here only: one host sync per logging interval.
                    values = {name: float(term) for name, term in out.terms.items()}
                    values.update(lr=lr,
                                  it_per_s=(done - window_start) / max(now - window_time, 1e-9))
                    window_start, window_time = done, now
                    self.logger.log(done, "train", values)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
                if with_visuals and ctx.is_main:
                    visuals = {"source_image": batch["source_image"], "source_label": batch["source_label"]}
                    if "target_image" in batch:
                        visuals["target_image"] = batch["target_image"]
                    visuals.update(out.visuals)
                    self.logger.log_images(done, image_panels(visuals))
                if self.val is not None and (done % cfg.eval.every == 0 or done == total):
                    self._check_finite(nonfinite, loss_peak, checked_at)
                    checked_at = done
                    self._evaluate()
                if done % cfg.checkpoint.every == 0 or done == total:
                    self._check_finite(nonfinite, loss_peak, checked_at)
                    checked_at = done
                    self._save()
                if done < total and self._stop_requested(at_log_step):
                    self._check_finite(nonfinite, loss_peak, checked_at)  # never save diverged weights
                    if self._saved_at != done:
                        self._save()
                    raise TrainingInterrupted(self.last_checkpoint, done, self._stop_signal or signal.SIGTERM)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            bar.close()
            self.logger.close()
        return TrainResult(self.iteration, self.run_dir, self.last_checkpoint, self.best_miou,
                           self.student, self.teacher, ctx.is_main)


def train(cfg: TrainConfig, resume: bool | str | Path | None = None, allow_config_change: bool = False,
          announce: bool = False) -> TrainResult:
    """Run (or resume) the configured training.

    ``resume``: None resumes from the newest checkpoint of the current lineage in ``run.out_dir``
    when ``run.auto_resume`` is set; True requires such a checkpoint; a path resumes from that
    file. A config that differs from the resumed run's is refused unless ``allow_config_change``
    (see :mod:`cordaseg.engine.run_folder`). Every configuration problem is raised before a model
    is built or data is read. ``announce`` prints where the run starts from and where its outputs
    go (what ``cordaseg train`` shows).
    """
    plan = preflight(cfg, resume, allow_config_change)
    ctx = distributed.init(cfg.run.device, key="run.device")
    try:
        with numerics(cfg, ctx.device):
            return _Run(cfg, ctx, plan).fit(announce)
    finally:
        distributed.shutdown()
