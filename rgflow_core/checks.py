"""Argument checks shared by the core's public functions.

Each raises `UsageError` naming the argument as the Python API spells it; the CLI maps
that name to its flag. Numbers must be finite: NaN slips through every `<` and `>`
comparison, so it is refused explicitly.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from rgflow_core.errors import UsageError


def check_int(name: str, value: int, lo: int, hi: int | None = None) -> int:
    """`value` if it is an integer in [lo, hi] (hi None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise UsageError(f"must be an integer, got {value!r}", name)
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise UsageError(f"must be {bounds}, got {value}", name)
    return int(value)


def check_float(
    name: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
) -> float:
    """`value` if it is a finite number in [lo, hi] ((lo, hi] with `lo_open`)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise UsageError(f"must be a finite number, got {value!r}", name)
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if too_low or (hi is not None and value > hi):
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
        right = "" if hi is None else f"<= {hi:g}"
        raise UsageError(f"must be {' and '.join(filter(None, (left, right)))}, got {value}", name)
    return float(value)


def check_positive(name: str, value: float, hi: float | None = None) -> float:
    """`value` if it is finite, > 0 and at most `hi`."""
    return check_float(name, value, 0.0, hi, lo_open=True)


def check_seed(name: str, value: int) -> int:
    """A seed for `torch.Generator.manual_seed`: an integer in [0, 2**63 - 1]."""
    return check_int(name, value, 0, 2**63 - 1)


def check_choice(name: str, value: str, choices: object) -> str:
    """`value` if it is one of `choices` (any iterable of strings, e.g. a registry)."""
    names = list(choices)  # type: ignore[call-overload]
    if value not in names:
        raise UsageError(f"must be one of {', '.join(map(str, names))}, got {value!r}", name)
    return value
