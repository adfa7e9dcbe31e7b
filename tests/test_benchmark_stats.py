"""The statistics of the synthetic-shift benchmark against values worked out by hand, and its\nsummary and charts on fabricated scores (nothing is trained)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cordaseg.demo.config import DemoConfig
from cordaseg.demo.report import IntervalRow, interval_chart
from cordaseg.demo.results import MethodResult
from cordaseg.demo.stats import differences, gap_closed, paired_difference, t_interval
from cordaseg.evaluation.evaluate import EvalResult
from cordaseg.evaluation.metrics import DepthBinScores

REPO = Path(__file__).resolve().parents[1]

# Student's t quantiles from a printed table (two-sided 95%): df 4 -> 2.7764, df 2 -> 4.3027.
T_975_DF4 = 2.776445
T_975_DF2 = 4.302653


def test_paired_difference_by_hand():
    # CorDA - DACS over five seeds. mean = 2.25 / 5 = 0.45; deviations 0.23, -0.14, -0.12, 0.07,
    # -0.04; sum of squares 0.0934; s^2 = 0.0934 / 4 = 0.02335; s / sqrt(5) = 0.0683374.
    corda = [15.10, 13.82, 12.29, 14.02, 13.41]
    dacs = [14.42, 13.51, 11.96, 13.50, 13.00]
    interval = paired_difference(corda, dacs)
    assert interval.n == 5
    assert interval.mean == pytest.approx(0.45, abs=1e-12)
    half = T_975_DF4 * math.sqrt(0.0934 / 4) / math.sqrt(5)
    assert interval.half_width == pytest.approx(half, rel=1e-6)
    assert interval.half_width == pytest.approx(0.189735, abs=1e-6)
    assert (interval.low, interval.high) == pytest.approx((0.45 - half, 0.45 + half), rel=1e-6)
    assert interval.excludes_zero


def test_three_seeds_use_the_wider_quantile_and_can_include_zero():
    # mean 0.44; deviations 0.24, -0.13, -0.11; s^2 = 0.0866 / 2 = 0.0433.
    interval = t_interval([0.68, 0.31, 0.33])
    assert interval.mean == pytest.approx(0.44)
    assert interval.half_width == pytest.approx(T_975_DF2 * math.sqrt(0.0433) / math.sqrt(3), rel=1e-6)
    assert not interval.excludes_zero  # 0.44 +- 0.52


def test_missing_values_and_single_seeds():
    assert differences([1.0, None, 3.0], [0.5, 1.0, float("nan")])[0] == 0.5
    interval = t_interval([2.0, float("nan")])
    assert interval.n == 1 and interval.mean == 2.0 and math.isnan(interval.half_width)
    assert interval.format() == "2.00" and not interval.excludes_zero
    assert t_interval([]).n == 0
    with pytest.raises(ValueError, match="same seeds"):
        differences([1.0], [1.0, 2.0])


def test_gap_closed_by_hand():
    # seed 0: (12 - 5) / (35 - 5) = 7 / 30; seed 1: (10 - 6) / (26 - 6) = 0.2; seed 2: no gap.
    closed = gap_closed([12.0, 10.0, 9.0], [5.0, 6.0, 8.0], [35.0, 26.0, 8.0])
    assert closed[:2] == pytest.approx([7 / 30, 0.2])
    assert math.isnan(closed[2])


def _benchmark():
    spec = importlib.util.spec_from_file_location("synthetic_shift", REPO / "benchmarks" / "synthetic_shift.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _result(name: str, miou: float) -> MethodResult:
    """A scored run whose 19 classes all have IoU ``miou`` (so its mIoU is ``miou``)."""
    iou = np.full(19, miou)
    evaluation = EvalResult(confusion=np.zeros((19, 19), dtype=np.int64), iou=iou, miou={19: miou, 16: miou, 13: miou},
                            pixel_accuracy=50.0, depth={}, num_images=1,
                            depth_bins=[DepthBinScores(0.0, None, 10, iou, {19: miou})])
    return MethodResult(name, 10, 0.1, 1.0, evaluation)


def test_benchmark_summary_pairs_every_method_on_the_same_seeds(tmp_path, capsys):
    benchmark = _benchmark()
    scores = {"source_only": [5.0, 6.0, 5.5], "oracle": [35.0, 26.0, 30.5], "dacs": [14.42, 13.51, 11.96],
              "corda": [15.10, 13.82, 12.29]}
    per_seed = {seed: {m: _result(m, v[i]) for m, v in scores.items()} for i, seed in enumerate((0, 1, 2))}
    cfg = DemoConfig(target_depth="stereo")
    summary = benchmark.summarise(per_seed, benchmark.titles(cfg, "main"), benchmark.pairs(cfg, "main"))
    pair = summary["pairs"][0]
    assert (pair["name"], pair["per_seed"]) == ("CorDA - DACS", pytest.approx([0.68, 0.31, 0.33]))
    assert pair["difference"]["mean"] == pytest.approx(0.44, abs=1e-4)
    assert pair["difference"]["half_width"] == pytest.approx(T_975_DF2 * math.sqrt(0.0433 / 3), abs=1e-4)
    closed = summary["methods"]["corda"]["gap_closed"]["per_seed"]
    assert closed == pytest.approx([10.1 / 30, 7.82 / 20, 6.79 / 25], abs=1e-4)
    assert summary["per_class_corda_minus_dacs"]["road"]["mean"] == pytest.approx(0.44, abs=1e-4)
    assert summary["methods"]["dacs"]["depth_bins"]["0+ m"]["mean"] == pytest.approx(13.2967, abs=1e-4)
    benchmark.print_tables(summary, [0, 1, 2])
    assert "CorDA - DACS" in capsys.readouterr().out
    markdown = benchmark.markdown_tables(summary, [0, 1, 2]).splitlines()
    assert markdown[0] == "| method | seed 0 | seed 1 | seed 2 | mIoU, 95% interval | gap closed |"
    row = next(line for line in markdown if line.startswith("| CorDA - DACS |"))
    assert row == "| CorDA - DACS | +0.68 | +0.31 | +0.33 | 0.44 +- 0.52 | 0.017 +- 0.012 | no |"
    for path in benchmark.draw(summary, tmp_path, 3):
        assert path.stat().st_size > 1000

    ablation = benchmark.titles(cfg, "ablation")
    assert {"corda_no_attention", "corda_no_depth_weighting", "multitask", "corda_depth_self_supervised",
            "corda_depth_exact", "source_only_paper", "corda_paper"} <= set(ablation)
    assert "corda_depth_stereo" not in ablation  # the main CorDA run reads the stereo-matcher depth
    assert ("corda_paper", "corda") in benchmark.pairs(cfg, "ablation")


def test_interval_chart_draws_without_matplotlib(tmp_path):
    rows = [IntervalRow("DACS", 0.27, 0.2, 0.34), IntervalRow("n/a", math.nan, math.nan, math.nan)]
    path = interval_chart(rows, "gap closed", tmp_path / "chart.png", marks=(0.0, 1.0), backend="pil")
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert (picture == np.array([70, 130, 200])).all(axis=-1).sum() > 50  # the bar is drawn


def test_modern_preset_runs_are_valid_training_configs_scaled_to_the_crop(tmp_path):
    from cordaseg.demo.pipeline import train_config
    from cordaseg.models.corda import build_model

    benchmark = _benchmark()
    cfg = DemoConfig(target_depth="stereo", source_iterations=600, adaptation_iterations=300)
    runs = benchmark.modern_runs(cfg)
    assert [r[0] for r in runs] == ["mit_source_only", "daformer", "mic_daformer", "corda_mic_daformer"]
    configs = {name: train_config(cfg, method, tmp_path / "src", tmp_path / "tgt", tmp_path / name,
                                  cfg.source_iterations if method == "source_only" else cfg.adaptation_iterations,
                                  extra=extra)
               for name, _, method, extra in runs}
    for train in configs.values():
        assert (train.model.backbone, train.model.decoder, train.optim.name) == ("mit_b0", "daformer", "adamw")
    source, mic, corda = configs["mit_source_only"], configs["mic_daformer"], configs["corda_mic_daformer"]
    assert source.optim.warmup_iterations == 22 and mic.optim.warmup_iterations == 11  # 1500 / 40000 of each
    assert mic.optim.lr == pytest.approx(benchmark.MODERN_LR * cfg.adaptation_lr_factor)
    assert (mic.adaptation.mic.enabled, mic.adaptation.mic.patch) == (True, 8)  # 32 px at 512 -> 128
    assert not configs["daformer"].adaptation.mic.enabled
    assert mic.source.rare_class_sampling.min_pixels == 188  # 3000 * (128 / 512) ** 2
    assert not source.source.rare_class_sampling.enabled
    assert (corda.model.arch, corda.adaptation.method, corda.adaptation.feature_distance_weight) == ("corda", "corda", 0)
    mit = sum(p.numel() for p in build_model(source.model).parameters())
    resnet = sum(p.numel() for p in build_model(cfg.model("deeplab")).parameters())
    assert 1.0e6 < mit < 1.2e6 and 0.7e6 < resnet < 0.9e6  # the sizes the preset's docstring gives
    titles = benchmark.titles(cfg, "modern")
    assert {"source_only", "dacs", "corda", "oracle", "daformer", "corda_mic_daformer"} <= set(titles)
    assert ("corda_mic_daformer", "mic_daformer") in benchmark.pairs(cfg, "modern")
