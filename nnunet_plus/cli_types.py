"""argparse value types shared by the command-line tools: numbers with a lower bound, refused in one line."""
from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["float_at_least", "int_at_least"]


def _at_least(kind: type, kind_name: str, minimum: float) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind_name}") from None
        if not value >= minimum:  # NaN included
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum:g}")
        return value
    parse.__name__ = f"{kind_name} >= {minimum:g}"
    return parse


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""
    return _at_least(int, "an integer", minimum)


def float_at_least(minimum: float) -> Callable[[str], float]:
    """argparse type: a number >= ``minimum`` (NaN refused)."""
    return _at_least(float, "a number", minimum)
