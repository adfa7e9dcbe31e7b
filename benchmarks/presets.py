"""What the benchmark scripts share: presets filled into unset options, and the device choice."""

from __future__ import annotations

import argparse
import sys

import torch


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


def resolve_device(args: argparse.Namespace) -> torch.device:
    """``--device auto|cpu|cuda`` -> a device (auto: CUDA when present); set ``--threads``."""
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
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
