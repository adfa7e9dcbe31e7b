"""What the benchmark scripts share: presets filled into unset options, and the device choice."""

from __future__ import annotations

import argparse
import sys

import torch

from cordaseg.config import ConfigError
from cordaseg.runtime.device import resolve_device


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The device and network-size options both speed benchmarks take (unset = from the preset)."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto (tiny: cpu)")
    parser.add_argument("--backbone", type=int, choices=(18, 34, 50, 101), help="ResNet depth: 101 (tiny: 18)")
    parser.add_argument("--backbone-width", type=int, help="stem channels: 64 as in the paper (tiny: 16)")
    parser.add_argument("--head-width", type=int, help="task branch channels: 256 as in the paper (tiny: 32)")


def apply_preset(args: argparse.Namespace, tiny: dict, full: dict) -> argparse.Namespace:
    """Fill every option left unset (None) from the ``--tiny`` CPU preset or the full-size one."""
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def benchmark_device(args: argparse.Namespace) -> torch.device:
    """``--device auto|cpu|cuda`` -> a device (:func:`cordaseg.runtime.device.resolve_device`); set
    ``--threads``."""
    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        sys.exit(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def flags(text: str) -> bool:
    """An on/off option value: 1/true/on/yes or 0/false/off/no."""
    if text.lower() in ("1", "true", "on", "yes"):
        return True
    if text.lower() in ("0", "false", "off", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1, got {text!r}")
