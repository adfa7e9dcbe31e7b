"""Reference key tables and the fixed-rule weights of tests/reference/README.md, shared by the model tests.

``python tests/refweights.py`` writes ``tests/reference/tiny_model_vectors.json``: the vectors of
the same path (rule weights through the importer, float64) on a narrow ResNet-50, recorded from
this implementation so that the default test run checks it in milliseconds; the slow test ties
the implementation to the reference's own ResNet-101 vectors.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch

REFERENCE_DIR = Path(__file__).parent / "reference"
VARIANTS = ("gta", "synthia", "noatt", "multitask")


def read_key_table(variant: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    lines = (REFERENCE_DIR / f"reference_{variant}_state_dict.tsv").read_text().splitlines()
    for line in lines[1:]:
        key, shape, kind = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
        rows.append((key, dims, kind))
    return rows


def rule_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """tests/reference/README.md, "The rule": a deterministic float64 tensor for reference key ``key``."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return torch.tensor(0, dtype=torch.long)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
    if key.endswith("running_mean") or key.endswith(".bias"):
        return torch.randn(shape, generator=g, dtype=torch.float64) * 0.1
    if len(shape) == 1:
        return 1 + torch.randn(shape, generator=g, dtype=torch.float64) * 0.1
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g, dtype=torch.float64) * math.sqrt(1 / fan_in)


def fabricate_state(variant: str) -> dict[str, torch.Tensor]:
    return {key: rule_tensor(key, shape) for key, shape, _ in read_key_table(variant)}


def reference_vectors() -> dict:
    return json.loads((REFERENCE_DIR / "model_test_vectors.json").read_text())


def reference_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 97, 129, generator=g, dtype=torch.float64) * 50


TINY_VECTORS = REFERENCE_DIR / "tiny_model_vectors.json"
TINY_SIZE = {"backbone_depth": 50, "backbone_width": 8, "head_width": 16}
"""A narrow ResNet-50: the reference's block types and projections at a fraction of the cost."""
OUTPUT_NAMES = {
    "S": "semantic", "initial_S": "semantic_initial", "D": "depth", "initial_D": "depth_initial",
    "D_src": "depth_source", "initial_D_src": "depth_source_initial",
}
"""Reference output name -> the project's."""


def tiny_state(variant: str) -> dict[str, torch.Tensor]:
    """Rule weights under the reference's names for the tiny version of ``variant``."""
    from cordaseg.models.convert import project_to_reference, reference_model_config
    from cordaseg.models.corda import build_model

    cfg = reference_model_config(variant, **TINY_SIZE)
    with torch.device("meta"):
        names = project_to_reference(build_model(cfg).state_dict(), cfg.arch)
    return {key: rule_tensor(key, tuple(value.shape)) for key, value in names.items()}


def tiny_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 33, 41, generator=g, dtype=torch.float64) * 50


def output_vectors(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Per mode (eval, train) and reference output name: shape, sum, sum of absolute values and
    two single values, the summary of tests/reference/README.md."""
    vectors = {}
    for mode in ("eval", "train"):
        model.train(mode == "train")
        with torch.no_grad():
            out = model(x)
        vectors[mode] = {
            ref: {"shape": list(value.shape), "sum": value.sum().item(), "abs_sum": value.abs().sum().item(),
                  "at_0_0_3_5": value[0, 0, 3, 5].item(), "at_1_last_-1_-1": value[1, -1, -1, -1].item()}
            for ref, name in OUTPUT_NAMES.items() if (value := getattr(out, name)) is not None
        }
    return vectors


def tiny_model(variant: str) -> torch.nn.Module:
    from cordaseg.models.checkpoint import convert_reference, load_state, model_config_of
    from cordaseg.models.corda import build_model

    payload = convert_reference(tiny_state(variant))
    model = build_model(model_config_of(payload)).double()
    load_state(model, payload["model"])
    return model


if __name__ == "__main__":
    vectors = {variant: output_vectors(tiny_model(variant), tiny_input()) for variant in VARIANTS}
    TINY_VECTORS.write_text(json.dumps({"size": TINY_SIZE, "variants": vectors}, indent=1) + "\n")
    print(f"wrote {TINY_VECTORS}")
