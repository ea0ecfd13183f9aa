"""argparse value types shared by the commands (argparse only: ``--help`` imports nothing heavy)."""

from __future__ import annotations

import argparse

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed and numpy's default_rng take a signed 64-bit seed
ALLOW_OUTSIDE_HELP = ("read files that the input names outside its own folder (absolute paths, '..', links leading "
                      "out); refused otherwise")  # fmt: skip


def seed(text: str) -> int:
    """A random seed: a whole number from 0 to 2^63 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is not a seed from 0 to 2^63 - 1")
    return value
