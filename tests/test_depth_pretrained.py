"""Depth from a pretrained transformers model: loading, each encoding through the dataset loader,
scale-and-shift alignment (fixed, median, stereo, camera height), resuming, and comparing trees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cordaseg.cli import main
from cordaseg.data import formats
from cordaseg.data.datasets import DatasetConfig, build_dataset, find_samples, read_depth
from cordaseg.data.synth import generate_tree
from cordaseg.depth import export as export_module
from cordaseg.depth.align import FAR_DEPTH_M, Alignment, fit_scale_shift, stereo_inverse_depth
from cordaseg.depth.evaluate import compare_depth_trees
from cordaseg.depth.export import (
    export_jobs,
    export_pretrained_depth,
    frame_ground_alignment,
    link_tree,
    read_depth_file,
    read_depth_m,
    read_ground_camera,
    run_export,
    state_path,
)
from cordaseg.depth.pretrained import (
    PretrainedDepthModel,
    import_transformers,
    load_pretrained_depth,
    model_output_kind,
)
from cordaseg.errors import CordasegError

transformers = pytest.importorskip("transformers")

SIZE = (64, 32)  # (W, H) of the generated frames
# Where each format's files live in a tree, and how the dataset loader is asked for them.
DATASETS = {
    "gta-disparity": ("gta5", "native", "disparity"),
    "synthia-depth": ("synthia", "native", "synthia"),
    "stereo-mat": ("cityscapes", "stereo", "stereo"),
    "cityscapes-mono": ("cityscapes", "mono", "mono"),
}


def _tiny_depth_anything(path, kind: str = "relative", processor: bool = True) -> None:
    """A randomly initialised Depth Anything of ~35k parameters, saved like a downloaded model.
    Weights are redrawn larger than the default init so that the output varies across the image."""
    torch.manual_seed(0)
    backbone = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                                         patch_size=14, image_size=56, out_indices=[1, 2, 3, 4],
                                         reshape_hidden_states=False)
    config = transformers.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16,
                                              neck_hidden_sizes=[4, 8, 8, 16], fusion_hidden_size=8,
                                              head_hidden_size=4, patch_size=14, depth_estimation_type=kind,
                                              max_depth=80)
    model = transformers.DepthAnythingForDepthEstimation(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.head.conv3.bias.fill_(2.0)  # positive disparity almost everywhere
    model.save_pretrained(path)
    if processor:
        transformers.DPTImageProcessor(
            size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    _tiny_depth_anything(root / "relative")
    _tiny_depth_anything(root / "metric", kind="metric", processor=False)
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("trees")
    assert main(["data", "synth", "--format", "gta5", "--out", str(root / "gta5"), "--num", "3",
                 "--size", f"{SIZE[0]}x{SIZE[1]}"]) == 0
    generate_tree("synthia", root / "synthia", 3, size=SIZE, seed=1)
    generate_tree("cityscapes", root / "cityscapes", 3, size=SIZE, seed=2, splits=("train",))
    generate_tree("cityscapes", root / "stereo", 3, size=(192, 96), seed=3, splits=("train",), depth="stereo")
    return root


def _tree(trees, fmt: str):
    return trees / {"gta5": "gta5", "synthia": "synthia", "cityscapes": "cityscapes"}[DATASETS[fmt][0]]


def _raw_predictions(model_dir, images, size=None) -> list[np.ndarray]:
    model = load_pretrained_depth(model_dir, size=size)
    rgbs = [formats.read_image_rgb(p) for p in images]
    return [model.predict([model.prepare(rgb)], [rgb.shape[:2]])[0] for rgb in rgbs]  # one at a time


# ---------------------------------------------------------------------------------------------
# Loading


def test_output_kind_from_the_config():
    assert model_output_kind(transformers.DepthAnythingConfig()) == "relative"
    assert model_output_kind(transformers.DepthAnythingConfig(depth_estimation_type="metric")) == "metric"
    assert model_output_kind(transformers.DPTConfig()) == "relative"
    assert model_output_kind(transformers.GLPNConfig()) == "metric"
    assert model_output_kind(transformers.BertConfig()) is None


def test_loading_by_path(models):
    relative = load_pretrained_depth(models / "relative")
    assert relative.output == "relative" and relative.processor is not None and relative.model_type == "depth_anything"
    rgb = np.random.default_rng(0).integers(0, 256, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8)
    (raw,) = relative.predict([relative.prepare(rgb)], [rgb.shape[:2]])
    assert raw.shape == rgb.shape[:2] and raw.dtype == np.float64 and np.ptp(raw) > 0
    # No image processor in the folder: Depth Anything's normalisation, 518 px high, multiple of 14.
    metric = load_pretrained_depth(models / "metric")
    assert metric.output == "metric" and metric.processor is None
    assert tuple(metric.prepare(rgb).shape) == (1, 3, 518, 1036)
    assert load_pretrained_depth(models / "metric", output="relative").output == "relative"


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_unloadable_folders_give_one_line(models, trees, tmp_path, capsys):
    export = ["depth", "export", "--data", str(trees / "gta5"), "--format", "gta-disparity", "--quiet", "--model"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: not a transformers model folder" in _one_line_error(capsys, [*export, str(empty)])
    text_model = tmp_path / "bert"
    transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                            intermediate_size=8).save_pretrained(text_model)
    err = _one_line_error(capsys, [*export, str(text_model)])
    assert f"{text_model}: not a depth-estimation model transformers can load" in err
    no_weights = tmp_path / "no_weights"
    load_pretrained_depth(models / "relative").model.config.save_pretrained(no_weights)
    assert f"{no_weights}: not a depth-estimation model" in _one_line_error(capsys, [*export, str(no_weights)])
    assert "not found" in _one_line_error(capsys, [*export, str(tmp_path / "missing")])


def test_missing_transformers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(CordasegError, match=r"pip install 'cordaseg\[depth\]'"):
        import_transformers()


# ---------------------------------------------------------------------------------------------
# Encodings


@pytest.mark.parametrize("fmt", list(DATASETS))
def test_each_encoding_is_read_by_the_dataset_loader(models, trees, tmp_path, fmt):
    dataset, depth, kind = DATASETS[fmt]
    data = _tree(trees, fmt)
    out = link_tree(data, tmp_path / "out", replace=("depth", "disparity", "Depth"))
    scale, shift = 0.002, 0.001  # 1/Z = scale * p + shift
    summary = export_pretrained_depth(models / "relative", data, fmt, out_root=out, scale=scale, shift=shift,
                                      batch_size=1, workers=1, device="cpu", progress=False)
    assert summary.files == 3 and summary.skipped == 0 and summary.metric
    cfg = DatasetConfig(format=dataset, root=str(out), depth=depth, resize_scale=1.0, crop=None)
    records = find_samples(cfg)
    assert len(records) == 3 and all(r.depth.is_file() for r in records)
    expected_m = [Alignment("disparity", scale, shift).depth_m(raw)
                  for raw in _raw_predictions(models / "relative", [r.image for r in records])]
    for record, depth_m in zip(records, expected_m):
        decoded = read_depth(kind, record.depth)  # what `cordaseg train` reads
        np.testing.assert_array_equal(decoded, read_depth_file(record.depth, fmt))
        # The quantisation of each encoding, plus float32 rounding.
        if fmt in ("gta-disparity", "cityscapes-mono"):  # the 16-bit code's range: 2.54 m to 652 m
            expected = np.clip(formats.depth_value_from_metres(depth_m), 1 + 1 / 256, 1 + 65535 / 256)
            tolerance = 0.5 / 256 + 1e-6 * expected
        else:
            clipped = np.clip(depth_m, 0.1, FAR_DEPTH_M)
            expected = formats.depth_value_from_metres(clipped)
            tolerance = expected * ((0.005 / clipped if fmt == "synthia-depth" else 0.0) + 1e-6)
        assert np.all(np.abs(decoded - expected) <= tolerance)
        assert np.all(decoded > formats.INVALID_DEPTH)
    item = build_dataset(cfg, train=True)[0]
    assert item["depth"].shape == (SIZE[1], SIZE[0]) and torch.all(item["depth"] > 1.0)
    if fmt == "synthia-depth":  # the three channels are equal, so channel-averaging readers agree
        bgr = __import__("cv2").imread(str(records[0].depth), -1)
        assert bgr.shape[2] == 3 and np.all(bgr[..., 0] == bgr[..., 2]) and np.all(bgr[..., 1] == bgr[..., 2])


def test_batches_and_threads_do_not_change_the_files(models, trees, tmp_path):
    data = trees / "gta5"
    export_pretrained_depth(models / "relative", data, "gta-disparity", out_root=tmp_path / "a", batch_size=1,
                            workers=0, device="cpu", progress=False)
    export_pretrained_depth(models / "relative", data, "gta-disparity", out_root=tmp_path / "b", batch_size=3,
                            workers=2, device="cpu", progress=False)
    for a in sorted((tmp_path / "a" / "disparity").glob("*.png")):
        b = tmp_path / "b" / "disparity" / a.name
        assert np.abs(formats.read_uint16_png(a).astype(int) - formats.read_uint16_png(b).astype(int)).max() <= 1


def test_metric_model_is_written_as_is(models, trees, tmp_path):
    data = trees / "cityscapes"
    size = (56, 28)  # instead of the default 518 pixels high, to keep the test fast
    summary = export_pretrained_depth(models / "metric", data, "stereo-mat", out_root=tmp_path, size=size,
                                      batch_size=1, device="cpu", progress=False)
    assert summary.metric and summary.scale == 1.0 and summary.alignment == "depth times 1"
    jobs = export_jobs(data, "stereo-mat", tmp_path)
    for job, raw in zip(jobs, _raw_predictions(models / "metric", [job.image for job in jobs], size)):
        np.testing.assert_allclose(formats.read_stereo_depth_mat(job.output), np.clip(raw, 0.1, 655.35), rtol=1e-6)
    with pytest.raises(CordasegError, match="--shift applies to relative disparity only"):
        export_pretrained_depth(models / "metric", data, "stereo-mat", out_root=tmp_path, shift=0.1,
                                device="cpu", progress=False)


def test_relative_disparity_without_stereo_or_scale_is_refused(models, trees, tmp_path):
    with pytest.raises(CordasegError, match="synthia-depth stores metric depth .* needs --scale"):
        export_pretrained_depth(models / "relative", trees / "synthia", "synthia-depth", out_root=tmp_path,
                                device="cpu", progress=False)


# ---------------------------------------------------------------------------------------------
# Alignment


def test_scale_and_shift_are_recovered_from_synthetic_disparity():
    rng = np.random.default_rng(0)
    disparity = rng.uniform(0.1, 20.0, size=(60, 80))
    scale, shift = 0.0137, 0.0042
    inverse_depth = scale * disparity + shift
    assert fit_scale_shift(disparity, inverse_depth) == pytest.approx((scale, shift), abs=1e-12)
    # Wrong stereo matches on 5% of the pixels are dropped by the refit; a mask leaves out the rest.
    noisy = inverse_depth.copy()
    wrong = rng.random(noisy.shape) < 0.05
    noisy[wrong] += rng.uniform(0.5, 2.0, size=wrong.sum())
    mask = np.ones_like(noisy, dtype=bool)
    mask[:, :4] = False
    noisy[:, :4] = np.nan
    fitted = fit_scale_shift(disparity, noisy, mask)
    assert fitted[0] == pytest.approx(scale, abs=1e-4) and fitted[1] == pytest.approx(shift, abs=1e-4)
    depth_m = Alignment("disparity", *fitted).depth_m(disparity)
    np.testing.assert_allclose(depth_m, 1.0 / inverse_depth, rtol=1e-4)
    # Disparity at or below zero (the sky) is the farthest depth every encoding keeps valid.
    far = Alignment("disparity", 1.0).depth_m(np.array([0.0, -1.0]))
    assert np.all(far == FAR_DEPTH_M) and np.all(formats.depth_value_from_metres(far) > formats.INVALID_DEPTH)
    with pytest.raises(ValueError, match="constant"):
        fit_scale_shift(np.ones(10), np.arange(10.0))


def test_stereo_alignment_recovers_metric_depth(trees, tmp_path):
    tree = trees / "stereo"
    jobs = export_jobs(tree, "stereo-mat")
    truth = {job.image: formats.read_stereo_depth_mat(job.output) for job in jobs}
    by_pixels = {formats.read_image_rgb(image).tobytes(): depth for image, depth in truth.items()}
    scale, shift = 0.05, 0.004

    class Oracle:  # a relative model whose disparity is exactly (1/Z - shift) / scale; 0 (far) in the sky
        def prepare(self, rgb):
            return by_pixels[rgb.tobytes()]

        def batch_key(self, inputs):
            return None

        def predict(self, inputs, shapes):
            return [np.where(d > 0, (1.0 / np.where(d > 0, d, 1.0) - shift) / scale, 0.0) for d in inputs]

    out = tmp_path / "out"
    summary = run_export(Oracle(), "relative", export_jobs(tree, "stereo-mat", out), "stereo-mat", out, "train",
                         {"model": "oracle"}, progress=False)
    assert summary.metric and "stereo fit per frame" in summary.alignment and "own fit on 3 of 3" in summary.alignment
    assert summary.scale == pytest.approx(scale, rel=0.05) and summary.shift == pytest.approx(shift, abs=2e-3)
    # The stereo matcher on its own: confident where textured, a few per cent off.
    left = formats.read_image_rgb(jobs[0].image)
    right = formats.read_image_rgb(jobs[0].right)
    camera = formats.read_camera_json(jobs[0].camera)
    inverse, confident = stereo_inverse_depth(left, right, camera["fx"], camera["baseline"])
    true_inverse = 1.0 / np.where(truth[jobs[0].image] > 0, truth[jobs[0].image], np.inf)
    matched = confident & (true_inverse > 0)
    assert matched.mean() > 0.3
    assert np.median(np.abs(inverse[matched] / true_inverse[matched] - 1)) < 0.05
    comparison = compare_depth_trees(out, tree, "stereo-mat", frames=0)
    assert comparison.errors["none"].summary()["abs_rel"] < 0.05


def test_camera_height_alignment_from_the_command_line(models, trees, tmp_path, monkeypatch, capsys):
    """``--align camera-height`` on a Cityscapes tree with the tiny model; the .mat files read back
    through the dataset loader. The random model sees no road, so the disparity of one (affine in
    the inverse depth of the road under the tree's camera files) is added to its output."""
    data = trees / "cityscapes"
    out = link_tree(data, tmp_path / "out")
    jobs = export_jobs(data, "stereo-mat", out)
    cameras = {job.image.name: read_ground_camera(job.camera, SIZE[::-1]) for job in jobs}  # extrinsic.z of the files
    road = next(iter(cameras.values())).inverse_depth(SIZE[1])  # the frames share one camera
    road_disparity = np.where(road > 0, (road - 0.004) / 0.002, 0.0)[:, None]
    original = PretrainedDepthModel.predict

    def predict_with_road(self, inputs, shapes):
        return [raw + road_disparity for raw in original(self, inputs, shapes)]

    monkeypatch.setattr(PretrainedDepthModel, "predict", predict_with_road)
    assert main(["depth", "export", "--model", str(models / "relative"), "--data", str(data), "--out", str(out),
                 "--format", "stereo-mat", "--align", "camera-height", "--batch-size", "1", "--device", "cpu",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 stereo-mat files" in printed and "camera-height fit per frame (each camera file's height" in printed
    fallback = Alignment(**__import__("json").loads(state_path(out, "stereo-mat", "train").read_text())["alignment"])
    assert fallback.kind == "disparity" and fallback.scale > 0
    records = find_samples(DatasetConfig(format="cityscapes", root=str(out), depth="stereo", resize_scale=1.0,
                                         crop=None))
    assert len(records) == 3
    raws = _raw_predictions(models / "relative", [r.image for r in records])
    for record, raw in zip(records, raws):
        alignment = frame_ground_alignment(raw, cameras[record.image.name]) or fallback
        expected = formats.depth_value_from_metres(np.clip(alignment.depth_m(raw), 0.1, FAR_DEPTH_M))
        decoded = read_depth("stereo", record.depth)  # what `cordaseg train` reads
        np.testing.assert_allclose(decoded, expected, rtol=1e-4)
    # Misuse is one line: another dataset, or the height without the alignment that uses it.
    err = _one_line_error(capsys, ["depth", "export", "--model", str(models / "relative"), "--data",
                                   str(trees / "gta5"), "--format", "gta-disparity", "--align", "camera-height",
                                   "--quiet"])
    assert "--align camera-height needs a Cityscapes tree" in err
    err = _one_line_error(capsys, ["depth", "export", "--model", str(models / "relative"), "--data", str(data),
                                   "--out", str(tmp_path / "other"), "--format", "stereo-mat", "--camera-height", "1.2",
                                   "--quiet"])
    assert "--camera-height applies to --align camera-height only" in err


# ---------------------------------------------------------------------------------------------
# Resuming


def test_interrupted_export_resumes(models, trees, tmp_path, monkeypatch):
    data = trees / "cityscapes"
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    export_pretrained_depth(models / "relative", data, "cityscapes-mono", out_root=whole, batch_size=1,
                            workers=0, device="cpu", progress=False)
    written = []
    original = export_module.write_depth_file

    def fail_on_third(path, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # as from Ctrl-C, in the middle of the export
        written.append(original(path, *args, **kwargs))
        return written[-1]

    monkeypatch.setattr(export_module, "write_depth_file", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        export_pretrained_depth(models / "relative", data, "cityscapes-mono", out_root=resumed, batch_size=1,
                                workers=0, device="cpu", progress=False)
    monkeypatch.setattr(export_module, "write_depth_file", original)
    files = sorted(resumed.glob("disparity/train/*/*"))
    assert files == sorted(written) and len(files) == 2  # complete files only, no temporary ones
    stamps = {path: path.stat().st_mtime_ns for path in files}
    summary = export_pretrained_depth(models / "relative", data, "cityscapes-mono", out_root=resumed,
                                      batch_size=1, workers=0, device="cpu", progress=False)
    assert summary.files == 3 and summary.skipped == 2
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in stamps.items())
    names = sorted(p.relative_to(whole) for p in whole.glob("disparity/train/*/*"))
    assert names == sorted(p.relative_to(resumed) for p in resumed.glob("disparity/train/*/*"))
    for name in names:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes()
    # Other options are another export: everything is rewritten.
    again = export_pretrained_depth(models / "relative", data, "cityscapes-mono", out_root=resumed,
                                    median_depth_m=20.0, device="cpu", progress=False)
    assert again.skipped == 0


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    original = formats.write_uint16_png

    def write_then_fail(path, array):
        original(path, array)
        raise OSError("disk full")

    monkeypatch.setattr(formats, "write_uint16_png", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export_module.write_depth_file(tmp_path / "d.png", np.full((4, 4), 10.0), "gta-disparity")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Checking an exported tree against a reference


def test_check_compares_an_export_with_the_reference(models, trees, tmp_path, capsys):
    data = trees / "cityscapes"
    out = tmp_path / "out"
    assert main(["depth", "export", "--model", str(models / "relative"), "--data", str(data), "--out", str(out),
                 "--format", "cityscapes-mono", "--device", "cpu", "--quiet"]) == 0
    assert "wrote 3 cityscapes-mono files" in capsys.readouterr().out
    assert main(["depth", "check", "--root", str(out), "--reference", str(data), "--format", "cityscapes-mono",
                 "--reference-format", "stereo-mat"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "3 frames" in lines[0] and [line.split()[0] for line in lines[1:]] == ["none", "median", "scale-shift"]
    # A tree against itself is perfect under every alignment.
    comparison = compare_depth_trees(data, data, "stereo-mat")
    assert all(e.summary()["abs_rel"] < 1e-6 for e in comparison.errors.values())
    depth_m = read_depth_m(export_jobs(data, "cityscapes-mono", out)[0].output, "cityscapes-mono")
    assert np.all(np.isfinite(depth_m))
