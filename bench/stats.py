"""Small statistics for the benchmark report (no numpy needed)."""

from __future__ import annotations

import statistics


def percentile(values: list[float], pct: float) -> float:
    """The ``pct``-th percentile by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def spread(values: list[float]) -> str:
    """``min–max`` of the values, for the ratio column."""
    if not values:
        return "-"
    return f"{min(values):.3f}–{max(values):.3f}"
