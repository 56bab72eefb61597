"""Validation of the certification radius ε."""
import math


def check_epsilon(value, name="epsilon"):
    """ε as a float; a clear error for non-numbers, NaN, ±inf and negative values.

    Example:
    >>> check_epsilon("0.25")
    0.25
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number. Received: {name}={value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0. Received: {name}={value}")
    return value
