"""Report pictures: heat map, IoU bar chart, sample panels, and the colour helpers."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cordaseg.data.labels import CLASS_NAMES, IGNORE_INDEX, PALETTE
from cordaseg.evaluation.evaluate import EvalResult, EvalSample
from cordaseg.evaluation.metrics import segmentation_scores
from cordaseg.evaluation.report import (
    CORRECT_RGB,
    IGNORED_RGB,
    WRONG_RGB,
    apply_colormap,
    colorize_depth,
    confusion_heatmap,
    error_map,
    heatmap_origin,
    iou_bar_chart,
    overlay,
    sample_panel,
    write_report,
)


def _result(with_samples: int = 2) -> EvalResult:
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 50, size=(19, 19)) + np.diag(np.full(19, 500))
    confusion[9] = 0
    confusion[:, 9] = 0  # terrain never occurs: its IoU is undefined
    scores = segmentation_scores(confusion)
    samples = []
    for i in range(with_samples):
        label = rng.integers(0, 19, size=(32, 64)).astype(np.uint8)
        label[:4] = IGNORE_INDEX
        samples.append(EvalSample(
            name=f"city/frame {i}", image=rng.integers(0, 255, size=(16, 32, 3), dtype=np.uint8),
            label=label, prediction=rng.integers(0, 19, size=(32, 64)).astype(np.uint8),
            depth=rng.random((32, 64)).astype(np.float32) if i == 0 else None))
    return EvalResult(confusion=scores.confusion, iou=scores.iou, miou=scores.miou,
                      pixel_accuracy=scores.pixel_accuracy, depth={}, num_images=2, samples=samples)


def test_error_map_colours():
    label = np.array([[0, 1, IGNORE_INDEX, 19]], dtype=np.uint8)
    prediction = np.array([[0, 2, 3, 19]], dtype=np.uint8)
    out = error_map(label, prediction)
    assert [tuple(p) for p in out[0]] == [CORRECT_RGB, WRONG_RGB, IGNORED_RGB, IGNORED_RGB]


def test_colorize_depth_and_overlay():
    depth = np.linspace(1, 5, 100, dtype=np.float32).reshape(10, 10)
    valid = np.ones((10, 10), dtype=bool)
    valid[0, 0] = False
    rgb = colorize_depth(depth, valid)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 0)
    assert rgb[-1, -1].astype(int).sum() > rgb[0, 5].astype(int).sum()  # larger values are brighter
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    colour = np.full((2, 2, 3), 200, dtype=np.uint8)
    assert (overlay(image, colour, alpha=0.25) == 125).all()


def test_heatmap_diagonal_cells_follow_the_row_normalised_values():
    confusion = np.diag(np.arange(1, 20)) * 10
    confusion[0, 1] = 10  # row 0: 50% correct, 50% predicted as class 1
    cell = 22
    picture = np.asarray(confusion_heatmap(confusion, CLASS_NAMES, cell=cell))
    left, top = heatmap_origin(CLASS_NAMES)
    assert picture.shape[0] >= top + 19 * cell and picture.shape[1] >= left + 19 * cell

    def colour(row: int, column: int) -> tuple[int, ...]:
        # a corner pixel of the cell: the percentage is written in its middle
        return tuple(picture[top + row * cell + 1, left + column * cell + 1])

    def colormap(value: float) -> tuple[int, ...]:
        return tuple(apply_colormap(np.array([[value]]))[0, 0])

    assert colour(0, 0) == colormap(0.5) and colour(0, 1) == colormap(0.5)  # row 0 is split in half
    for c in range(1, 19):
        assert colour(c, c) == colormap(1.0), c  # every other row: all on the diagonal
    assert colour(1, 0) == colormap(0.0) and colormap(0.5) != colormap(1.0) != colormap(0.0)


def test_bar_chart_uses_the_class_palette():
    result = _result(0)
    picture = np.asarray(iou_bar_chart(result.iou, result.class_names, result.miou))
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert tuple(PALETTE[0]) in colours and tuple(PALETTE[18]) in colours
    assert tuple(PALETTE[9]) not in colours  # terrain has no IoU: no bar


def test_panel_has_one_tile_per_view():
    result = _result(2)
    with_depth = sample_panel(result.samples[0], height=64)
    without_depth = sample_panel(result.samples[1], height=64)
    assert with_depth.size[0] == 5 * 128 and without_depth.size[0] == 4 * 128
    assert with_depth.size[1] == without_depth.size[1] > 64


def test_write_report_writes_readable_pngs(tmp_path):
    paths = write_report(_result(2), tmp_path / "report")
    names = sorted(p.relative_to(tmp_path / "report").as_posix() for p in paths)
    assert names == ["class_iou.png", "confusion_matrix.png", "samples/000_city_frame_0.png", "samples/001_city_frame_1.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) > 30
