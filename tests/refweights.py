"""Reference key tables and the fixed-rule weights of tests/reference/README.md, shared by the model tests."""

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
