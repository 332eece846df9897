"""argparse value types with a lower bound: the value or a one-line refusal naming it."""
from __future__ import annotations

import argparse

import pytest

from nnunet_plus.cli_types import float_at_least, int_at_least


def test_values_at_or_above_the_bound_pass():
    assert int_at_least(0)("0") == 0 and int_at_least(1)("7") == 7
    assert float_at_least(0.0)("0") == 0.0 and float_at_least(0.5)("2.5") == 2.5


@pytest.mark.parametrize("parse, text, message", [
    (int_at_least(1), "0", "'0' must be >= 1"),
    (int_at_least(0), "-1", "'-1' must be >= 0"),
    (int_at_least(0), "1.5", "'1.5' is not an integer"),
    (float_at_least(0.0), "-0.1", "'-0.1' must be >= 0"),
    (float_at_least(0.0), "nan", "'nan' must be >= 0"),
    (float_at_least(0.0), "x", "'x' is not a number"),
])
def test_bad_values_are_refused_in_one_line(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)
