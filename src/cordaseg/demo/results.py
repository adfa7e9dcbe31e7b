"""What the demo produces: one :class:`MethodResult` per trained method, the :class:`DemoResult`
of a whole demo, and their numbers as JSON (:func:`summary`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cordaseg.evaluation.evaluate import EvalResult


@dataclass
class MethodResult:
    """One trained method, scored on the target val split."""

    method: str
    """One of :data:`cordaseg.demo.config.METHODS`, or the name of a variant
    (:func:`cordaseg.demo.pipeline.train_variant`)."""
    iterations: int
    """Training iterations run."""
    seconds_per_iteration: float
    """Measured training speed: the run's wall-clock time (setup included) over its iterations."""
    train_seconds: float
    """Wall-clock time of the training run (setup included)."""
    evaluation: EvalResult
    """Scores and kept samples on the target val split."""
    checkpoint: Path | None = None
    """The run's last training checkpoint (the warm start of the runs that continue from it)."""
    fingerprint: str = ""
    """Hash of everything that determines the run (:func:`cordaseg.demo.pipeline.run_fingerprint`)."""
    resumed: bool = False
    """Read back from the run folder's ``scores.json`` instead of trained (its samples are empty)."""

    @property
    def miou(self) -> float:
        return float(self.evaluation.miou[19])


@dataclass
class DemoResult:
    """What :func:`cordaseg.demo.pipeline.run_demo` produced."""

    out_dir: Path
    """The output folder (world/, runs/, report.md, report.png, results.json)."""
    methods: dict[str, MethodResult]
    """Method name -> its result, in :data:`cordaseg.demo.config.METHODS` order."""
    seconds: float
    """Wall-clock time of the whole demo."""
    report_md: Path
    report_png: Path
    results_json: Path
    threads: int = 0
    """torch intra-op threads the runs used."""


def summary(methods: dict[str, MethodResult], seconds: float) -> dict[str, Any]:
    """JSON-safe numbers of a demo: per method iterations, timings, mIoU and per-class IoU."""
    def number(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 2)

    return {
        "seconds": round(seconds, 1),
        "methods": {
            name: {
                "iterations": r.iterations,
                "seconds_per_iteration": round(r.seconds_per_iteration, 4),
                "train_seconds": round(r.train_seconds, 1),
                "miou": number(r.miou),
                "iou": {c: number(v) for c, v in zip(r.evaluation.class_names, r.evaluation.iou)},
                "depth_bins": {b.name: number(b.miou[19]) for b in r.evaluation.depth_bins},
            }
            for name, r in methods.items()
        },
    }
