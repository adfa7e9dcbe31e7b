"""Argument types shared by the subcommands: sizes written ``WxH``, positive counts and
``key=value`` config overrides."""

from __future__ import annotations

import argparse
import re

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.-]*=")


def is_override(token: str) -> bool:
    """True for a ``key=value`` config override (never a path, never an option)."""
    return bool(_OVERRIDE.match(token))


def size_wxh(text: str) -> tuple[int, int]:
    """``"1024x512"`` -> (1024, 512): width first, as everywhere in the project's configs."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x512 (W x H), got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
