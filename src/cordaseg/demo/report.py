"""The demo's report: ``report.md`` (mIoU per method, per-class IoU, the gap and what adaptation
recovered), ``report.png`` (the same figures drawn, and a grid of target val images with every
method's prediction and CorDA's depth) and ``results.json`` (the numbers); and the interval
charts of the multi-seed benchmark (:func:`interval_chart`).

Drawn with PIL and the evaluation report's colour helpers, so no plotting library is needed;
:func:`interval_chart` uses matplotlib where it is installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cordaseg.config import to_dict
from cordaseg.data.labels import colorize
from cordaseg.demo.config import METHOD_TITLES, DemoConfig
from cordaseg.demo.results import MethodResult, summary
from cordaseg.evaluation.report import BACKGROUND, TEXT, apply_colormap, colorize_depth, font

# Bar colour of each method in report.png.
METHOD_RGB = {"source_only": (150, 150, 150), "oracle": (60, 60, 60), "dacs": (70, 130, 200),
              "corda": (220, 110, 40)}
# Column order of the tables and the picture grid: the bounds first, then the adaptation methods.
REPORT_ORDER = ("source_only", "dacs", "corda", "oracle")


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1f}"


def markdown(cfg: DemoConfig, results: dict[str, MethodResult], seconds: float) -> str:
    """The text of ``report.md``."""
    order = [m for m in REPORT_ORDER if m in results]
    w = cfg.world
    lines = [
        "# cordaseg demo: synthetic street world, source -> target",
        "",
        f"World: {w.num_source} source frames (GTA5 format), {w.num_target_train} target train frames "
        f"(Cityscapes format, stereo depth), {w.num_target_val} target val frames, {w.size[0]}x{w.size[1]}, "
        f"shift {w.shift}, seed {w.seed}. Models: ResNet-{cfg.backbone_depth}, width {cfg.backbone_width}, "
        f"CorDA heads {cfg.head_width}; crops {cfg.crop[0]}x{cfg.crop[1]}, batch {cfg.batch_size}, "
        f"seed {cfg.seed}. Total time {seconds / 60:.1f} min on the CPU.",
        "",
        "DACS and CorDA start from the source-only weights. CorDA's target depth: "
        + ("the tree's stereo-matcher depth (.mat)." if cfg.target_depth == "stereo" else
           "a self-supervised stereo depth network trained here on the target pairs, exported as .mat."),
        "Scores: target val split, 19 classes, mIoU %.",
        "",
        "| method | iterations | s/iteration | training time (s) | mIoU |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for m in order:
        r = results[m]
        lines.append(f"| {METHOD_TITLES[m]} | {r.iterations} | {r.seconds_per_iteration:.3f} | "
                     f"{r.train_seconds:.0f} | {_fmt(r.miou)} |")
    lines.append("")
    if "source_only" in results and "oracle" in results:
        low, high = results["source_only"].miou, results["oracle"].miou
        lines.append(f"Domain gap (oracle - source-only): {high - low:+.1f} mIoU.")
        for m in ("dacs", "corda"):
            if m in results:
                gained = results[m].miou - low
                closed = f", {100 * gained / (high - low):.0f}% of the gap" if high - low > 0 else ""
                lines.append(f"{METHOD_TITLES[m]} vs source-only: {gained:+.1f} mIoU{closed}.")
        lines.append("")
    lines += ["## Per-class IoU (%)", "",
              "| class | " + " | ".join(METHOD_TITLES[m] for m in order) + " |",
              "| --- |" + " ---: |" * len(order)]
    class_names = results[order[0]].evaluation.class_names
    for index, name in enumerate(class_names):
        cells = " | ".join(_fmt(float(results[m].evaluation.iou[index])) for m in order)
        lines.append(f"| {name} | {cells} |")
    lines += ["", "![report](report.png)", "",
              "`report.png`: mIoU per method, per-class IoU, and target val images with the ground truth, "
              "each method's prediction and CorDA's depth (target decoder; brighter is nearer).",
              "Short CPU runs from random weights: these numbers show the pipeline and the size of the gap; "
              "`benchmarks/synthetic_shift.py` runs longer budgets over several seeds.", ""]
    return "\n".join(lines)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str) -> None:
    draw.text(xy, text, fill=TEXT, font=font())


def miou_bars(results: dict[str, MethodResult], width: int = 520) -> Image.Image:
    """Horizontal mIoU bars, one per method, with the value written after the bar."""
    order = [m for m in REPORT_ORDER if m in results]
    row, label_w, pad = 20, 110, 8
    image = Image.new("RGB", (width, pad * 2 + 16 + row * len(order)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _text(draw, (pad, pad), "target val mIoU (%)")
    bar_w = width - label_w - 60
    for i, m in enumerate(order):
        y = pad + 16 + i * row
        value = results[m].miou
        _text(draw, (pad, y + 4), METHOD_TITLES[m])
        length = 0 if math.isnan(value) else int(round(bar_w * min(max(value, 0.0), 100.0) / 100.0))
        draw.rectangle([label_w, y + 2, label_w + max(length, 1), y + row - 4], fill=METHOD_RGB[m])
        _text(draw, (label_w + length + 6, y + 4), _fmt(value))
    return image


def iou_table(results: dict[str, MethodResult], cell: tuple[int, int] = (84, 14)) -> Image.Image:
    """Per-class IoU as a table: one row per class, one column per method, shaded by the value."""
    order = [m for m in REPORT_ORDER if m in results]
    names = results[order[0]].evaluation.class_names
    label_w, (cw, ch), pad = 100, cell, 8
    image = Image.new("RGB", (pad * 2 + label_w + cw * len(order), pad * 2 + ch * (len(names) + 2)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _text(draw, (pad, pad), "per-class IoU (%)")
    for j, m in enumerate(order):
        _text(draw, (pad + label_w + j * cw + 4, pad + ch), METHOD_TITLES[m])
    for i, name in enumerate(names):
        y = pad + ch * (i + 2)
        _text(draw, (pad, y + 1), name)
        for j, m in enumerate(order):
            value = float(results[m].evaluation.iou[i])
            x = pad + label_w + j * cw
            shade = (235, 235, 235) if math.isnan(value) else \
                tuple(int(c) for c in apply_colormap(np.array([[0.35 + 0.65 * value / 100.0]]))[0, 0])
            draw.rectangle([x + 1, y, x + cw - 2, y + ch - 2], fill=shade)
            # Dark text on the light end of the colour map, light text on the dark end.
            light = not math.isnan(value) and value < 55
            draw.text((x + 4, y + 1), _fmt(value), fill=(255, 255, 255) if light else TEXT, font=font())
    return image


def prediction_grid(results: dict[str, MethodResult], height: int = 96) -> Image.Image | None:
    """Rows of target val images: image | ground truth | each method's prediction | CorDA depth."""
    order = [m for m in REPORT_ORDER if m in results]
    count = min(len(results[m].evaluation.samples) for m in order)
    if count == 0:
        return None
    first = results[order[0]].evaluation.samples
    titles = ["target image", "ground truth"] + [METHOD_TITLES[m] for m in order]
    with_depth = "corda" in results and results["corda"].evaluation.samples[0].depth is not None
    if with_depth:
        titles.append("CorDA depth")
    rows = []
    for k in range(count):
        sample = first[k]
        tiles = [sample.image, colorize(sample.label)]
        tiles += [colorize(results[m].evaluation.samples[k].prediction) for m in order]
        if with_depth:
            tiles.append(colorize_depth(results["corda"].evaluation.samples[k].depth))
        h, w = sample.label.shape
        width = int(round(w * height / h))
        tiles = [np.asarray(Image.fromarray(t).resize((width, height), Image.NEAREST)) for t in tiles]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    header = 16
    image = Image.new("RGB", (grid.shape[1], grid.shape[0] + header), BACKGROUND)
    image.paste(Image.fromarray(grid), (0, header))
    draw = ImageDraw.Draw(image)
    tile_w = grid.shape[1] // len(titles)
    for j, title in enumerate(titles):
        _text(draw, (j * tile_w + 4, 2), title)
    return image


def report_image(results: dict[str, MethodResult]) -> Image.Image:
    """The figures of report.png stacked: mIoU bars and IoU table side by side, then the grid."""
    bars, table = miou_bars(results), iou_table(results)
    grid = prediction_grid(results)
    top_w, top_h = bars.width + table.width, max(bars.height, table.height)
    width = max(top_w, grid.width if grid is not None else 0)
    image = Image.new("RGB", (width, top_h + (grid.height + 8 if grid is not None else 0)), BACKGROUND)
    image.paste(bars, (0, 0))
    image.paste(table, (bars.width, 0))
    if grid is not None:
        image.paste(grid, (0, top_h + 8))
    return image


def write_report(out_dir: str | Path, cfg: DemoConfig, results: dict[str, MethodResult],
                 seconds: float) -> tuple[Path, Path, Path]:
    """Write report.md, report.png and results.json into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text(markdown(cfg, results, seconds), encoding="utf-8")
    png = out_dir / "report.png"
    report_image(results).save(png)
    js = out_dir / "results.json"
    js.write_text(json.dumps({**summary(results, seconds), "config": to_dict(cfg)}, indent=2))
    return md, png, js


@dataclass(frozen=True)
class IntervalRow:
    """One bar of :func:`interval_chart`: a mean and its confidence interval."""

    label: str
    mean: float
    low: float
    high: float
    rgb: tuple[int, int, int] = (70, 130, 200)


def interval_chart(rows: Sequence[IntervalRow], title: str, path: str | Path, *, axis: str = "",
                   marks: Sequence[float] = (0.0,), backend: str = "auto") -> Path:
    """Horizontal bars (the means) with whiskers (the intervals), one row per entry, written as a
    PNG. ``marks`` are values drawn as vertical reference lines (e.g. 0 and 1 on a gap-closed
    axis). ``backend``: "matplotlib", "pil", or "auto" (matplotlib if it is installed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    finite = [v for r in rows for v in (r.mean, r.low, r.high) if not math.isnan(v)] + list(marks)
    lo, hi = min(finite, default=0.0), max(finite, default=1.0)
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401
            backend = "matplotlib"
        except ImportError:
            backend = "pil"
    if backend == "matplotlib":
        _interval_chart_matplotlib(rows, title, path, axis, marks, (lo, hi))
    elif backend == "pil":
        _interval_chart_pil(rows, title, axis, marks, (lo, hi)).save(path)
    else:
        raise ValueError(f"backend must be 'auto', 'matplotlib' or 'pil', got {backend!r}")
    return path


def _interval_chart_matplotlib(rows, title, path, axis, marks, limits) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    fig = Figure(figsize=(7.5, 0.9 + 0.32 * max(len(rows), 1)), dpi=110)
    ax = fig.subplots()
    y = list(range(len(rows)))[::-1]
    means = [0.0 if math.isnan(r.mean) else r.mean for r in rows]
    ax.barh(y, means, color=[tuple(c / 255 for c in r.rgb) for r in rows], height=0.6)
    for yi, r in zip(y, rows):
        if not math.isnan(r.low):
            ax.errorbar(r.mean, yi, xerr=[[r.mean - r.low], [r.high - r.mean]], color="black", capsize=3, lw=1)
    for mark in marks:
        ax.axvline(mark, color="grey", lw=0.8, ls="--")
    ax.set_yticks(y, [r.label for r in rows])
    ax.set_xlim(*limits)
    ax.set_xlabel(axis)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def _interval_chart_pil(rows, title, axis, marks, limits) -> Image.Image:
    row, label_w, pad, plot_w = 18, 200, 8, 420
    image = Image.new("RGB", (label_w + plot_w + 3 * pad, pad * 3 + 32 + row * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    lo, hi = limits

    def x(value: float) -> int:
        return label_w + int(round(plot_w * (value - lo) / (hi - lo)))

    _text(draw, (pad, pad), title)
    top = pad + 18
    bottom = top + row * len(rows)
    for mark in marks:
        draw.line([x(mark), top, x(mark), bottom], fill=(160, 160, 160))
        _text(draw, (x(mark) - 6, bottom + 2), f"{mark:g}")
    for i, r in enumerate(rows):
        y = top + i * row
        _text(draw, (pad, y + 3), r.label)
        if math.isnan(r.mean):
            _text(draw, (x(0.0) + 4, y + 3), "n/a")
            continue
        draw.rectangle([min(x(0.0), x(r.mean)), y + 3, max(x(0.0), x(r.mean)), y + row - 4], fill=r.rgb)
        if not math.isnan(r.low):
            middle = y + row // 2
            draw.line([x(r.low), middle, x(r.high), middle], fill=TEXT)
            draw.line([x(r.low), middle - 3, x(r.low), middle + 3], fill=TEXT)
            draw.line([x(r.high), middle - 3, x(r.high), middle + 3], fill=TEXT)
    _text(draw, (label_w, bottom + 14), f"{axis}   (axis {lo:.2f} .. {hi:.2f})")
    return image
