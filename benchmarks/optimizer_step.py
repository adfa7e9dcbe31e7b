"""Benchmark: the cost of the reference's parameter multiplicity in the SGD step alone.

Builds the CorDA network (ResNet-101 by default), fills every trainable tensor with a fixed
gradient and times ``optimizer.step()`` of :class:`cordaseg.engine.optim.MultiplicitySGD` with
``param_multiplicity`` ``reference`` (backbone tensors updated 1, 3 or 4 times) and ``once``
(plain SGD), in alternating rounds so both see the same machine load. Prints one JSON line per
setting (median ms per step over the rounds) and the ratio reference / once.

    .venv/bin/python benchmarks/optimizer_step.py                      # ResNet-101, CPU
    .venv/bin/python benchmarks/optimizer_step.py --device cuda --kernel fused

The rest of a training iteration (forward, backward, EMA) is unchanged by the setting; see
``benchmarks/train_step.py --multiplicity reference once`` for whole iterations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from presets import add_model_args, benchmark_device

from cordaseg.engine.optim import MultiplicitySGD
from cordaseg.models.corda import ModelConfig, build_model, param_groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--kernel", choices=("foreach", "fused", "for_loop"), default="foreach")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting and round (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads: 0 = PyTorch's default")
    args = parser.parse_args(argv)
    args.device = args.device or "auto"
    device = benchmark_device(args)
    model = build_model(ModelConfig(backbone_depth=args.backbone or 101, backbone_width=args.backbone_width or 64,
                                    head_width=args.head_width or 256)).to(device)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 1e-3)
    kernel = {"foreach": {"foreach": True}, "fused": {"fused": True}, "for_loop": {"foreach": False}}[args.kernel]
    optimizers = {
        mode: MultiplicitySGD(param_groups(model, 1e-6, 10.0, mode), lr=1e-6, momentum=0.9, weight_decay=5e-4,
                              **kernel)
        for mode in ("reference", "once")
    }
    times: dict[str, list[float]] = {mode: [] for mode in optimizers}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for optimizer in optimizers.values():  # first step creates the momentum buffers
        optimizer.step()
    for _ in range(args.rounds):
        for mode, optimizer in optimizers.items():
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.step()
            sync()
            times[mode].append((time.perf_counter() - start) / args.steps * 1e3)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    for mode, values in times.items():
        print(json.dumps({
            "benchmark": "optimizer_step", "param_multiplicity": mode, "kernel": args.kernel,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "backbone": args.backbone or 101,
            "tensors": sum(len(g["params"]) for g in optimizers[mode].param_groups),
            "tensor_updates_per_step": sum(len(g["params"]) * g["multiplicity"]
                                           for g in optimizers[mode].param_groups),
            "ms_per_step_median": round(medians[mode], 2), "ms_per_step_rounds": [round(t, 2) for t in values],
        }), flush=True)
    print(f"reference / once: {medians['reference'] / medians['once']:.2f}")


if __name__ == "__main__":
    main()
