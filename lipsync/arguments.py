"""Command-line value types shared by the scripts (argparse `type=` functions)."""
from __future__ import annotations

import argparse


def int_or_fraction(text: str) -> int | float:
    """'20' -> 20 (a count), '0.05' -> 0.05 (a fraction): --val / --test groups, --val_check_interval."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None


def shard_spec(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n: this machine's share of a sorted list of jobs."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"shard {text}: needs 0 <= i < n")
    return index, count


def devices(text: str) -> int | str:
    """--devices: 'auto' or a count."""
    try:
        return text if text == "auto" else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of devices, got {text!r}") from None
