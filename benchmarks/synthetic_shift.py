"""Source-only, DACS, CorDA, the target oracle and the CorDA paper's ablations on the synthetic
street world over several seeds, compared with paired statistics.

Every method runs on the same seeds and, on each seed, on the same world (its layouts are seeded
with it) and, for the adaptation methods, from the same source-only weights. Two methods are
compared through their per-seed differences: the mean difference and its 95% Student-t interval
(``cordaseg.demo.stats``). Each method also gets its "gap closed", (method - source-only) /
(oracle - source-only) per seed, always against the reference-fidelity source-only and oracle of
that seed.

Presets:
- ``main``: source-only, DACS, CorDA and the target oracle (``cordaseg demo``'s comparison).
- ``ablation``: also the paper's ablation table (Table 4 of the CorDA paper) on the world: CorDA
  without the attention distillation (``model.attention=false``), without the depth-based
  weighting (``adaptation.depth_weighting=false``), simple auxiliary depth (``model.arch=multitask``,
  which has no depth weighting); CorDA with each other target depth: the target tree's
  stereo-matcher ``.mat`` files (the default here), the demo's self-supervised stereo network
  (``depth_iterations``), and the world's exact depth (the upper bound of depth quality,
  ``export_exact_depth``); and the recipe fidelity ``paper`` against ``reference``
  (docs/reference-behaviour.md): a source-only and a CorDA run of the other fidelity, CorDA
  warm-started from that source-only. Every CorDA variant starts from the seed's source-only weights.
- ``modern``: the main comparison plus the post-2021 recipes on a small SegFormer encoder trained
  from scratch (:data:`MODERN_MODEL`: MiT-B0 layout at half its published widths, DAFormer decoder of
  width 64): a source-only MiT run, DAFormer (DACS with AdamW and warm-up, rare-class sampling and
  DAFormer's augmentation), MIC on DAFormer, and CorDA + MIC on DAFormer (CorDA's depth modules on
  the fused features, stereo-matcher target depth); the three adaptation runs warm-start from the
  MiT source-only run. Settings and what is left out (the ImageNet feature distance: nothing is
  pretrained here; the pseudo-label row crop: the world has no ego-vehicle bonnet or image border
  to hide) are in :func:`modern_runs`.

The runs have fixed iteration counts (not a time budget), so every seed trains the same amount
whatever the load of the machine, and the val split is scored with the world's exact depth
(``val_depth=exact``) so that every method also gets its mIoU per range of distance. A finished
run's scores (``scores.json`` in its folder) are reused when the command is run again with the
same settings (``--fresh``: train everything again). Outputs: ``OUT/seed<N>/`` (the demo folder
of each seed; the variants under its ``runs/``), ``OUT/summary.json``, ``OUT/summary.md`` (the tables in
Markdown), ``OUT/summary.png`` (gap closed with 95% intervals) and ``OUT/per_class_corda_minus_dacs.png``. Examples (the figures in
benchmarks/RESULTS.md say which command gave them):

    .venv/bin/python benchmarks/synthetic_shift.py --out runs/synthetic_shift --seeds 0 1 2 \\
        --source-iterations 600 --adaptation-iterations 300
    .venv/bin/python benchmarks/synthetic_shift.py --preset ablation --out runs/ablation \\
        --seeds 0 1 2 3 4 --source-iterations 2000 --adaptation-iterations 1000

Expected time on 2 idle CPU cores, printed at the start (from the demo's measured seconds per
iteration, ``cordaseg.demo.pipeline.REFERENCE_SPEED``; the CorDA variants taken as fast as CorDA):
per seed about 3 minutes for ``main`` and 9 for ``ablation`` at 600 / 300 iterations, 7 and 23 at
2000 / 1000.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cordaseg.config import to_dict
from cordaseg.data.labels import CLASS_NAMES
from cordaseg.demo.config import METHOD_TITLES, METHODS, DemoConfig, load_demo_config
from cordaseg.demo.pipeline import (
    REFERENCE_SPEED,
    REFERENCE_WORLD_SECONDS,
    cpu_threads,
    ensure_self_supervised_depth,
    expected_seconds,
    run_demo,
    train_and_score,
    train_variant,
    val_dataset,
)
from cordaseg.demo.report import METHOD_RGB, IntervalRow, interval_chart
from cordaseg.demo.results import MethodResult
from cordaseg.demo.stats import Interval, differences, gap_closed, paired_difference, t_interval
from cordaseg.world.export import export_exact_depth, generate_world_from_config

PRESETS = ("main", "ablation", "modern")
DEPTH_TITLES = {"stereo": "stereo-matcher depth", "self_supervised": "self-supervised depth",
                "exact": "exact depth"}


@dataclass(frozen=True)
class Variant:
    """One more run of the ablation preset, warm-started from the seed's source-only weights."""

    name: str
    """Run folder name under ``seed<N>/runs``."""
    title: str
    """Row title in the tables and charts."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Training-config values over the demo's CorDA config."""
    target_depth: str | None = None
    """Where CorDA's target depth comes from, if not from where the main CorDA run's does."""


def variants(cfg: DemoConfig) -> list[Variant]:
    """The CorDA variants of the ablation preset (the fidelity pair is trained separately)."""
    out = [
        Variant("corda_no_attention", "CorDA w/o attention", {"model": {"attention": False}}),
        Variant("corda_no_depth_weighting", "CorDA w/o depth weighting", {"adaptation": {"depth_weighting": False}}),
        Variant("multitask", "simple auxiliary depth", {"model": {"arch": "multitask"}}),
    ]
    out += [Variant(f"corda_depth_{kind}", f"CorDA, {DEPTH_TITLES[kind]}", target_depth=kind)
            for kind in DEPTH_TITLES if kind != cfg.target_depth]
    return out


def other_fidelity(cfg: DemoConfig) -> str:
    return "paper" if cfg.fidelity == "reference" else "reference"


MODERN_MODEL: dict[str, Any] = {
    "backbone": "mit_b0", "backbone_width": 32, "decoder": "daformer", "decoder_width": 64,
    "head_bias_init": "zero",
}
"""The encoder-decoder of the modern preset: MiT-B0's layout (2 blocks per stage) at half its
published widths (16, 32, 80, 128 channels), the DAFormer fusion decoder at width 64 (256
published), mmseg's zero classifier bias. About 1.1 M parameters, the size of the demo's
ResNet-18 at width 16 (0.8 M; both counts checked in tests/test_benchmark_stats.py); 2.3-2.9x its
seconds per iteration on the CPU (benchmarks/RESULTS.md)."""

MODERN_LR = 6e-4
"""AdamW learning rate of the modern preset, encoder and heads alike (``head_lr_mult`` 1). DAFormer's
6e-5 with 10x on the heads is for an ImageNet-pretrained encoder; trained from scratch the encoder
needs the heads' rate. 6e-4 is of the order used to train small vision transformers from scratch
with AdamW (DeiT: 5e-4 at batch 512); its linear batch scaling is not applied, as at batch 2 it would
leave 600 iterations nearly untrained. Chosen before the runs, not tuned on the world's frames."""


def modern_runs(cfg: DemoConfig) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(run name, row title, method, training-config values) of the modern preset, in training order.

    Scaled from the published 512 x 512 crops to the demo's crop by its height (128 / 512 = 1/4):
    the rare-class sampling's minimum class pixels (3000 -> 188) and MIC's patch (32 -> 8). Kept
    as published: AdamW (weight decay 0.01, betas 0.9 / 0.999, no decay on norms), the linear
    warm-up over the same share of the schedule (1,500 of 40,000 iterations), poly decay of power
    1, rare-class temperature 0.01 and minimum crop ratio 0.5, DAFormer's colour jitter and blur,
    MIC's mask ratio 0.7 and weight 1 with augmentation before masking. Off: the ImageNet feature
    distance (the encoder is not ImageNet-pretrained, so there are no ImageNet features to keep)
    and the pseudo-label row crop (it hides Cityscapes' bonnet and rectification border; world frames
    have neither); the class-balanced source crop (``source.cat_max_ratio``) is also off, as in the
    runs recorded in benchmarks/RESULTS.md, which predate it. The adaptation runs use the demo's adaptation learning-rate factor, as DACS and
    CorDA do.
    """
    scale = cfg.crop[1] / 512

    def optim(iterations: int, adapting: bool) -> dict[str, Any]:
        return {"name": "adamw", "lr": MODERN_LR * (cfg.adaptation_lr_factor if adapting else 1.0),
                "head_lr_mult": 1.0, "weight_decay": 0.01, "betas": [0.9, 0.999], "no_decay_norms": True,
                "poly_power": 1.0, "warmup_iterations": max(1, round(iterations * 1500 / 40000)),
                "warmup_ratio": 1e-6, "param_multiplicity": "once"}

    source = {"rare_class_sampling": {"enabled": True, "temperature": 0.01,
                                      "min_pixels": max(1, round(3000 * scale * scale)), "min_crop_ratio": 0.5}}
    daformer_adaptation = {"augmentation": {"jitter_p": 0.8, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2,
                                            "hue": 0.2, "blur_p": 0.5}}
    mic = {"mic": {"enabled": True, "patch": max(1, round(32 * scale)), "ratio": 0.7, "weight": 1.0, "augment": True}}
    adapt = {"optim": optim(cfg.adaptation_iterations, True), "source": source}
    return [
        ("mit_source_only", "source-only (MiT)", "source_only",
         {"model": MODERN_MODEL, "optim": optim(cfg.source_iterations, False)}),
        ("daformer", "DAFormer (MiT)", "dacs",
         {"model": MODERN_MODEL, **adapt, "adaptation": daformer_adaptation}),
        ("mic_daformer", "MIC on DAFormer (MiT)", "dacs",
         {"model": MODERN_MODEL, **adapt, "adaptation": {**daformer_adaptation, **mic}}),
        ("corda_mic_daformer", "CorDA + MIC on DAFormer (MiT)", "corda",
         {"model": {**MODERN_MODEL, "arch": "corda", "initial_semantic": "aspp"}, **adapt,
          "adaptation": {**daformer_adaptation, **mic}}),
    ]


def seed_config(args: argparse.Namespace, seed: int) -> DemoConfig:
    # The figures in RESULTS.md use the tree's stereo-matcher depth for CorDA; pass
    # target_depth=self_supervised to make the depth network's export the main CorDA's depth.
    return load_demo_config(args.config, [
        "target_depth=stereo", "val_depth=exact", *args.overrides, f"seed={seed}", f"world.seed={seed}",
        f"source_iterations={args.source_iterations}", f"adaptation_iterations={args.adaptation_iterations}",
    ])


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, MethodResult]:
    """Every run of the preset on one seed (finished runs read back), all with the demo's torch
    threads (``threads``; the demo sets them only for its own runs)."""
    cfg = seed_config(args, seed)
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or cpu_threads())
    try:
        return _run_seed(args, cfg, seed)
    finally:
        torch.set_num_threads(previous)


def _run_seed(args: argparse.Namespace, cfg: DemoConfig, seed: int) -> dict[str, MethodResult]:
    out = Path(args.out) / f"seed{seed}"
    resume, progress = not args.fresh, not args.quiet
    world_dir, runs = out / "world", out / "runs"
    world = generate_world_from_config(world_dir, cfg.world, progress=progress, workers=cfg.world_workers)
    exact_tree = None
    if args.preset == "ablation" or cfg.val_depth == "exact":
        # Train and val at once: the demo's val export is then already there.
        splits = ("train", "val") if args.preset == "ablation" else ("val",)
        exact_tree = export_exact_depth(world_dir, cfg.world, splits=splits, progress=progress,
                                        workers=cfg.world_workers)
    results = dict(run_demo(cfg, out, quiet=args.quiet, resume=resume).methods)
    if args.preset == "main":
        return results

    val = val_dataset(cfg, world[1], exact_tree if cfg.val_depth == "exact" else None)
    if args.preset == "modern":
        source = None
        for name, title, method, extra in modern_runs(cfg):
            if not args.quiet:
                print(f"[seed {seed}] {title}", flush=True)
            iterations = cfg.source_iterations if method == "source_only" else cfg.adaptation_iterations
            results[name] = train_and_score(cfg, name, method, world, runs, iterations, val, warm_start=source,
                                            extra=extra, resume=resume, progress=progress,
                                            target_depth="stereo" if method == "corda" else None)
            source = source or results[name]
        return results
    ssd_root = runs / "self_supervised_depth" / "target"

    def depth_source(kind: str | None) -> dict[str, Any]:
        kind = kind or cfg.target_depth
        if kind == "exact":
            return {"target_depth": "exact", "target_depth_root": exact_tree}
        if kind == "self_supervised":
            return {"target_depth": kind, "target_depth_root": ssd_root,
                    "prepare": lambda: ensure_self_supervised_depth(cfg, world[1], runs, progress=progress)}
        return {"target_depth": "stereo"}

    source = results["source_only"]
    for variant in variants(cfg):
        if not args.quiet:
            print(f"[seed {seed}] {variant.title}", flush=True)
        results[variant.name] = train_variant(cfg, variant.name, world, runs, cfg.adaptation_iterations, val,
                                              source, extra=variant.extra, resume=resume, progress=progress,
                                              **depth_source(variant.target_depth))
    fidelity = other_fidelity(cfg)
    other = dataclasses.replace(cfg, fidelity=fidelity)
    if not args.quiet:
        print(f"[seed {seed}] source-only and CorDA with recipe fidelity {fidelity}", flush=True)
    results[f"source_only_{fidelity}"] = train_and_score(
        other, f"source_only_{fidelity}", "source_only", world, runs, cfg.source_iterations, val, resume=resume,
        progress=progress)
    results[f"corda_{fidelity}"] = train_variant(
        other, f"corda_{fidelity}", world, runs, cfg.adaptation_iterations, val, results[f"source_only_{fidelity}"],
        resume=resume, progress=progress, **depth_source(None))
    return results


def titles(cfg: DemoConfig, preset: str) -> dict[str, str]:
    """Run name -> row title, in the order of the tables."""
    out = {m: METHOD_TITLES[m] for m in ("source_only", "dacs", "corda", "oracle")}
    if cfg.target_depth != "stereo":
        out["corda"] = f"CorDA, {DEPTH_TITLES[cfg.target_depth]}"
    if preset == "modern":
        out.update({name: title for name, title, _, _ in modern_runs(cfg)})
    if preset == "ablation":
        out.update({v.name: v.title for v in variants(cfg)})
        fidelity = other_fidelity(cfg)
        out[f"source_only_{fidelity}"] = f"source-only ({fidelity} fidelity)"
        out[f"corda_{fidelity}"] = f"CorDA ({fidelity} fidelity)"
    return out


def pairs(cfg: DemoConfig, preset: str) -> list[tuple[str, str]]:
    """The comparisons that matter, as (a, b) for a - b."""
    out = [("corda", "dacs"), ("dacs", "source_only"), ("corda", "source_only")]
    if preset == "modern":
        out += [("mit_source_only", "source_only"), ("daformer", "dacs"), ("daformer", "mit_source_only"),
                ("mic_daformer", "daformer"), ("corda_mic_daformer", "mic_daformer"), ("corda_mic_daformer", "corda")]
    if preset == "ablation":
        out += [(v.name, "corda") for v in variants(cfg)]
        fidelity = other_fidelity(cfg)
        out += [(f"corda_{fidelity}", "corda"), (f"source_only_{fidelity}", "source_only")]
    return out


def summarise(per_seed: dict[int, dict[str, MethodResult]], names: dict[str, str],
              compared: list[tuple[str, str]]) -> dict[str, Any]:
    """The numbers of summary.json: per method and per pair, over the seeds."""
    seeds = list(per_seed)
    miou = {m: [round(per_seed[s][m].miou, 4) for s in seeds] for m in names}  # as scores.json keeps them
    closed = {m: gap_closed(miou[m], miou["source_only"], miou["oracle"]) for m in names}
    methods = {}
    for m, title in names.items():
        bins = [b.name for b in per_seed[seeds[0]][m].evaluation.depth_bins]
        methods[m] = {
            "title": title, "per_seed": miou[m], "miou": t_interval(miou[m]).to_dict(),
            "gap_closed": {"per_seed": [_number(c) for c in closed[m]], **t_interval(closed[m]).to_dict()},
            "depth_bins": {b: t_interval([_bin_miou(per_seed[s][m], b) for s in seeds]).to_dict() for b in bins},
            "seconds_per_iteration": round(sum(per_seed[s][m].seconds_per_iteration for s in seeds) / len(seeds), 4),
        }
    comparisons = []
    for a, b in compared:
        comparisons.append({
            "name": f"{names[a]} - {names[b]}", "a": a, "b": b,
            "per_seed": [_number(d) for d in differences(miou[a], miou[b])],
            "difference": paired_difference(miou[a], miou[b]).to_dict(),
            "gap_closed_difference": paired_difference(closed[a], closed[b]).to_dict(),
            "depth_bins": {name: paired_difference([_bin_miou(per_seed[s][a], name) for s in seeds],
                                                   [_bin_miou(per_seed[s][b], name) for s in seeds]).to_dict()
                           for name in methods[a]["depth_bins"]},
        })
    per_class = {}
    for index, name in enumerate(CLASS_NAMES):
        iou = {m: [float(per_seed[s][m].evaluation.iou[index]) for s in seeds] for m in ("corda", "dacs")}
        per_class[name] = paired_difference(iou["corda"], iou["dacs"]).to_dict()
    return {"methods": methods, "pairs": comparisons, "per_class_corda_minus_dacs": per_class}


def _number(x: float) -> float | None:
    """JSON-safe: NaN (e.g. no gap on a seed) becomes null."""
    return None if math.isnan(x) else round(x, 4)


def _bin_miou(result: MethodResult, name: str) -> float:
    return next((b.miou[19] for b in result.evaluation.depth_bins if b.name == name), float("nan"))


def _interval(d: dict[str, Any]) -> Interval:
    nan = float("nan")
    return Interval(nan if d["mean"] is None else d["mean"], nan if d["half_width"] is None else d["half_width"],
                    d["n"])


def print_tables(summary: dict[str, Any], seeds: list[int]) -> None:
    width = max(len(m["title"]) for m in summary["methods"].values()) + 2
    print(f"\n{'method':<{width}}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds)
          + f"  {'mIoU, 95% interval':>20}  {'gap closed':>16}")
    for m in summary["methods"].values():
        cells = "".join(f"{v:9.2f}" for v in m["per_seed"])
        print(f"{m['title']:<{width}}{cells}  {_interval(m['miou']).format():>20}  "
              f"{_interval(m['gap_closed']).format(3):>16}")
    width = max(len(p["name"]) for p in summary["pairs"]) + 2
    print(f"\n{'paired difference (mIoU)':<{width}}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds)
          + f"  {'mean, 95% interval':>20}  {'gap closed':>16}  excludes 0")
    for p in summary["pairs"]:
        cells = "".join(f"{math.nan if v is None else v:+9.2f}" for v in p["per_seed"])
        diff = _interval(p["difference"])
        print(f"{p['name']:<{width}}{cells}  {diff.format():>20}  "
              f"{_interval(p['gap_closed_difference']).format(3):>16}  {'yes' if diff.excludes_zero else 'no'}")
    bins = list(next(iter(summary["methods"].values()))["depth_bins"])
    if bins:
        width = max(len(m["title"]) for m in summary["methods"].values()) + 2
        print(f"\n{'mIoU by depth (exact)':<{width}}" + "".join(f"{b:>18}" for b in bins))
        for m in summary["methods"].values():
            print(f"{m['title']:<{width}}" + "".join(f"{_interval(m['depth_bins'][b]).format():>18}" for b in bins))


def markdown_tables(summary: dict[str, Any], seeds: list[int]) -> str:
    """The tables of :func:`print_tables` in Markdown (what benchmarks/RESULTS.md shows)."""
    head = "".join(f" seed {s} |" for s in seeds)
    rule = "".join(" ---: |" for _ in seeds)
    lines = [f"| method |{head} mIoU, 95% interval | gap closed |", f"| --- |{rule} ---: | ---: |"]
    for m in summary["methods"].values():
        cells = "".join(f" {v:.2f} |" for v in m["per_seed"])
        lines.append(f"| {m['title']} |{cells} {_interval(m['miou']).format()} | "
                     f"{_interval(m['gap_closed']).format(3)} |")
    lines += ["", f"| paired difference (mIoU) |{head} mean, 95% interval | gap closed | excludes 0 |",
              f"| --- |{rule} ---: | ---: | --- |"]
    for p in summary["pairs"]:
        cells = "".join(f" {math.nan if v is None else v:+.2f} |" for v in p["per_seed"])
        diff = _interval(p["difference"])
        lines.append(f"| {p['name']} |{cells} {diff.format()} | {_interval(p['gap_closed_difference']).format(3)} | "
                     f"{'yes' if diff.excludes_zero else 'no'} |")
    bins = list(next(iter(summary["methods"].values()))["depth_bins"])
    if bins:
        lines += ["", "| mIoU by exact depth |" + "".join(f" {b} |" for b in bins),
                  "| --- |" + " ---: |" * len(bins)]
        for m in summary["methods"].values():
            lines.append(f"| {m['title']} |" + "".join(f" {_interval(m['depth_bins'][b]).format()} |" for b in bins))
    return "\n".join(lines) + "\n"


def draw(summary: dict[str, Any], out: Path, seeds: int) -> list[Path]:
    palette = {**METHOD_RGB, "corda_paper": (240, 170, 110), "corda_reference": (240, 170, 110)}
    rows = [IntervalRow(m["title"], *_bounds(m["gap_closed"]), palette.get(name, (200, 140, 90)))
            for name, m in summary["methods"].items() if name not in ("source_only", "oracle")]
    paths = [interval_chart(rows, f"gap closed: mean and 95% t-interval over {seeds} seeds", out / "summary.png",
                            axis="(method - source-only) / (oracle - source-only)", marks=(0.0, 1.0))]
    rows = [IntervalRow(name, *_bounds(d), (220, 110, 40) if (d["mean"] or 0) >= 0 else (70, 130, 200))
            for name, d in summary["per_class_corda_minus_dacs"].items()]
    paths.append(interval_chart(rows, f"per-class IoU, CorDA - DACS: mean and 95% t-interval over {seeds} seeds",
                                out / "per_class_corda_minus_dacs.png", axis="IoU difference (points)"))
    return paths


def _bounds(d: dict[str, Any]) -> tuple[float, float, float]:
    i = _interval(d)
    return i.mean, i.low, i.high


def estimate_minutes(args: argparse.Namespace) -> float:
    """Minutes the command should take on 2 idle CPU cores (no run finished yet)."""
    cfg = seed_config(args, args.seeds[0])
    plan = {m: cfg.source_iterations if m in ("source_only", "oracle") else cfg.adaptation_iterations
            for m in METHODS}
    seconds = expected_seconds(cfg, plan, world=True) + 0.2 * REFERENCE_WORLD_SECONDS
    if args.preset == "modern":
        # The MiT runs took 2.3-2.9x the ResNet-18's seconds per iteration (benchmarks/RESULTS.md).
        seconds += 3 * (cfg.source_iterations * REFERENCE_SPEED["source_only"]
                        + 2 * cfg.adaptation_iterations * REFERENCE_SPEED["dacs"]
                        + cfg.adaptation_iterations * REFERENCE_SPEED["corda"])
    if args.preset == "ablation":
        corda = cfg.adaptation_iterations * REFERENCE_SPEED["corda"]
        seconds += (len(variants(cfg)) + 1) * corda + cfg.source_iterations * REFERENCE_SPEED["source_only"]
        seconds += 0.5 * REFERENCE_WORLD_SECONDS  # the train frames' exact depth
        if cfg.target_depth != "self_supervised":
            seconds += cfg.depth_seconds or cfg.depth_iterations * REFERENCE_SPEED["depth"]
    return seconds * len(args.seeds) / 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/synthetic_shift", help="output folder (one demo folder per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--preset", choices=PRESETS, default="main",
                        help="main: source-only, DACS, CorDA, oracle; ablation: also the paper's ablations; "
                             "modern: also DAFormer, MIC and CorDA + MIC on a small MiT")
    parser.add_argument("--source-iterations", type=int, default=600, help="source-only and oracle iterations")
    parser.add_argument("--adaptation-iterations", type=int, default=300, help="DACS and CorDA iterations")
    parser.add_argument("--config", default=None, help="YAML file of demo settings (default: the demo's)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="demo settings, as for cordaseg demo")
    parser.add_argument("--fresh", action="store_true", help="train every run again (default: reuse finished runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress output from the runs")
    args = parser.parse_args(argv)
    if args.source_iterations < 1 or args.adaptation_iterations < 1:
        parser.error("--source-iterations and --adaptation-iterations must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must not repeat a seed")

    print(f"{args.preset} preset, seeds {' '.join(map(str, args.seeds))}: expected ~{estimate_minutes(args):.0f} min "
          "on 2 idle CPU cores if no run is finished yet", flush=True)
    start = time.perf_counter()
    per_seed: dict[int, dict[str, MethodResult]] = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(args, seed)
        print(f"seed {seed}: " + ", ".join(f"{name} {r.miou:.2f}" for name, r in per_seed[seed].items()), flush=True)

    cfg = seed_config(args, args.seeds[0])
    names = titles(cfg, args.preset)
    summary = summarise(per_seed, names, pairs(cfg, args.preset))
    minutes = (time.perf_counter() - start) / 60
    print(f"\n{args.preset} preset, {len(args.seeds)} seeds, {args.source_iterations} source / "
          f"{args.adaptation_iterations} adaptation iterations, {minutes:.1f} min "
          f"({sum(r.resumed for s in per_seed.values() for r in s.values())} runs read back)")
    print_tables(summary, args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demo_settings = to_dict(cfg)
    demo_settings["world"].pop("seed")  # each seed's own
    demo_settings.pop("seed")
    (out / "summary.json").write_text(json.dumps({
        "preset": args.preset, "seeds": args.seeds, "source_iterations": args.source_iterations,
        "adaptation_iterations": args.adaptation_iterations, "overrides": args.overrides, "minutes": round(minutes, 1),
        "confidence": 0.95, "demo": demo_settings, **summary,
    }, indent=2))
    for path in draw(summary, out, len(args.seeds)):
        print(f"wrote {path}")
    (out / "summary.md").write_text(markdown_tables(summary, args.seeds))
    print(f"wrote {out / 'summary.md'}")
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
