"""Benchmark: seconds per CorDA training iteration (docs/method.md, "Training step").

Times :func:`cordaseg.engine.iteration.train_iteration`, the per-iteration code of
``cordaseg train`` (poly lr, adaptation step under autocast, backward, SGD, EMA) plus the
trainer's per-iteration generator and non-finite flag, on synthetic tensors already on the
device (no data loading). For each configuration (every combination of the list options) it
builds the student and the teacher, runs ``--warmup`` iterations, then ``--iterations`` timed
ones, then (on CUDA) a few more under ``torch.cuda.set_sync_debug_mode("warn")`` to count
host-device syncs, then (on any device) a few more under
:func:`cordaseg.engine.host_reads.count_host_reads`, which counts the reads of tensor values by
the host (each one a sync on a GPU). It prints one JSON line per configuration, naming it (torch
and CUDA versions, device, threads, network size, precision, channels_last, merged pass, SGD
kernels, parameter multiplicity, ...): s/iteration, peak memory (CUDA ``max_memory_allocated``;
on CPU the process's peak RSS), ``syncs_per_iteration`` (CUDA's count; "n/a" on CPU) and
``host_reads_per_iteration`` (the CPU-side count, with ``host_reads`` naming each read).

The paper's recipe on a GPU (ResNet-101, batch 2, 512x512 crops), fp32 and bf16, reference
batch-norm statistics and the merged ("fast") student pass:

    .venv/bin/python benchmarks/train_step.py --device cuda --precision fp32 bf16 --merged 0 1

The unoptimised baseline of this code (no channels_last, per-tensor SGD, teacher in line):

    .venv/bin/python benchmarks/train_step.py --device cuda --channels-last 0 --optimizer for_loop \\
        --teacher-stream 0

The CI preset (ResNet-18 with narrow heads, 64x64 crops, CPU, a few seconds):

    .venv/bin/python benchmarks/train_step.py --tiny

Expected: see benchmarks/RESULTS.md ("Training step and inference speed"). The reference
implementation takes 0.156 s/iteration on an H200 (fp32, batch 2, 512x512, ResNet-101).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import resource
import time
import warnings

import torch
from presets import add_model_args, apply_preset, benchmark_device, flags

from cordaseg.adaptation import AdaptationConfig
from cordaseg.engine.config import OptimConfig, RunConfig, TrainConfig
from cordaseg.engine.host_reads import HostReads, count_host_reads
from cordaseg.engine.iteration import build_optimizer, make_state, numerics, train_iteration
from cordaseg.engine.trainer import derive_seed
from cordaseg.models.corda import ModelConfig, build_model

STEP_STREAM = 3  # the trainer's seed stream of the step draws

# Values of the options left unset: the paper's recipe on a GPU, and the --tiny CPU preset.
FULL = {"device": "auto", "backbone": 101, "backbone_width": 64, "head_width": 256, "crop": 512,
        "iterations": 30, "warmup": 10, "threads": 0}
TINY = {"device": "cpu", "backbone": 18, "backbone_width": 16, "head_width": 32, "crop": 64,
        "iterations": 2, "warmup": 1, "threads": 1}  # one thread: on a shared CI machine more mostly wait


def synthetic_batch(batch: int, crop: int, num_classes: int, device: torch.device, channels_last: bool,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """A step batch like the loaders give: normalised images, train-ID labels with ignored pixels,
    inverse-depth-like maps with invalid (1.0) pixels."""
    g = torch.Generator().manual_seed(seed)

    def image() -> torch.Tensor:
        x = torch.rand(batch, 3, crop, crop, generator=g) * 255.0 - 120.0  # (B, 3, H, W), roughly BGR - mean
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def depth() -> torch.Tensor:
        d = torch.rand(batch, crop, crop, generator=g) * 0.5 + 0.01
        return d.masked_fill(torch.rand(batch, crop, crop, generator=g) < 0.05, 1.0)

    # Labels in blocks of 8x8 pixels, so that ClassMix has regions of several classes.
    blocks = torch.randint(0, num_classes, (batch, crop // 8 + 1, crop // 8 + 1), generator=g)
    label = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :crop, :crop]
    label = label.masked_fill(torch.rand(batch, crop, crop, generator=g) < 0.05, 255)
    tensors = {"source_image": image(), "source_label": label, "source_depth": depth(),
               "target_image": image(), "target_depth": depth()}
    return {k: v.to(device) for k, v in tensors.items()}


def make_config(args: argparse.Namespace, precision: str, channels_last: bool, compile_model: bool, merged: bool,
                teacher_stream: bool, device: torch.device, multiplicity: str = "reference") -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(backbone_depth=args.backbone, backbone_width=args.backbone_width,
                          head_width=args.head_width),
        adaptation=AdaptationConfig(method="corda", merged_student_pass=merged),
        optim=OptimConfig(iterations=args.schedule, batch_size=args.batch, implementation=args.optimizer,
                          param_multiplicity=multiplicity),
        run=RunConfig(device=device.type, precision=precision, channels_last=channels_last,
                      teacher_stream=teacher_stream, compile=compile_model, deterministic=False),
    )


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(peak MiB, what was measured)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    # ru_maxrss is in KiB on Linux: the whole process's peak, models and Python included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_configuration(args: argparse.Namespace, device: torch.device, precision: str, channels_last: bool,
                      compile_model: bool, merged: bool, teacher_stream: bool, multiplicity: str = "reference") -> dict:
    cfg = make_config(args, precision, channels_last, compile_model, merged, teacher_stream, device, multiplicity)
    torch.manual_seed(0)
    student = build_model(cfg.model).to(device)
    if channels_last:
        student.to(memory_format=torch.channels_last)
    student.train()
    teacher = copy.deepcopy(student).requires_grad_(False).train()
    optimizer = build_optimizer(student, cfg, cfg.optim.lr, device)
    state = make_state(student, teacher, optimizer, cfg, cfg.optim.lr)
    batch = synthetic_batch(args.batch, args.crop, cfg.model.num_classes, device, channels_last)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def iterate(i: int) -> None:
        nonlocal nonfinite
        # What the trainer's loop does per iteration around train_iteration (minus the batch).
        generator = torch.Generator(device=device)
        generator.manual_seed(derive_seed(0, STEP_STREAM, i, 0))
        out = train_iteration(state, batch, i, generator)
        nonfinite |= ~torch.isfinite(out.step.loss.detach())

    with numerics(cfg, device):
        for i in range(args.warmup):
            iterate(i)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for i in range(args.warmup, args.warmup + args.iterations):
            iterate(i)
        synchronize(device)
        seconds = (time.perf_counter() - start) / args.iterations

        syncs: float | str = "n/a"
        if device.type == "cuda":
            counted = args.warmup + args.iterations
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for i in range(counted, counted + args.sync_iterations):
                        iterate(i)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            synced = [w for w in caught if "synchroniz" in str(w.message).lower()]
            syncs = len(synced) / args.sync_iterations
        memory, memory_kind = peak_memory(device)

        counted = args.warmup + args.iterations + (args.sync_iterations if device.type == "cuda" else 0)
        reads = HostReads()
        for i in range(counted, counted + args.sync_iterations):
            with count_host_reads() as one:
                iterate(i)
            reads.update(one)
    finite = not bool(nonfinite.item())  # one sync after all timing
    return {
        "benchmark": "train_step",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "backbone": args.backbone,
        "backbone_width": args.backbone_width,
        "head_width": args.head_width,
        "batch": args.batch,
        "crop": args.crop,
        "precision": precision,
        "channels_last": channels_last,
        "compile": compile_model,
        "merged": merged,
        "teacher_stream": teacher_stream,
        "optimizer": args.optimizer,
        "param_multiplicity": cfg.optim.param_multiplicity,
        "depth_weight": cfg.adaptation.depth_weight,
        "augment_decision": cfg.adaptation.augment_decision,
        "warmup": args.warmup,
        "iterations": args.iterations,
        "s_per_iteration": round(seconds, 5),
        "iterations_per_s": round(1.0 / seconds, 3),
        "peak_memory_mib": round(memory, 1),
        "peak_memory_kind": memory_kind,
        "syncs_per_iteration": syncs,
        "syncs_counted_by": "cuda_sync_debug_mode" if device.type == "cuda" else None,
        "host_reads_per_iteration": reads.total / args.sync_iterations,
        "host_reads": dict(reads),
        "finite": finite,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--batch", type=int, default=2, help="source images per iteration (as many target)")
    parser.add_argument("--crop", type=int, help="square crop side in pixels: 512 (tiny: 64)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--channels-last", nargs="+", type=flags, default=[True], help="0 and/or 1")
    parser.add_argument("--compile", nargs="+", type=flags, default=[False],
                        help="0 and/or 1: torch.compile the student and the teacher (run.compile)")
    parser.add_argument("--merged", nargs="+", type=flags, default=[False, True],
                        help="0 and/or 1: one student pass on source + mixed (the 'fast' mode)")
    parser.add_argument("--teacher-stream", nargs="+", type=flags, default=[True],
                        help="0 and/or 1: teacher forward on a second CUDA stream")
    parser.add_argument("--optimizer", default="auto", choices=("auto", "fused", "foreach", "for_loop"),
                        help="SGD kernels (optim.implementation)")
    parser.add_argument("--multiplicity", nargs="+", default=["reference"], choices=("reference", "once"),
                        help="optim.param_multiplicity: the reference's repeated backbone updates and/or plain SGD")
    parser.add_argument("--iterations", type=int, help="timed iterations per configuration: 30 (tiny: 2)")
    parser.add_argument("--warmup", type=int, help="untimed iterations first (cudnn.benchmark): 10 (tiny: 1)")
    parser.add_argument("--sync-iterations", type=int, default=3,
                        help="iterations with sync counting (CUDA), then as many with host-read counting")
    parser.add_argument("--schedule", type=int, default=250_000, help="optim.iterations of the poly schedule")
    parser.add_argument("--threads", type=int, help="CPU threads: 0 = PyTorch's default (tiny: 1)")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU preset for CI: ResNet-18, narrow heads, 64x64 crops, 2 timed iterations")
    args = parser.parse_args(argv)
    apply_preset(args, TINY, FULL)
    if min(args.iterations, args.batch, args.crop, args.sync_iterations) < 1 or args.warmup < 0:
        parser.error("--iterations, --batch, --crop and --sync-iterations must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = benchmark_device(args)
    for precision, channels_last, compile_model, merged, teacher_stream, multiplicity in itertools.product(
        args.precision, args.channels_last, args.compile, args.merged, args.teacher_stream, args.multiplicity
    ):
        result = run_configuration(args, device, precision, channels_last, compile_model, merged, teacher_stream,
                                   multiplicity)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
