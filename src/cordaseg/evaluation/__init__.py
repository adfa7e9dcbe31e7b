"""Evaluation (docs/method.md, "Evaluation") and prediction: metrics, test-time inference, reports.

The library entry points: :func:`evaluate_segmentation` (what ``cordaseg evaluate`` and the
trainer call) and :func:`predict_files` (``cordaseg predict``).
"""

from cordaseg.evaluation.evaluate import EvalResult, evaluate_segmentation
from cordaseg.evaluation.inference import InferenceConfig
from cordaseg.evaluation.predict import PredictConfig, predict_files

__all__ = ["EvalResult", "InferenceConfig", "PredictConfig", "evaluate_segmentation", "predict_files"]
