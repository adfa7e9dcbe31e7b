"""``cordaseg demo``: source-only, DACS, CorDA and a target oracle trained on the synthetic street
world on a CPU (fixed iteration counts, or a time budget), scored on the target val split."""

from cordaseg.demo.config import METHODS, DemoConfig
from cordaseg.demo.pipeline import run_demo
from cordaseg.demo.results import DemoResult, MethodResult

__all__ = ["METHODS", "DemoConfig", "DemoResult", "MethodResult", "run_demo"]
