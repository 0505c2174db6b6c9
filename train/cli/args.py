"""Argument types for the ``x2ctclip`` sub-commands: numbers checked at parse time.

Each factory returns a callable for ``argparse``'s ``type=``: it converts the string and raises
``argparse.ArgumentTypeError`` for an out-of-range value, so argparse prints one line
``x2ctclip CMD: error: argument --flag: ...`` and exits with status 2 before any file is read or model loaded (a
``--n-bins 0`` used to end in a ``ZeroDivisionError`` after the model had been loaded).

Example::

    parser.add_argument("--n-bins", type=int_at_least(1), default=15)
    parser.add_argument("--valid-fraction", type=float_between(0, 1, low_open=True, high_open=True), default=0.2)
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

__all__ = ["float_at_least", "float_between", "int_at_least", "int_between", "non_negative_int", "positive_int"]


def _int(value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def _float(value: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An ``int`` ``>= minimum``."""

    def parse(value: str) -> int:
        number = _int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {number}")
        return number

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in some messages
    return parse


def int_between(minimum: int, maximum: int) -> Callable[[str], int]:
    """An ``int`` in ``[minimum, maximum]``."""

    def parse(value: str) -> int:
        number = _int(value)
        if not minimum <= number <= maximum:
            raise argparse.ArgumentTypeError(f"must be an integer in [{minimum}, {maximum}], got {number}")
        return number

    parse.__name__ = f"integer in [{minimum}, {maximum}]"
    return parse


def float_at_least(minimum: float, *, open_: bool = False) -> Callable[[str], float]:
    """A finite ``float`` ``>= minimum`` (``> minimum`` with ``open_=True``)."""

    def parse(value: str) -> float:
        number = _float(value)
        if number < minimum or (open_ and number == minimum):
            raise argparse.ArgumentTypeError(f"must be a number {'>' if open_ else '>='} {minimum}, got {number}")
        return number

    parse.__name__ = f"number {'>' if open_ else '>='} {minimum}"
    return parse


def float_between(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """A finite ``float`` in the interval from ``low`` to ``high`` (each end open or closed)."""
    text = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def parse(value: str) -> float:
        number = _float(value)
        if number < low or number > high or (low_open and number == low) or (high_open and number == high):
            raise argparse.ArgumentTypeError(f"must be a number in {text}, got {number}")
        return number

    parse.__name__ = f"number in {text}"
    return parse


#: ``--batch-size``, ``--epochs``, ``--n-bins``, ...: at least 1.
positive_int = int_at_least(1)
#: ``--n-bootstrap``, ``--seed``, ``--workers 0`` (in-process): at least 0.
non_negative_int = int_at_least(0)
