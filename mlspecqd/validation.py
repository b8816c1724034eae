"""Argument checks shared by every layer. Each names the argument and raises the caller's own error type
(a ValueError subclass), so a message says what was wrong and the exception says where it was caught."""

from __future__ import annotations

import math
import numbers


def whole_number(name: str, value: object, error: type[ValueError], low: int, high: int | None = None) -> int:
    """`value` as an int when it is a whole number in [low, high] (a bool is not one); else `error`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be a whole number (got {value!r})")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise error(f"{name} must be {bounds} (got {value!r})")
    return int(value)


def finite_number(name: str, value: object, error: type[ValueError], low: float, high: float = math.inf,
                  low_open: bool = False) -> float:
    """`value` as a float when it is a finite real number in [low, high] ((low, high] with low_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise error(f"{name} must be a finite number (got {value!r})")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        interval = ("(" if low_open else "[") + f"{low:g}, " + (f"{high:g}]" if math.isfinite(high) else "inf)")
        raise error(f"{name} must be in {interval} (got {value!r})")
    return float(value)
