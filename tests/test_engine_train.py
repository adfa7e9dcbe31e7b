"""Training engine end to end on generated GTA5 + Cityscapes trees with a tiny ResNet-18 model:
the CorDA loop, baselines, resume after SIGKILL, torchrun with two CPU processes, and the
configuration errors that must stop a run before any model is built."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cordaseg import cli
from cordaseg.adaptation.schedules import poly_lr
from cordaseg.data.synth import generate_tree
from cordaseg.engine import checkpoint as ckpt
from cordaseg.engine import trainer as trainer_module
from cordaseg.engine.config import TrainConfig, load_train_config
from cordaseg.engine.logging import read_metrics
from cordaseg.engine.trainer import TrainingDiverged, effective_lr, train
from cordaseg.models.checkpoint import load_model, model_payload
from cordaseg.models.corda import ModelConfig, build_model
from cordaseg.runtime.files import atomic_save

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trees")
    gta = generate_tree("gta5", root / "gta5", 6, size=(128, 64), seed=1)
    cityscapes = generate_tree("cityscapes", root / "cityscapes", 4, size=(256, 128), seed=2, depth="stereo")
    return {"gta5": gta, "cityscapes": cityscapes}


def tiny_overrides(trees: dict[str, Path], out_dir: Path, *extra: str) -> list[str]:
    return [
        f"source.root={trees['gta5']}",
        f"target.root={trees['cityscapes']}",
        f"val.root={trees['cityscapes']}",
        f"run.out_dir={out_dir}",
        *extra,
    ]


def tiny_config(trees: dict[str, Path], out_dir: Path, *extra: str) -> TrainConfig:
    return load_train_config(TINY, tiny_overrides(trees, out_dir, *extra))


def initial_student(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg.run.seed)  # what the trainer does before building the student
    return {k: v.clone() for k, v in build_model(cfg.model).named_parameters()}


def changed(after, before) -> bool:
    return any(not torch.equal(p.detach(), before[name]) for name, p in after.named_parameters())


@pytest.mark.slow
def test_corda_runs_20_iterations_end_to_end(trees, tmp_path):
    cfg = tiny_config(trees, tmp_path / "run")
    start = initial_student(cfg)
    with pytest.warns(UserWarning, match="checkpoint.init is not set"):
        result = train(cfg)

    assert result.iteration == 20
    assert changed(result.student, start) and changed(result.teacher, start)
    assert any(not torch.equal(s, t) for s, t in zip(result.student.parameters(), result.teacher.parameters()))

    records = read_metrics(tmp_path / "run", "train")
    assert [r["iteration"] for r in records] == [5, 10, 15, 20]
    assert all(math.isfinite(r["loss"]) for r in records)
    for name in ("source_ce", "target_ce", "target_depth", "confidence_fraction", "depth_weight_mean"):
        assert name in records[-1]
    # The lr logged at iteration k is the poly lr of iteration k-1 (heads run at 10x).
    assert records[1]["lr"] == pytest.approx(poly_lr(cfg.optim.lr, 9, 20, 0.9))
    val = read_metrics(tmp_path / "run", "val")
    assert [r["iteration"] for r in val] == [10, 20]
    assert all(0.0 <= r["mIoU"] <= 100.0 for r in val) and len(val[-1]["IoU"]) == 19

    run = tmp_path / "run"
    assert [it for it, _ in ckpt.list_checkpoints(run)] == [10, 20]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file() and (run / "best.pt").is_file()
    saved = ckpt.load_checkpoint(result.last_checkpoint)  # weights_only
    assert saved["iteration"] == 20 and saved["config"]["run"]["out_dir"] == str(run)
    lr = poly_lr(cfg.optim.lr, 19, 20, 0.9)
    groups = saved["optimizer"]["param_groups"]  # backbone by reference multiplicity (1x, 3x, 4x), heads
    assert [(g["name"], g["multiplicity"]) for g in groups] == [
        ("backbone_x1", 1), ("backbone_x3", 3), ("backbone_x4", 4), ("heads", 1)]
    assert [g["lr"] for g in groups] == pytest.approx([lr, lr, lr, 10 * lr])
    model, model_cfg = load_model(result.last_checkpoint)
    assert model_cfg == cfg.model
    for name, value in model.state_dict().items():
        assert torch.equal(value, result.student.state_dict()[name])


@pytest.mark.parametrize(
    ("method", "arch", "numerics"),
    [
        ("source_only", "deeplab", []),
        ("dacs", "deeplab", []),
        ("corda", "multitask", ["run.precision=bf16", "run.channels_last=true", "eval.every=2"]),
    ],
)
def test_baselines_and_ablations_are_configuration(trees, tmp_path, method, arch, numerics):
    extra = [f"adaptation.method={method}", f"model.arch={arch}", "optim.iterations=2", "eval.every=0",
             "logging.image_every=1", "checkpoint.init=null", *numerics]
    if method == "source_only":
        extra.append("target=null")
    cfg = tiny_config(trees, tmp_path / "run", *extra)
    start = initial_student(cfg)
    with pytest.warns(UserWarning, match="checkpoint.init"):
        result = train(cfg)
    assert changed(result.student, start)
    assert (result.teacher is None) == (method == "source_only")
    saved = ckpt.load_checkpoint(tmp_path / "run" / ckpt.checkpoint_name(2))
    assert saved["model_config"]["arch"] == arch
    terms = read_metrics(tmp_path / "run", "train")[-1]
    assert ("target_ce" in terms) == (method != "source_only")
    assert ("target_depth" in terms) == (method == "corda")


def run_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "cordaseg.cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(trees, tmp_path):
    extra = ("optim.iterations=4", "optim.batch_size=1", "checkpoint.every=2", "eval.every=4",
             "logging.every=1", "logging.image_every=0")
    killed_dir = tmp_path / "killed"
    process = run_cli(["--config", str(TINY), *tiny_overrides(trees, killed_dir, *extra)], tmp_path)
    first = killed_dir / ckpt.checkpoint_name(2)
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    assert first.exists(), output
    assert not (killed_dir / ckpt.checkpoint_name(4)).exists()  # it really died part-way
    resumed_from = ckpt.latest_checkpoint(killed_dir)

    with pytest.warns(UserWarning, match="checkpoint.init"):
        reference = train(tiny_config(trees, tmp_path / "straight", *extra))
    resumed = train(tiny_config(trees, killed_dir, *extra), resume=True)

    assert resumed_from.name == ckpt.checkpoint_name(2)
    assert resumed.iteration == reference.iteration == 4
    for ours, theirs in ((resumed.student, reference.student), (resumed.teacher, reference.teacher)):
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), f"{name} differs after resuming from {resumed_from.name}"
    a = ckpt.load_checkpoint(killed_dir / ckpt.checkpoint_name(4))["optimizer"]["state"]
    b = ckpt.load_checkpoint(tmp_path / "straight" / ckpt.checkpoint_name(4))["optimizer"]["state"]
    assert all(torch.equal(a[k]["momentum_buffer"], b[k]["momentum_buffer"]) for k in b)
    # Metrics of the resumed run replace what the killed run logged after its checkpoint.
    iterations = [r["iteration"] for r in read_metrics(killed_dir, "train")]
    assert iterations == [1, 2, 3, 4]
    straight_val = [r["mIoU"] for r in read_metrics(tmp_path / "straight", "val")]
    assert [r["mIoU"] for r in read_metrics(killed_dir, "val")] == straight_val


RANK_SCRIPT = """
import os, sys, torch
from cordaseg.engine.config import load_train_config
from cordaseg.engine.trainer import train
result = train(load_train_config(sys.argv[1], sys.argv[3:]))
params = {f"student.{k}": v for k, v in result.student.named_parameters()}
params.update({f"teacher.{k}": v for k, v in result.teacher.named_parameters()})
params.update({f"buffer.student.{k}": v for k, v in result.student.named_buffers()})
params.update({f"buffer.teacher.{k}": v for k, v in result.teacher.named_buffers()})
torch.save({k: v.detach() for k, v in params.items()}, os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sync_batchnorm", [False, True])
def test_torchrun_two_cpu_processes_stay_in_sync(trees, tmp_path, sync_batchnorm):
    script = tmp_path / "rank_script.py"
    script.write_text(RANK_SCRIPT)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(trees, run_dir, "optim.iterations=3", "optim.batch_size=1", "checkpoint.every=3",
                               "eval.every=3",
                               "logging.every=1", "logging.image_every=3",
                               f"run.sync_batchnorm={str(sync_batchnorm).lower()}")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(script), str(TINY), str(dumps), *overrides]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    rank0 = torch.load(dumps / "rank0.pt", weights_only=True)
    rank1 = torch.load(dumps / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        if sync_batchnorm or not name.startswith("buffer."):
            assert torch.equal(rank0[name], rank1[name]), name
    if not sync_batchnorm:
        # Each rank normalises its own batches, so the teacher's running statistics drift apart.
        assert any(not torch.equal(rank0[n], rank1[n]) for n in rank0 if n.startswith("buffer.teacher."))
    # Only rank 0 wrote: one event file, each iteration logged once, one set of checkpoints.
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [r["iteration"] for r in read_metrics(run_dir, "train")] == [1, 2, 3]
    assert len(read_metrics(run_dir, "val")) == 1
    assert [it for it, _ in ckpt.list_checkpoints(run_dir)] == [3]
    saved = ckpt.load_checkpoint(run_dir / ckpt.checkpoint_name(3))
    assert saved["data_state"]["world_size"] == 2


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(trees, tmp_path, monkeypatch):
    step = trainer_module.adaptation_step

    def poisoned(student, teacher, batch, cfg, iteration, generator, **kwargs):
        out = step(student, teacher, batch, cfg, iteration, generator, **kwargs)
        if iteration >= 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer_module, "adaptation_step", poisoned)
    cfg = tiny_config(trees, tmp_path / "run", "optim.iterations=6", "checkpoint.every=2", "logging.every=3",
                      "eval.every=0", "adaptation.method=dacs", "model.arch=deeplab")
    with pytest.warns(UserWarning), pytest.raises(TrainingDiverged, match="checkpoint_00000002.pt") as err:
        train(cfg)
    assert "NaN or infinite" in str(err.value)
    assert [it for it, _ in ckpt.list_checkpoints(tmp_path / "run")] == [2]


def test_linear_lr_scaling_follows_the_effective_batch():
    cfg = TrainConfig()
    assert effective_lr(cfg, world_size=4) == cfg.optim.lr
    cfg.optim.lr_scaling = "linear"
    cfg.optim.batch_size = 4
    assert effective_lr(cfg, world_size=4) == pytest.approx(cfg.optim.lr * 8)


# ---------------------------------------------------------------------------------------------
# Configuration errors: one line on stderr naming the key or path, before any model is built.


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the configuration was checked")

    monkeypatch.setattr(trainer_module, "build_model", refuse)
    monkeypatch.setattr(trainer_module, "build_dataset", refuse)


def cli_error(capsys, trees, tmp_path, *extra: str, resume: bool = False) -> str:
    args = ["train", "--config", str(TINY), *tiny_overrides(trees, tmp_path / "run", *extra)]
    status = cli.main(args + (["--resume"] if resume else []))
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_key_is_named(capsys, trees, tmp_path, no_model):
    assert "optim.learning_rate" in cli_error(capsys, trees, tmp_path, "optim.learning_rate=0.1")


def test_wrong_type_is_named(capsys, trees, tmp_path, no_model):
    assert "optim.iterations" in cli_error(capsys, trees, tmp_path, "optim.iterations=many")


def test_missing_dataset_root_is_named(capsys, trees, tmp_path, no_model):
    err = cli_error(capsys, trees, tmp_path, f"target.root={tmp_path / 'nowhere'}")
    assert "target.root" in err and "nowhere" in err


def test_crop_larger_than_resized_image_is_named(capsys, trees, tmp_path, no_model):
    # Cityscapes at 256x128 with the default half-size resize is 128x64.
    err = cli_error(capsys, trees, tmp_path, "target.crop=[128, 96]")
    assert "target.crop" in err and "128x64" in err
    assert "source.crop" in cli_error(capsys, trees, tmp_path, "source.crop=[200, 32]")


def test_checkpoint_of_another_variant_is_named(capsys, trees, tmp_path, no_model):
    other = ModelConfig(arch="deeplab", backbone_depth=18, backbone_width=16, head_width=32)
    net = build_model(other)
    payload = model_payload(net, other, teacher=net.state_dict(), optimizer={}, iteration=4, config={},
                            rng={}, data_state={})
    atomic_save(payload, tmp_path / "run" / ckpt.checkpoint_name(4))
    err = cli_error(capsys, trees, tmp_path, resume=True)
    assert "model.arch" in err and "deeplab" in err and "checkpoint_00000004.pt" in err


def test_init_weights_come_from_the_given_file(trees, tmp_path):
    cfg = tiny_config(trees, tmp_path / "run", "optim.iterations=1", "optim.lr=1.0e-30", "eval.every=0",
                      "adaptation.method=dacs", "model.arch=deeplab")
    torch.manual_seed(123)  # different weights from the trainer's own seeded initialisation
    net = build_model(cfg.model)
    atomic_save(model_payload(net, cfg.model), tmp_path / "init.pt")
    cfg.checkpoint.init = str(tmp_path / "init.pt")
    result = train(cfg)
    # An lr of 1e-30 leaves the weights where they started: the init file's, not the seeded ones.
    own_init = initial_student(cfg)
    trained = result.student.state_dict()
    for name, value in net.named_parameters():
        torch.testing.assert_close(trained[name], value.detach(), rtol=1e-6, atol=1e-12)
    assert not torch.allclose(trained["semantic_head.branches.0.weight"], own_init["semantic_head.branches.0.weight"])
