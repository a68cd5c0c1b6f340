"""Argument types shared by the `renderfarm` commands: a bad value is refused by argparse,
naming the option, before anything runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An option's type: a whole number from `low` (to `high`), refused by the option's name."""
    words = f"between {low} and {high}" if high is not None else f"{low} or more"

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {words}, not {text!r}") from None
        if n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(f"must be {words}, not {n}")
        return n

    return parse
