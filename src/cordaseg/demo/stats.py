"""Statistics of a comparison over seeds: mean and 95% t-interval per method, paired differences,
and the fraction of the domain gap a method closes.

Every method of ``benchmarks/synthetic_shift.py`` runs on the same seeds, and on each seed on the
same world from the same source-only weights. Two methods are therefore compared through their
per-seed differences (a paired comparison): what the seed changes for both (how hard its world is,
how good its warm start is) cancels, and the interval of the mean difference is much narrower than
the intervals of the two means would suggest. The interval is Student's t:
``mean +- t_{1 - (1 - confidence) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard
deviation (n - 1 in the denominator). With three seeds t is 4.30, with five 2.78.

The gap closed by a method on one seed is ``(method - source-only) / (oracle - source-only)``:
0 is no better than training on the source only, 1 is as good as training on labelled target data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its confidence interval."""

    mean: float
    """Mean of the finite values (NaN if none)."""
    half_width: float
    """Half-width of the interval (NaN with fewer than two values)."""
    n: int
    """Finite values the mean is taken over."""
    confidence: float = 0.95
    """Coverage of the interval."""

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of zero (a difference 'tells apart')."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def to_dict(self, digits: int = 4) -> dict[str, float | int | None]:
        def number(x: float) -> float | None:
            return None if math.isnan(x) else round(float(x), digits)

        return {"mean": number(self.mean), "half_width": number(self.half_width), "low": number(self.low),
                "high": number(self.high), "n": self.n, "confidence": self.confidence}

    def format(self, digits: int = 2) -> str:
        """'12.34 +- 0.56' (or '12.34' for a single value)."""
        if math.isnan(self.mean):
            return "n/a"
        if math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} +- {self.half_width:.{digits}f}"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and two-sided Student-t interval of ``values`` (NaN values are left out)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), 0, confidence)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, float("nan"), 1, confidence)
    quantile = float(stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, df=x.size - 1))
    half = quantile * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, half, int(x.size), confidence)


def differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-seed ``a - b``; NaN where either is missing (NaN or None)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} vs {len(b)} values")
    return [float("nan") if x is None or y is None else float(x) - float(y) for x, y in zip(a, b)]


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of the per-seed differences ``a - b`` and its t-interval (seeds where either is NaN are
    left out)."""
    return t_interval(differences(a, b), confidence)


def gap_closed(method: Sequence[float], source_only: Sequence[float], oracle: Sequence[float]) -> list[float]:
    """Per seed ``(method - source_only) / (oracle - source_only)``; NaN where the oracle is not
    above source-only (no gap to close)."""
    if not len(method) == len(source_only) == len(oracle):
        raise ValueError("gap closed needs one value per seed of each method")
    out = []
    for m, s, o in zip(method, source_only, oracle):
        gap = o - s
        out.append((m - s) / gap if gap > 0 else float("nan"))
    return out
