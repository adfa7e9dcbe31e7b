"""Fault injection: every bad input and every fault ends in one clear line, resume never picks the
wrong state, and nothing is overwritten without asking.

Most cases are a row of a table: build the fault in a temporary folder, run the command line
in-process (``cordaseg.cli.main``) and expect exit status 2 with one line on stderr that names
the file or key and the cause, and no traceback. Cases that need a training run share small
generated trees and one finished tiny run (``configs/tiny_cpu.yaml`` with 2 iterations).

Tests run as root here, where ``chmod`` does not stop writes: read-only folders are made with a
patched ``os.access`` (the question every output check asks) or with a path under a regular file,
and a full disk with a patched file whose ``write`` raises ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cordaseg import cli
from cordaseg.data.datasets import DatasetConfig, find_samples
from cordaseg.data.synth import generate_tree
from cordaseg.engine import checkpoint as ckpt
from cordaseg.engine import run_folder
from cordaseg.engine import trainer as trainer_module
from cordaseg.engine.logging import read_metrics
from cordaseg.errors import CheckpointError, one_line
from cordaseg.evaluation.predict import PredictConfig, predict_image, upsampled_argmax
from cordaseg.models import checkpoint as model_checkpoint
from cordaseg.models.checkpoint import load_model, model_payload
from cordaseg.models.checkpoint_file import read_file
from cordaseg.models.convert import project_to_reference, reference_model_config
from cordaseg.models.corda import ModelConfig, build_model
from cordaseg.runtime.files import atomic_save

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_cpu.yaml"
FAST = ("optim.iterations=2", "optim.batch_size=1", "checkpoint.every=1", "eval.every=0", "logging.every=1",
        "logging.image_every=0", "logging.tensorboard=false", "run.num_workers=0", "model.backbone_width=8",
        "model.head_width=16", "source.crop=[32,32]", "target.crop=[32,32]")


class _Opaque:  # what makes a legitimate old checkpoint a full pickle: a class of its writer's code
    pass


class _Shell:  # what makes a malicious one: unpickling calls os.system
    def __reduce__(self):
        return (os.system, ("echo unpickled",))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny runs here are a few milliseconds per operation: one thread is fastest, above all on
    a shared machine, where idle threads of a parallel region spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Trees (6 GTA5 frames, 6 Cityscapes frames per split) and checkpoint files of every kind."""
    root = tmp_path_factory.mktemp("faults")
    files = {
        "root": root,
        "gta5": generate_tree("gta5", root / "gta5", 6, size=(128, 64), seed=1),
        "cityscapes": generate_tree("cityscapes", root / "cityscapes", 6, size=(256, 128), seed=2, depth="stereo"),
    }
    cfg = ModelConfig(backbone_depth=18, backbone_width=8, head_width=16)
    torch.manual_seed(0)
    net = build_model(cfg)
    files["model"] = atomic_save(model_payload(net, cfg, teacher=net.state_dict()), root / "model.pt")
    reference = project_to_reference(build_model(reference_model_config("deeplab", backbone_depth=18,
                                                                         backbone_width=8)).state_dict(), "deeplab")
    torch.save({"model": reference, "config": _Opaque()}, root / "full_pickle.pth")
    torch.save({"model": {"w": torch.zeros(2)}, "config": _Shell()}, root / "malicious.pt")
    (root / "empty.pt").write_bytes(b"")
    data = files["model"].read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "json.pt").write_text(json.dumps({"model": [1, 2, 3]}))
    for name in ("full_pickle.pth", "malicious.pt", "empty.pt", "truncated.pt", "random.pt", "json.pt"):
        files[name.split(".")[0]] = root / name
    (root / "a_file").write_text("not a folder")
    files["a_file"] = root / "a_file"
    files["image"] = sorted((files["cityscapes"] / "leftImg8bit" / "val").glob("*/*.png"))[0]
    return files


def tiny_argv(world: dict[str, Path], out_dir: Path, *extra: str) -> list[str]:
    """``cordaseg train`` of the tiny config on the generated trees (2 fast iterations)."""
    return ["train", "--config", str(TINY), f"source.root={world['gta5']}", f"target.root={world['cityscapes']}",
            f"val.root={world['cityscapes']}", f"run.out_dir={out_dir}", *FAST, *extra]


@pytest.fixture(scope="module")
def finished_run(world) -> Path:
    """A finished tiny run: checkpoints 1 and 2 of one lineage."""
    run = world["root"] / "finished"
    assert cli.main(tiny_argv(world, run)) == 0
    return run


def copy_run(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "run"))


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the command line; it must exit 2 with one error line on stderr and no traceback (other
    lines may only be one-line warnings, such as training from random weights)."""
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("cordaseg: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("cordaseg: error: "), err
    return lines[0]


def frames(world, split: str = "val") -> list:
    return find_samples(DatasetConfig(format="cityscapes", root=str(world["cityscapes"]), split=split))


def copy_tree(world, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(world[name], tmp_path / name))


@pytest.fixture
def no_work(monkeypatch):
    """Fail if evaluation, prediction or a model build starts: the fault must be found before."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the fault was found")

    import cordaseg.cli.evaluate as evaluate_command  # the names the commands call

    monkeypatch.setattr(evaluate_command, "evaluate_segmentation", refuse)
    monkeypatch.setattr(evaluate_command, "predict_files", refuse)
    monkeypatch.setattr(model_checkpoint, "CordaNet", refuse)  # load_model builds the network with it
    monkeypatch.setattr(trainer_module, "build_model", refuse)


# ---------------------------------------------------------------------------------------------
# The table: (id, argv builder, words the one line must contain, words it must not contain)


@dataclass
class Case:
    id: str
    argv: object  # (world, tmp_path) -> argv
    expect: tuple[str, ...]
    absent: tuple[str, ...] = ()
    setup: object = None  # (world, tmp_path, monkeypatch) -> None
    marks: tuple = field(default_factory=tuple)


def _fill(argv: list[str], world, tmp_path: Path) -> list[str]:
    """Put the paths of this test in for ``{tmp}`` and ``{a_file}``."""
    return [a.replace("{a_file}", str(world["a_file"])).replace("{tmp}", str(tmp_path)) for a in argv]


def _evaluate(checkpoint: str, *extra: str, tree: str | None = None, device: str = "cpu"):
    """``cordaseg evaluate``; ``tree`` (with ``{tmp}``) replaces the shared Cityscapes tree."""
    return lambda w, t: _fill(["evaluate", "--checkpoint", str(w[checkpoint]), "--data-root",
                               tree or str(w["cityscapes"]), "--input-size", "64x32", "--num-workers", "0",
                               "--no-progress", "--device", device, *extra], w, t)


def _predict(checkpoint: str, *extra: str, out: str = "{tmp}/pred", device: str = "cpu"):
    return lambda w, t: _fill(["predict", "--checkpoint", str(w[checkpoint]), str(w["image"]), "--out", out,
                               "--no-progress", "--device", device, *extra], w, t)


def _convert(checkpoint: str, *extra: str):
    return lambda w, t: ["convert", str(w[checkpoint]), "--out", str(t / "converted.pt"), *extra]


def _resume(checkpoint: str):
    return lambda w, t: tiny_argv(w, t / "run", "--resume", str(w[checkpoint]))


def _depth_export(checkpoint: str):
    return lambda w, t: ["depth", "export", "--checkpoint", str(w[checkpoint]), "--data", str(w["cityscapes"]),
                         "--format", "cityscapes-mono", "--out", str(t / "depth"), "--quiet"]


def _read_only(folder_name: str):
    """Patch os.access so that ``folder_name`` (and what is under it) is not writable."""

    def setup(world, tmp_path, monkeypatch):
        (tmp_path / folder_name).mkdir()
        real = os.access
        blocked = str(tmp_path / folder_name)
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(blocked) and
                            mode & os.W_OK else real(p, mode, **kw))

    return setup


def _copy_tree_then(name: str, edit):
    def setup(world, tmp_path, monkeypatch):
        edit(world, copy_tree(world, name, tmp_path))

    return setup


def _resize_label(world, tree: Path) -> None:
    label = sorted((tree / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))[2]  # a frame in the middle
    with Image.open(label) as image:
        image.resize((128, 64), Image.NEAREST).save(label)


def _train_ids_as_label_ids(world, tree: Path) -> None:
    label = sorted((tree / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))[1]
    Image.fromarray(np.full((128, 256), 255, np.uint8)).save(label)  # void/ignore train IDs


def _write_config(content: bytes):
    def setup(world, tmp_path, monkeypatch):
        (tmp_path / "bad.yaml").write_bytes(content)

    return setup


CASES = [
    # Checkpoints: say what the file is; advise --trust-pickle only for a legitimate full pickle.
    Case("evaluate-empty", _evaluate("empty"), ("empty.pt", "empty file"), ("trust-pickle", "EOFError")),
    Case("predict-empty", _predict("empty"), ("empty.pt", "empty file"), ("trust-pickle",)),
    Case("convert-empty", _convert("empty"), ("empty.pt", "empty file"), ("trust-pickle",)),
    Case("resume-empty", _resume("empty"), ("empty.pt", "empty file"), ("trust-pickle",)),
    Case("init-empty", lambda w, t: tiny_argv(w, t / "run", f"checkpoint.init={w['empty']}"),
         ("empty.pt", "empty file"), ("trust-pickle",)),
    Case("depth-export-empty", _depth_export("empty"), ("empty.pt", "empty file"), ("trust-pickle",)),
    Case("evaluate-truncated", _evaluate("truncated"), ("truncated.pt", "truncated"), ("trust-pickle",)),
    Case("evaluate-random-bytes", _evaluate("random"), ("random.pt", "not a checkpoint"), ("trust-pickle",)),
    Case("evaluate-json-named-pt", _evaluate("json"), ("json.pt", "JSON file"), ("trust-pickle",)),
    Case("evaluate-malicious", _evaluate("malicious"), ("malicious.pt", "posix.system"), ("--trust-pickle",)),
    Case("predict-malicious-trusted", _predict("malicious", "--trust-pickle"), ("posix.system", "refusing"), ()),
    Case("evaluate-full-pickle", _evaluate("full_pickle"), ("full_pickle.pth", "_Opaque", "pass --trust-pickle")),
    Case("predict-full-pickle", _predict("full_pickle"), ("full_pickle.pth", "pass --trust-pickle")),
    Case("convert-full-pickle", _convert("full_pickle"), ("full_pickle.pth", "pass --trust-pickle")),
    Case("resume-full-pickle", _resume("full_pickle"), ("full_pickle.pth", "full pickle", "not one of them"),
         ("--trust-pickle",)),
    Case("depth-export-full-pickle", _depth_export("full_pickle"), ("full_pickle.pth", "full pickle"),
         ("--trust-pickle",)),
    Case("init-full-pickle", lambda w, t: tiny_argv(w, t / "run", f"checkpoint.init={w['full_pickle']}"),
         ("full_pickle.pth", "checkpoint.trust_pickle=true")),
    # Nothing overwritten without asking; outputs checked before work starts.
    Case("convert-in-place", lambda w, t: ["convert", str(w["model"]), "--out", str(w["model"]), "--overwrite"],
         ("model.pt", "input checkpoint itself")),
    Case("convert-existing-out", lambda w, t: ["convert", str(w["full_pickle"]), "--out", str(w["model"])],
         ("--out", "model.pt", "already exists", "--overwrite")),
    Case("convert-out-is-folder", lambda w, t: ["convert", str(w["full_pickle"]), "--out", str(t)],
         ("--out", "is a folder")),
    Case("convert-out-under-a-file", lambda w, t: ["convert", str(w["model"]), "--out", str(w["a_file"] / "x.pt")],
         ("--out", "a_file", "not a folder")),
    Case("convert-out-read-only", lambda w, t: ["convert", str(w["model"]), "--out", str(t / "ro" / "x.pt")],
         ("--out", "not writable"), setup=_read_only("ro")),
    Case("train-out-dir-read-only", lambda w, t: tiny_argv(w, t / "ro" / "run"), ("run.out_dir", "not writable"),
         setup=_read_only("ro")),
    Case("train-out-dir-under-a-file", lambda w, t: tiny_argv(w, w["a_file"] / "run"),
         ("run.out_dir", "a_file is a file")),
    Case("predict-out-is-a-file", _predict("model", out="{a_file}"), ("--out", "a_file", "not a folder")),
    Case("evaluate-out-is-a-file", _evaluate("model", "--out", "{a_file}"), ("--out", "a_file", "not a folder")),
    Case("evaluate-report-read-only", _evaluate("model", "--report", "{tmp}/ro/report"), ("--report", "not writable"),
         setup=_read_only("ro")),
    Case("synth-out-is-a-file", lambda w, t: ["data", "synth", "--format", "gta5", "--out", str(w["a_file"])],
         ("--out", "a_file", "not a folder")),
    Case("synth-over-existing-tree", lambda w, t: ["data", "synth", "--format", "gta5", "--num", "1", "--size",
                                                   "32x16", "--out", str(w["gta5"])], ("--out", "not empty", "--overwrite")),
    # Devices and values.
    Case("evaluate-device-cuda", _evaluate("model", device="cuda"), ("--device", "cuda")),
    Case("predict-device-gpu0", _predict("model", device="gpu0"), ("--device", "gpu0", "not a device")),
    Case("train-run-device-cuda", lambda w, t: tiny_argv(w, t / "run", "run.device=cuda"), ("run.device", "cuda")),
    Case("train-negative-seed", lambda w, t: tiny_argv(w, t / "run", "run.seed=-1"), ("run.seed", "-1")),
    Case("train-negative-momentum", lambda w, t: tiny_argv(w, t / "run", "optim.momentum=-1"), ("optim.momentum",)),
    Case("train-config-not-utf8", lambda w, t: ["train", "--config", str(t / "bad.yaml")], ("bad.yaml", "UTF-8"),
         setup=_write_config(b"optim:\n  lr: 1.0e-3 # \xe9t\xe9\n")),
    # Overrides and --resume in any order: a key=value token is never the checkpoint path.
    Case("override-after-resume-path", lambda w, t: tiny_argv(w, t / "run", "optim.lr=0.001", "--resume",
                                                              str(w["empty"]), "optim.momentum=-1"),
         ("optim.momentum",), ("unrecognized",)),
    Case("override-taken-for-resume-path", lambda w, t: tiny_argv(w, t / "run", "--resume", "optim.lr=-1"),
         ("optim.lr", "must be > 0")),
    # Data.
    Case("evaluate-wrong-size-label", _evaluate("model", tree="{tmp}/cityscapes"),
         ("_gtFine_labelIds.png", "label is 128x64"), setup=_copy_tree_then("cityscapes", _resize_label)),
    Case("evaluate-train-ids-as-label-ids", _evaluate("model", tree="{tmp}/cityscapes"),
         ("_gtFine_labelIds.png", "label values outside"), setup=_copy_tree_then("cityscapes", _train_ids_as_label_ids)),
    Case("train-wrong-size-label-in-the-middle",
         lambda w, t: tiny_argv(w, t / "run", f"val.root={t / 'cityscapes'}", "eval.every=1"),
         ("sizes do not pair", "label 128x64", "data check"), setup=_copy_tree_then("cityscapes", _resize_label)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_fault_is_one_clear_line(case, world, tmp_path, capsys, monkeypatch, no_work):
    if case.setup is not None:
        case.setup(world, tmp_path, monkeypatch)
    line = one_error_line(capsys, _fill(case.argv(world, tmp_path), world, tmp_path))
    for word in case.expect:
        assert word in line, line
    for word in case.absent:
        assert word not in line, line


def test_debug_shows_the_traceback(world, tmp_path):
    with pytest.raises(CheckpointError, match="empty file"):
        cli.main(["--debug", *_evaluate("empty")(world, tmp_path)])


def test_world_shift_out_of_range_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["world", "--out", str(tmp_path / "w"), "--shift", "5"])
    assert stop.value.code == 2
    assert "--shift" in capsys.readouterr().err.splitlines()[-1]


def test_trusted_full_pickle_loads_where_checkpoints_are_read(world, tmp_path, capsys):
    assert cli.main([*_predict("full_pickle")(world, tmp_path), "--input-size", "64x32", "--trust-pickle",
                     "--no-depth", "--no-overlay"]) == 0
    assert (tmp_path / "pred" / "color").is_dir()


def test_scan_never_unpickles(world, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("the file was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    for name in ("malicious", "empty", "truncated", "random", "json"):
        with pytest.raises(CheckpointError):
            read_file(world[name])
    with pytest.raises(CheckpointError, match="empty file"):
        load_model(world["empty"])


def test_worker_traceback_becomes_its_original_message():
    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise DataError(...)\n'
               "cordaseg.errors.DataError: /data/a.png: cannot decode the file (unreadable or truncated)\n")
    assert one_line(wrapped) == "/data/a.png: cannot decode the file (unreadable or truncated)"


# ---------------------------------------------------------------------------------------------
# Faults that need the data loader, the evaluation or the training loop to run


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header survives, the pixels do not
    return path


def test_damaged_frame_in_a_worker_is_one_line_in_evaluate(world, tmp_path, capsys):
    tree = copy_tree(world, "cityscapes", tmp_path)
    bad = _truncate(sorted((tree / "leftImg8bit" / "val").glob("*/*.png"))[3])
    line = one_error_line(capsys, ["evaluate", "--checkpoint", str(world["model"]), "--data-root", str(tree),
                                   "--input-size", "64x32", "--num-workers", "2", "--device", "cpu", "--no-progress"])
    assert bad.name in line and "cannot decode" in line


def test_damaged_frame_in_a_worker_is_one_line_in_train(world, tmp_path, capsys):
    tree = copy_tree(world, "gta5", tmp_path)
    bad = _truncate(sorted((tree / "images").glob("*.png"))[2])  # quick_check decodes 2 at each end only
    # A batch of all six frames: a worker process (one is enough; the default is 2) meets the damaged
    # one in the first batch.
    line = one_error_line(capsys, tiny_argv(world, tmp_path / "run", f"source.root={tree}", "run.num_workers=1",
                                            "optim.batch_size=6"))
    assert bad.name in line and "cannot decode" in line


def test_error_after_a_progress_bar_starts_on_its_own_line(world, tmp_path, capsys):
    tree = copy_tree(world, "cityscapes", tmp_path)
    _truncate(sorted((tree / "leftImg8bit" / "val").glob("*/*.png"))[2])
    status = cli.main(["evaluate", "--checkpoint", str(world["model"]), "--data-root", str(tree),
                       "--input-size", "64x32", "--num-workers", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert re.search(r"(^|[\r\n])cordaseg: error: .*cannot decode", err), repr(err)


def test_predict_argmax_in_strips_equals_the_whole_image(world):
    generator = torch.Generator().manual_seed(0)
    for (h, w), (height, width) in (((8, 16), (61, 127)), ((17, 9), (130, 70)), ((5, 7), (40, 41))):
        logits = torch.randn(1, 19, h, w, generator=generator)
        whole = F.interpolate(logits, (height, width), mode="bilinear", align_corners=True).argmax(1)[0]
        for rows in (1, 3, 1000):
            assert torch.equal(upsampled_argmax(logits, (height, width), rows), whole.to(torch.uint8))
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone_depth=18, backbone_width=8, head_width=16)).eval()
    image = np.asarray(Image.open(world["image"]).convert("RGB"))[..., ::-1].copy()
    whole = predict_image(model, image, PredictConfig(input_size=(64, 32), strip_rows=10_000))
    strips = predict_image(model, image, PredictConfig(input_size=(64, 32), strip_rows=3))
    np.testing.assert_array_equal(strips.train_ids, whole.train_ids)


@pytest.mark.parametrize(("damage", "cause"), [("empty", "empty file"), ("truncated", "truncated")])
def test_auto_resume_falls_back_past_a_corrupt_newest_checkpoint(world, finished_run, tmp_path, capsys, damage,
                                                                 cause):
    run = copy_run(finished_run, tmp_path)
    newest = run / ckpt.checkpoint_name(2)
    newest.write_bytes(b"" if damage == "empty" else newest.read_bytes()[:100])
    (run / ".checkpoint_00000002.pt.k1x2.tmp").write_bytes(b"left by a killed save")
    assert cli.main(tiny_argv(world, run)) == 0
    err = capsys.readouterr().err
    assert re.search(rf"cordaseg: warning: skipping .*checkpoint_00000002\.pt.*{cause}", err), err
    assert "trainer.py" not in err and "warnings.warn" not in err  # no source line
    again = ckpt.load_checkpoint(newest)  # iteration 2 trained again from checkpoint 1 and saved
    original = ckpt.load_checkpoint(finished_run / ckpt.checkpoint_name(2))
    for name, value in original["model"].items():
        assert torch.equal(again["model"][name], value), name
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_config_change_on_a_finished_run_needs_allow_config_change(world, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    argv = tiny_argv(world, run, "optim.lr=0.01", "run.seed=7")
    line = one_error_line(capsys, argv)
    assert str(run) in line and "optim.lr" in line and "run.seed" in line and "--allow-config-change" in line
    assert cli.main([*argv, "--allow-config-change"]) == 0
    record = json.loads((run / run_folder.RUN_FILE).read_text())
    assert record["config_changes"][-1]["changes"]["optim.lr"] == [0.00025, 0.01]
    # free keys (logging, workers) never count as a change
    assert cli.main(tiny_argv(world, run, "optim.lr=0.01", "run.seed=7", "logging.every=2")) == 0


def test_folder_with_metrics_but_no_checkpoint_is_refused(world, tmp_path, capsys, no_work):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("optim: {lr: 0.1}\n")
    (run / "metrics.jsonl").write_text('{"iteration": 5, "kind": "train", "loss": 1.0}\n')
    line = one_error_line(capsys, tiny_argv(world, run))
    assert str(run) in line and "config.yaml" in line and "metrics.jsonl" in line
    assert (run / "config.yaml").read_text() == "optim: {lr: 0.1}\n"


def test_restart_from_scratch_does_not_duplicate_metrics(world, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    for _, path in ckpt.list_checkpoints(run):  # as if killed before its first checkpoint
        path.unlink()
    assert cli.main(tiny_argv(world, run)) == 0
    assert [r["iteration"] for r in read_metrics(run, "train")] == [1, 2]


def test_branch_keeps_the_old_line_and_auto_resume_continues_the_branch(world, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    argv = tiny_argv(world, run, "optim.iterations=3", "checkpoint.keep_last=3")
    assert cli.main(argv) == 0  # the old line: 1, 2, 3
    old = {it: ckpt.load_checkpoint(p)["lineage"] for it, p in ckpt.list_checkpoints(run)}
    assert sorted(old) == [1, 2, 3] and len(set(old.values())) == 1
    old_files = {p.name for _, p in ckpt.list_checkpoints(run)}

    step = trainer_module.adaptation_step
    stop_at = {"iteration": 1}

    def stopped(student, teacher, batch, cfg, iteration, generator, **kwargs):
        if iteration == stop_at["iteration"]:
            os.kill(os.getpid(), signal.SIGTERM)  # the branch is stopped part-way
        return step(student, teacher, batch, cfg, iteration, generator, **kwargs)

    monkeypatch.setattr(trainer_module, "adaptation_step", stopped)
    branch = tiny_argv(world, run, "optim.iterations=3", "checkpoint.keep_last=1", "--resume",
                       str(run / ckpt.checkpoint_name(1)))
    assert cli.main(branch) == 128 + signal.SIGTERM
    files = {p.name for _, p in ckpt.list_checkpoints(run)}
    branch_files = files - old_files
    assert old_files <= files  # the old line is untouched: not pruned, not overwritten
    assert len(branch_files) == 1 and next(iter(branch_files)).startswith("checkpoint_00000002.")
    branch_lineage = ckpt.load_checkpoint(run / next(iter(branch_files)))["lineage"]
    capsys.readouterr()

    stop_at["iteration"] = -1
    assert cli.main(tiny_argv(world, run, "optim.iterations=3", "checkpoint.keep_last=1")) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "checkpoint_00000002." in out  # the branch, not the old line's 3
    assert {p.name for _, p in ckpt.list_checkpoints(run)} - old_files == {ckpt.checkpoint_name(3, branch_lineage)}
    assert ckpt.load_checkpoint(run / ckpt.checkpoint_name(3))["lineage"] == old[3]

    # A folder whose run.json does not say which line is current is ambiguous: refused.
    (run / run_folder.RUN_FILE).unlink()
    line = one_error_line(capsys, tiny_argv(world, run, "optim.iterations=3"))
    assert "2 lines of training" in line and "--resume" in line


def test_sigint_saves_a_checkpoint_and_prints_the_resume_command(world, tmp_path, capsys, monkeypatch):
    step = trainer_module.adaptation_step

    def interrupted(student, teacher, batch, cfg, iteration, generator, **kwargs):
        if iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return step(student, teacher, batch, cfg, iteration, generator, **kwargs)

    monkeypatch.setattr(trainer_module, "adaptation_step", interrupted)
    run = tmp_path / "run"
    argv = tiny_argv(world, run, "optim.iterations=4", "checkpoint.every=10")
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    saved = run / ckpt.checkpoint_name(2)
    assert saved.is_file() and ckpt.load_checkpoint(saved)["iteration"] == 2
    command = re.search(r"resume with: (.*)", err).group(1)
    assert command.startswith("cordaseg train --config") and command.endswith(f"--resume {saved}")
    monkeypatch.setattr(trainer_module, "adaptation_step", step)
    assert cli.main(shlex.split(command)[1:]) == 0
    assert [r["iteration"] for r in read_metrics(run, "train")] == [1, 2, 3, 4]


def test_huge_loss_stops_before_checkpointing_the_diverged_weights(world, tmp_path, capsys, monkeypatch):
    step = trainer_module.adaptation_step

    def exploding(student, teacher, batch, cfg, iteration, generator, **kwargs):
        out = step(student, teacher, batch, cfg, iteration, generator, **kwargs)
        if iteration >= 2:
            out.loss = out.loss * 1e17  # finite, but the weights it leaves are garbage
        return out

    monkeypatch.setattr(trainer_module, "adaptation_step", exploding)
    run = tmp_path / "run"
    line = one_error_line(capsys, tiny_argv(world, run, "optim.iterations=6", "checkpoint.every=2",
                                            "logging.every=3", "adaptation.method=dacs", "model.arch=deeplab"))
    assert "optim.divergence_loss" in line and "checkpoint_00000002.pt" in line
    assert "run.precision=fp32" not in line  # the run is in fp32 already
    assert [it for it, _ in ckpt.list_checkpoints(run)] == [2]


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_old_checkpoints(world, tmp_path, capsys,
                                                                               monkeypatch):
    real_fdopen = os.fdopen
    saves = {"count": 0}

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def fdopen(fd, mode="r", *args, **kwargs):
        file = real_fdopen(fd, mode, *args, **kwargs)
        if "w" in mode and "b" in mode:
            saves["count"] += 1
            if saves["count"] == 2:  # the second checkpoint
                return FullDisk(file)
        return file

    monkeypatch.setattr(os, "fdopen", fdopen)
    run = tmp_path / "run"
    line = one_error_line(capsys, tiny_argv(world, run))
    assert "checkpoint_00000002.pt" in line and "No space left on device" in line
    assert ckpt.load_checkpoint(run / ckpt.checkpoint_name(1))["iteration"] == 1
    assert not (run / ckpt.checkpoint_name(2)).exists() and not list(run.glob(".*.tmp"))


def test_start_message_says_where_outputs_go(finished_run, world, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    assert cli.main(tiny_argv(world, run, "logging.tensorboard=true")) == 0
    out = capsys.readouterr().out
    assert f"go to {run}" in out and f"tensorboard --logdir {run / 'tensorboard'}" in out


# ---------------------------------------------------------------------------------------------
# SIGKILL at random moments, resumed each time, ends bit-identical to an uninterrupted run.


def _weights(path: Path) -> dict[str, torch.Tensor]:
    payload = ckpt.load_checkpoint(path)
    tensors = {f"model.{k}": v for k, v in payload["model"].items()}
    tensors.update({f"teacher.{k}": v for k, v in payload["teacher"].items()})
    for index, state in payload["optimizer"]["state"].items():
        tensors.update({f"optimizer.{index}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return tensors


@pytest.mark.slow
def test_random_sigkills_and_resumes_end_bit_identical(world, tmp_path):
    iterations = 40
    extra = (f"optim.iterations={iterations}", "checkpoint.keep_last=2")
    argv = tiny_argv(world, tmp_path / "killed", *extra)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(2024)
    killed_dir = tmp_path / "killed"
    kills = 0
    for _ in range(10):
        process = subprocess.Popen([sys.executable, "-m", "cordaseg.cli", *argv], cwd=tmp_path, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        logged = len(read_metrics(killed_dir, "train"))
        target = logged + int(rng.integers(0, 2))  # 0: during start-up or the first iteration
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline and \
                len(read_metrics(killed_dir, "train")) < target:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.0, 0.05)))  # anywhere inside the next iteration or save
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        stderr = process.communicate()[1].decode()
        assert process.returncode in (0, -signal.SIGKILL), stderr
        if process.returncode == 0:
            break
    assert kills == 10  # a few iterations a kill at most: the run never finishes before
    final = subprocess.run([sys.executable, "-m", "cordaseg.cli", *argv], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr

    assert cli.main(tiny_argv(world, tmp_path / "straight", *extra)) == 0
    ours = _weights(killed_dir / ckpt.checkpoint_name(iterations))
    theirs = _weights(tmp_path / "straight" / ckpt.checkpoint_name(iterations))
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
    assert [r["iteration"] for r in read_metrics(killed_dir, "train")] == list(range(1, iterations + 1))
    assert not [p.name for p in killed_dir.iterdir() if p.name.endswith(".tmp")]

