"""Robust statistics for benchmark samples: pure functions, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The sample at `fraction` (0..1) of the sorted samples, linearly interpolated (numpy's default)."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is outside 0..1")
    ordered = sorted(samples)
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 0.5)


@dataclass(frozen=True)
class Summary:
    """Median and p90 rather than mean and deviation: a few slow outliers (a page-cache miss,
    another tenant's burst) move them little."""

    count: int
    median: float
    p90: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        return cls(len(samples), median(samples), percentile(samples, 0.9), min(samples), max(samples))


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator/denominator; None where it means nothing (a zero denominator)."""
    if denominator == 0:
        return None
    return numerator / denominator


def format_ratio(value: float | None) -> str:
    if value is None:
        return "—"
    if value != 0 and (value >= 100 or value < 0.01):
        return f"{value:.3g}x"
    return f"{value:.2f}x"


def format_number(value: float) -> str:
    """Three significant figures at most, never in scientific notation."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
