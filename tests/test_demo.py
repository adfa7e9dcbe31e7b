"""``cordaseg demo``: fixed counts and time-budget planning, the CorDA warm start, the config, the
report, and one end-to-end run on a tiny world (read back when resumed)."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cordaseg.cli import main
from cordaseg.cli.demo import command_overrides
from cordaseg.config import ConfigError
from cordaseg.demo.config import METHODS, DemoConfig, load_demo_config
from cordaseg.demo.pipeline import (
    _Progress,
    _replan,
    adaptation_iterations_left,
    corda_init_from_deeplab,
    cpu_threads,
    expected_seconds,
    make_plan,
    plan_iterations,
    run_demo,
)
from cordaseg.engine.checkpoint import check_same_model
from cordaseg.models.checkpoint import model_payload
from cordaseg.models.checkpoint_file import read_file
from cordaseg.models.corda import ModelConfig, build_model
from cordaseg.runtime.files import atomic_save

SPEED = {"source_only": 0.1, "oracle": 0.1, "dacs": 0.3, "corda": 0.5}


def test_plan_fills_the_time_with_equal_counts_per_pair():
    plan = plan_iterations(1000.0, SPEED, share=0.6)
    assert plan["source_only"] == plan["oracle"] == 2000  # 400 s / 0.2 s
    assert plan["dacs"] == plan["corda"] == 750  # 600 s / 0.8 s
    used = sum(plan[m] * SPEED[m] for m in METHODS)
    assert 990.0 <= used <= 1000.0


def test_plan_never_goes_below_the_minimum():
    assert set(plan_iterations(-5.0, SPEED, share=0.5, minimum=3).values()) == {3}
    assert adaptation_iterations_left(0.1, SPEED, minimum=4) == 4
    assert adaptation_iterations_left(80.0, SPEED) == 100


def budget_mode(*overrides: str) -> DemoConfig:
    return load_demo_config(None, command_overrides(list(overrides), minutes=15.0, seed=None))


def test_fixed_counts_ignore_the_probes():
    cfg = DemoConfig()
    assert cfg.fixed
    fixed = {"source_only": 4000, "oracle": 4000, "dacs": 2000, "corda": 2000}
    assert make_plan(cfg, 1.0, {m: 100.0 for m in METHODS}) == fixed  # a tiny budget, a crawling machine
    assert make_plan(cfg, 1e9, None) == fixed  # and nothing needs probing
    # The defaults fit the demo's promise: about 15 minutes on 2 idle cores.
    assert 12 * 60 < expected_seconds(cfg, fixed) <= 15 * 60


def test_minutes_switches_to_a_planned_budget():
    cfg = budget_mode()
    assert not cfg.fixed and cfg.minutes == 15.0
    assert (cfg.source_iterations, cfg.adaptation_iterations, cfg.depth_iterations) == (0, 0, 0)
    with pytest.raises(ConfigError, match="probed speeds"):
        make_plan(cfg, 100.0, None)
    assert budget_mode("adaptation_iterations=50").adaptation_iterations == 50  # an explicit count wins
    plan = make_plan(budget_mode("adaptation_iterations=50"), 1000.0, SPEED)
    assert plan["dacs"] == 50 and plan["source_only"] == 2000


def test_a_busy_machine_cannot_push_adaptation_below_the_floor():
    cfg = budget_mode()
    busy = {m: 50.0 for m in METHODS}  # probes that crawled
    plan = make_plan(cfg, 600.0, busy)
    assert plan["dacs"] == plan["corda"] == cfg.adaptation_floor == 200
    assert plan["source_only"] == plan["oracle"] == cfg.min_iterations

    # The machine got busy after the probes: source-only and the oracle ran 3x slower than probed.
    plan = make_plan(cfg, 1000.0, SPEED)
    done = {m: SimpleNamespace(train_seconds=3.0 * plan[m] * SPEED[m]) for m in ("source_only", "oracle")}
    with pytest.warns(RuntimeWarning) as caught:
        _replan(cfg, plan, SPEED, done, left=30.0, say=_Progress(quiet=True))
    assert plan["dacs"] == plan["corda"] == 200
    messages = " | ".join(str(w.message) for w in caught)
    assert "3.0x slower than when it was probed" in messages and "floor of 200" in messages


def test_threads_follow_the_cpus_this_process_may_use():
    assert 1 <= cpu_threads() <= (os.cpu_count() or 1)


def test_partial_world_override_keeps_demo_defaults():
    cfg = load_demo_config(None, ["world.num_source=7", "crop=[64,64]"])
    assert cfg.world.num_source == 7
    assert cfg.world.num_target_train == DemoConfig().world.num_target_train
    assert tuple(cfg.crop) == (64, 64)


@pytest.mark.parametrize("override, key", [
    ("widht=3", "widht"),
    ("crop=[512,512]", "crop"),
    ("adaptation_share=1.5", "adaptation_share"),
    ("world.num_source=-1", "num_source"),
])
def test_bad_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_demo_config(None, [override])


def test_cli_rejects_a_non_positive_budget(capsys):
    assert main(["demo", "--minutes", "0", "--out", "unused"]) == 2
    assert "--minutes" in capsys.readouterr().err


def test_corda_warm_start_takes_backbone_and_initial_head(tmp_path):
    cfg = DemoConfig(world=DemoConfig().world, backbone_width=8, head_width=16)
    torch.manual_seed(1)
    deeplab = build_model(cfg.model("deeplab"))
    with torch.no_grad():
        for p in deeplab.parameters():
            p.add_(torch.rand_like(p))  # weights unlike any fresh initialisation
    source = atomic_save(model_payload(deeplab, cfg.model("deeplab")), tmp_path / "deeplab.pt")
    path = corda_init_from_deeplab(source, cfg.model("corda"), tmp_path / "corda.pt", seed=3)
    payload = read_file(path)
    check_same_model(payload, cfg.model("corda"), path)  # the trainer's init check accepts it
    state = payload["model"]
    for key, value in deeplab.state_dict().items():
        new_key = key.replace("semantic_head.", "semantic_initial_head.", 1) if key.startswith("semantic_head.") \
            else key
        torch.testing.assert_close(state[new_key], value, rtol=0, atol=0)
    torch.manual_seed(3)
    fresh = build_model(cfg.model("corda")).state_dict()
    torch.testing.assert_close(state["semantic_head.branches.0.weight"], fresh["semantic_head.branches.0.weight"])
    torch.testing.assert_close(state["depth_head.branches.0.weight"], fresh["depth_head.branches.0.weight"])


def test_corda_warm_start_on_the_daformer_decoder_takes_encoder_decoder_and_classifier(tmp_path):
    base = dict(backbone="mit_b0", backbone_width=8, backbone_blocks=(1, 1, 1, 1), decoder="daformer",
                decoder_width=16, head_width=16)
    source_cfg, corda_cfg = ModelConfig(arch="deeplab", **base), ModelConfig(arch="corda", **base)
    torch.manual_seed(1)
    daformer = build_model(source_cfg)
    with torch.no_grad():
        for p in daformer.parameters():
            p.add_(torch.rand_like(p))
    source = atomic_save(model_payload(daformer, source_cfg), tmp_path / "daformer.pt")
    path = corda_init_from_deeplab(source, corda_cfg, tmp_path / "corda.pt", seed=3)
    payload = read_file(path)
    check_same_model(payload, corda_cfg, path)
    state = payload["model"]
    for key, value in daformer.state_dict().items():
        new_key = key.replace("semantic_head.", "semantic_initial_head.", 1)
        torch.testing.assert_close(state[new_key], value, rtol=0, atol=0)
    assert any(k.startswith("decoder.") for k in daformer.state_dict())
    torch.manual_seed(3)
    fresh = build_model(corda_cfg).state_dict()
    torch.testing.assert_close(state["semantic_head.conv.weight"], fresh["semantic_head.conv.weight"])


def test_corda_warm_start_rejects_another_backbone(tmp_path):
    cfg = DemoConfig(backbone_width=8, head_width=16)
    other = DemoConfig(backbone_width=16, head_width=16)
    source = atomic_save(model_payload(build_model(other.model("deeplab")), other.model("deeplab")),
                         tmp_path / "deeplab.pt")
    with pytest.raises(Exception, match="does not fit"):
        corda_init_from_deeplab(source, cfg.model("corda"), tmp_path / "corda.pt")


TINY = ["world.num_source=10", "world.num_target_train=8", "world.num_target_val=4", "world.size=[64,32]",
        "world_workers=0", "crop=[32,32]", "backbone_width=8", "head_width=16", "probe_iterations=2",
        "min_iterations=3", "adaptation_floor=3", "grid_images=2"]


@pytest.mark.slow
def test_demo_end_to_end_on_a_tiny_world(tmp_path, capsys):
    out = tmp_path / "demo"
    status = main(["demo", "--out", str(out), "--minutes", "0.3", *TINY])
    assert status == 0
    printed = capsys.readouterr().out
    assert "stage 5/5" in printed and "plan:" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == list(METHODS)
    for name, method in results["methods"].items():
        assert method["iterations"] >= 3, name
        assert 0.0 <= method["miou"] <= 100.0, name
        assert method["seconds_per_iteration"] > 0, name
        assert len(method["iou"]) == 19
    assert results["config"]["world"]["num_target_val"] == 4
    # DACS and CorDA share one planned count, as do source-only and the oracle.
    m = results["methods"]
    assert m["dacs"]["iterations"] == m["corda"]["iterations"]
    assert m["source_only"]["iterations"] == m["oracle"]["iterations"]

    report = (out / "report.md").read_text()
    for title in ("source-only", "DACS", "CorDA", "target oracle", "Domain gap", "road", "bicycle"):
        assert title in report
    miou_line = next(line for line in report.splitlines() if line.startswith("| CorDA |"))
    assert math.isclose(float(miou_line.split("|")[-2]), m["corda"]["miou"], abs_tol=0.051)

    picture = np.asarray(Image.open(out / "report.png").convert("RGB"))
    # The grid: 2 rows of 64x32 frames scaled to 96 px high, 7 tiles wide (image, labels, 4 methods, depth).
    assert picture.shape[0] >= 2 * 96 and picture.shape[1] >= 7 * 192
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 20  # drawn, not blank

    assert (out / "world" / "world.json").is_file()
    assert (out / "runs" / "corda_init.pt").is_file()
    assert not (out / "runs" / "probe").exists()

    # The same runs with their counts fixed, resumed: every run is read back from its scores.json.
    counts = [f"source_iterations={m['oracle']['iterations']}", f"adaptation_iterations={m['corda']['iterations']}"]
    cfg = load_demo_config(None, command_overrides([*TINY, *counts], minutes=0.3, seed=None))
    again = run_demo(cfg, out, quiet=True, resume=True)
    assert all(r.resumed for r in again.methods.values())
    assert {k: r.miou for k, r in again.methods.items()} == pytest.approx({k: v["miou"] for k, v in m.items()},
                                                                           abs=0.006)


@pytest.mark.slow
def test_demo_target_depth_makes_a_readable_tree(tmp_path):
    from cordaseg.data.datasets import DatasetConfig, build_dataset
    from cordaseg.demo.pipeline import demo_target_depth
    from cordaseg.world import generate_world

    _, target = generate_world(tmp_path / "world", 0, 3, 1, size=(128, 64), workers=0, progress=False)
    cfg = load_demo_config(None, ["world.size=[128,64]", "crop=[64,64]"])
    tree = demo_target_depth(cfg, target, tmp_path / "runs", seconds=1.0, progress=False)
    assert (tmp_path / "runs" / "self_supervised_depth" / "depth_run" / "depth_last.pth").is_file()
    data = build_dataset(DatasetConfig(format="cityscapes", root=str(tree), split="train", depth="stereo",
                                       use_labels=False, resize_scale=1.0, crop=(64, 64)), train=True)
    assert len(data) == 3
    depth = data[0]["depth"]
    assert depth.shape == (64, 64)
    # Exported network depth: finite, and valid (not the invalid value 1.0) almost everywhere.
    assert torch.isfinite(depth).all() and (depth != 1.0).float().mean() > 0.9
