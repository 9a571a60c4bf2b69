"""Checks on trainer options: job hyperparameters arrive as JSON, so each option's type is
checked as well as its range, and a bad one is a ConfigError naming it."""

from __future__ import annotations

import numbers
import reprlib

import numpy as np

from bitfleet.errors import ConfigError


def is_whole(value: object) -> bool:
    """An integer (Python's or numpy's), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def require_type(name: str, value: object, integral: bool) -> None:
    """Refuse a value of the wrong type: JSON ``true``, ``2.5`` or ``"5"`` must not pass for
    an integer option, nor a bool or a string for a number."""
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "a whole number" if integral else "a number"
        raise ConfigError(f"{name} must be {expected}, got {reprlib.repr(value)}")


def require_int(name: str, value: int, low: int, high: int) -> None:
    """An integer option within ``[low, high]``, else a ConfigError naming the bound."""
    require_type(name, value, integral=True)
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, got {value}")
    if value > high:
        raise ConfigError(f"{name} must be at most {high}, got {value}")
