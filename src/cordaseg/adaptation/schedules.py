"""Learning-rate schedule of the recipe (docs/method.md, "Optimiser and schedule"): polynomial decay."""

from __future__ import annotations


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float = 0.9) -> float:
    """lr_i = base_lr * (1 - i / max_iter) ** power; 0 from max_iter on."""
    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    progress = min(max(iteration, 0) / max_iter, 1.0)
    return base_lr * (1.0 - progress) ** power
