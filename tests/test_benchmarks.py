"""The speed benchmarks run with their tiny CPU presets and print one
parseable JSON line per configuration; the training benchmark and the trainer share the
iteration function. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cordaseg.data.synth import generate_tree
from cordaseg.engine import iteration as iteration_module
from cordaseg.engine import trainer as trainer_module
from cordaseg.engine.config import load_train_config
from cordaseg.engine.trainer import train

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> list[dict]:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_train_step_benchmark_tiny_preset():
    lines = run_benchmark("train_step.py", "--tiny", "--optimizer", "foreach")
    # default lists: precision fp32 bf16 x merged 0 1
    assert [(r["precision"], r["merged"]) for r in lines] == [
        ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)
    ]
    for record in lines:
        assert record["benchmark"] == "train_step"
        assert record["device"] == "cpu"
        assert (record["backbone"], record["batch"], record["crop"]) == (18, 2, 64)
        assert record["optimizer"] == "foreach"
        assert record["s_per_iteration"] > 0 and record["iterations_per_s"] > 0
        assert record["peak_memory_mib"] > 0 and record["peak_memory_kind"] == "process_peak_rss"
        assert record["syncs_per_iteration"] == "n/a"
        assert record["host_reads_per_iteration"] == 0 and record["host_reads"] == {}
        assert record["torch"] and record["param_multiplicity"] == "reference"
        assert record["finite"] is True
        assert record["compile"] is False and record["channels_last"] is True


@pytest.mark.slow
def test_data_loading_benchmark_prints_each_pipeline_beside_its_decode_floor():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "data_loading.py"), "--frames", "1",
                             "--samples", "1", "--rounds", "1"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if "samples/s per core" in line]
    assert len(lines) == 6
    for line in lines:
        assert "decode floor" in line and "image: " in line and line.endswith("of the floor")
    assert "label: PIL" in lines[0]  # GTA5 palette labels have no other lossless decoder


def test_train_step_benchmark_rejects_a_missing_device_or_bad_sizes():
    script = REPO / "benchmarks" / "train_step.py"
    bad = subprocess.run([sys.executable, str(script), "--tiny", "--batch", "0"], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert bad.returncode != 0 and "--batch" in bad.stderr


@pytest.mark.slow
def test_inference_benchmark_tiny_preset():
    lines = run_benchmark("inference.py", "--tiny")
    assert [(r["path"], r["precision"]) for r in lines] == [
        ("evaluate", "fp32"), ("predict", "fp32"), ("evaluate", "bf16"), ("predict", "bf16")
    ]
    for record in lines:
        assert record["benchmark"] == "inference"
        assert record["size"] == [64, 128] and record["images"] == 2
        assert record["ms_per_image"] > 0 and record["peak_memory_mib"] > 0


@pytest.mark.slow
def test_trainer_and_benchmark_share_the_iteration(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the script imports its sibling presets.py
    spec = importlib.util.spec_from_file_location("train_step_benchmark", REPO / "benchmarks" / "train_step.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.train_iteration is iteration_module.train_iteration
    assert trainer_module.train_iteration is iteration_module.train_iteration

    calls = []

    def spy(state, batch, iteration, generator, **kwargs):
        calls.append((iteration, tuple(batch["source_image"].shape)))
        return iteration_module.train_iteration(state, batch, iteration, generator, **kwargs)

    monkeypatch.setattr(trainer_module, "train_iteration", spy)
    gta = generate_tree("gta5", tmp_path / "gta5", 3, size=(128, 64), seed=1)
    cityscapes = generate_tree("cityscapes", tmp_path / "cityscapes", 2, size=(256, 128), seed=2, depth="stereo")
    cfg = load_train_config(REPO / "configs" / "tiny_cpu.yaml", [
        f"source.root={gta}", f"target.root={cityscapes}", "val=null", "eval.every=0",
        f"run.out_dir={tmp_path / 'run'}", "optim.iterations=2", "logging.image_every=0",
        "logging.tensorboard=false",
    ])
    with pytest.warns(UserWarning, match="checkpoint.init"):
        result = train(cfg)
    assert result.iteration == 2
    assert calls == [(0, (2, 3, 64, 64)), (1, (2, 3, 64, 64))]
