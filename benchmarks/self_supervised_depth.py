"""Benchmark: self-supervised stereo depth on the synthetic world, against its rendered ground truth.

1. Renders a small world (``--frames`` target stereo pairs with camera files, Cityscapes layout;
   with ``--mode mono`` or ``mono+stereo``, sequences of a camera driving 1 m per frame instead).
2. Trains the Monodepth2-style depth network from those views only (no depth labels) for at
   most ``--seconds`` (``cordaseg depth train`` with the config built here).
3. Renders ``--eval-frames`` fresh target frames with their exact metric depth and prints AbsRel,
   RMSE and delta < 1.25 (pixels nearer than 80 m, sky excluded) of
   - the self-supervised network (metric: its scale comes from the stereo baseline; and median-scaled),
   - the world's simulated stereo matcher (the ``.mat`` depth the Cityscapes tree ships; sparse),
   - a constant prediction (the median ground-truth depth), the floor any method must beat.
4. With ``--corda-seeds N``: exports the network's depth as ``stereo-mat`` files into a copy of
   the target tree and trains CorDA (``configs/tiny_cpu.yaml`` geometry, ``--corda-iterations``)
   with the exported depth and with the world's stereo depth, N seeds each, and prints the mIoU.

    .venv/bin/python benchmarks/self_supervised_depth.py --frames 32 --size 128x64 --seconds 50

Expected on 2 shared CPU cores: about 1 minute (``--size 128x64 --seconds 50``: ~220 iterations,
AbsRel ~0.29 against ~0.64 for a constant); the CorDA comparison adds ~30 s for 3 seeds x 20
iterations, which is a smoke test of the pipeline, not a measurement of CorDA. A CUDA device
(``--device cuda --frames 500 --seconds 600``) gives a properly trained network.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cordaseg.config import from_dict, load
from cordaseg.depth.evaluate import DepthErrors, depth_errors, evaluate_on_frames
from cordaseg.depth.export import export_depth, link_tree
from cordaseg.depth.trainer import DepthTrainConfig, load_depth_checkpoint, train_depth
from cordaseg.depth.world_video import write_world_video
from cordaseg.world import generate_world, render_frame, stereo_depth, target_domain

EVAL_STREAM = 7  # seed stream of the evaluation frames, distinct from the world's own streams


def _size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def eval_frames(count: int, size: tuple[int, int], seed: int) -> list:
    return [render_frame(target_domain(1.0), size, np.random.default_rng([seed, EVAL_STREAM, i]), stereo=True)
            for i in range(count)]


def baselines(frames, max_depth: float = 80.0) -> dict[str, dict[str, float]]:
    matcher, constant = DepthErrors(), DepthErrors()
    median = float(np.median(np.concatenate([f.depth[np.isfinite(f.depth) & (f.depth < max_depth)] for f in frames])))
    for i, frame in enumerate(frames):
        measured = stereo_depth(frame.depth, frame.right_depth, frame.camera, np.random.default_rng([i, 1]))
        truth = np.where(measured > 0, frame.depth, np.inf)  # only where the matcher gives depth
        matcher.add(depth_errors(measured, truth, max_depth=max_depth))
        constant.add(depth_errors(np.full(frame.depth.shape, median), frame.depth, max_depth=max_depth))
    all_pixels = sum(int((np.isfinite(f.depth) & (f.depth < max_depth)).sum()) for f in frames)
    out = {"stereo matcher (.mat)": matcher.summary(), "constant median": constant.summary()}
    out["stereo matcher (.mat)"]["coverage"] = matcher.pixels / max(all_pixels, 1)
    return out


def run_corda(source: Path, target: Path, seed: int, iterations: int, out_dir: Path, device: str) -> float:
    from cordaseg.engine.config import TrainConfig
    from cordaseg.engine.trainer import train

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    cfg = load(TrainConfig, config, [
        f"source.root={source}", f"target.root={target}", f"val.root={target}", f"run.out_dir={out_dir}",
        f"run.seed={seed}", f"optim.iterations={iterations}", f"eval.every={iterations}",
        f"checkpoint.every={iterations}", "eval.max_images=0", "val.depth=none", "target.resize_scale=1.0", f"run.device={device}"])
    result = train(cfg)
    return float(result.best_miou)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_ss_depth", help="working folder (world, runs)")
    parser.add_argument("--mode", choices=("stereo", "mono", "mono+stereo"), default="stereo",
                        help="supervision; mono modes train on world sequences (--frames per --sequence-length)")
    parser.add_argument("--frames", type=int, default=32, help="target stereo pairs (or sequence frames) to train on")
    parser.add_argument("--sequence-length", type=int, default=8, help="frames per world sequence (mono modes)")
    parser.add_argument("--size", type=_size, default=(128, 64), help="render and training size WxH")
    parser.add_argument("--seconds", type=float, default=50.0, help="training time limit")
    parser.add_argument("--iterations", type=int, default=100000, help="training iteration limit")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=16, help="encoder width (64 = standard ResNet-18)")
    parser.add_argument("--eval-frames", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 avoids thread oversubscription on a shared machine)")
    parser.add_argument("--checkpoint", default=None,
                        help="reuse this depth checkpoint (trained on the same world) instead of training")
    parser.add_argument("--corda-seeds", type=int, default=0, help="CorDA runs per depth source (0: skip)")
    parser.add_argument("--corda-iterations", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    width, height = args.size

    start = time.perf_counter()
    source, target = generate_world(out / "world", 8 if args.corda_seeds else 0, args.frames,
                                    4 if args.corda_seeds else 0, size=args.size, seed=args.seed, progress=False)
    print(f"world: {args.frames} stereo pairs of {width}x{height} in {time.perf_counter() - start:.1f} s")

    data = {"layout": "cityscapes", "root": str(target)}
    if args.mode != "stereo":
        start = time.perf_counter()
        sequences = max(1, args.frames // args.sequence_length)
        write_world_video(out / "video", sequences, args.sequence_length, size=args.size, seed=args.seed)
        data = {"layout": "video", "root": str(out / "video")}
        print(f"world video: {sequences} sequences of {args.sequence_length} frames (1 m apart) in "
              f"{time.perf_counter() - start:.1f} s")
    cfg = from_dict(DepthTrainConfig, {
        "mode": args.mode,
        "model": {"encoder_width": args.width, "decoder_width": 8, "min_depth": 0.5, "max_depth": 100.0},
        "data": {**data, "size": [width // 32 * 32, max(64, height // 32 * 32)]},
        "optim": {"lr": args.lr, "batch_size": args.batch_size, "iterations": args.iterations},
        "run": {"out_dir": str(out / "depth_run"), "device": args.device, "workers": 0, "log_interval": 25,
                "seed": args.seed, "time_limit_s": args.seconds},
    })
    start = time.perf_counter()
    checkpoint = Path(args.checkpoint) if args.checkpoint else train_depth(cfg, progress=False)
    train_s = time.perf_counter() - start
    net, cfg, _ = load_depth_checkpoint(checkpoint, args.device)
    iterations = torch.load(checkpoint, weights_only=True)["iteration"]
    if args.checkpoint:
        print(f"{args.mode} depth: {checkpoint} ({iterations} iterations)")
    else:
        print(f"{args.mode} training: {iterations} iterations of batch {args.batch_size} in {train_s:.1f} s "
              f"(device {args.device}, encoder width {cfg.model.encoder_width})")

    frames = eval_frames(args.eval_frames, args.size, args.seed)
    results = evaluate_on_frames(net, ((f.rgb, f.depth) for f in frames), tuple(cfg.data.size), args.device)
    rows = {f"self-supervised {args.mode} (metric)": results["metric"],
            f"self-supervised {args.mode} (median-scaled)": results["median_scaled"], **baselines(frames)}
    print(f"\ndepth on {args.eval_frames} fresh rendered frames, ground truth < 80 m")
    print(f"{'method':40s} {'AbsRel':>7s} {'RMSE m':>7s} {'d<1.25':>7s} {'pixels':>8s}")
    for name, row in rows.items():
        coverage = f"  ({100 * row['coverage']:.0f}% of pixels)" if "coverage" in row else ""
        print(f"{name:40s} {row['abs_rel']:7.3f} {row['rmse']:7.2f} {row['delta1']:7.3f} {row['pixels']:8d}{coverage}")

    if args.corda_seeds:
        exported = out / "world_ss_depth" / "target"
        link_tree(target, exported)
        export_depth(checkpoint, target, "stereo-mat", out_root=exported, device=args.device, progress=False)
        print(f"\nCorDA ({args.corda_iterations} iterations, tiny_cpu geometry), val mIoU over {args.corda_seeds} seeds")
        for name, tree in (("world stereo depth (.mat)", target), ("self-supervised depth (exported)", exported)):
            scores = [run_corda(source, tree, seed, args.corda_iterations,
                                out / "corda" / f"{tree.parent.name}_{seed}", args.device)
                      for seed in range(args.corda_seeds)]
            print(f"{name:40s} mIoU {np.mean(scores):.2f} +- {np.std(scores):.2f}  "
                  f"({', '.join(f'{s:.2f}' for s in scores)})")


if __name__ == "__main__":
    main()
