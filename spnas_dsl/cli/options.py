"""Argument types shared by every subcommand: one mistake, one message, exit status 2.

Used as ``argparse`` ``type=`` callables, so a bad value is reported by argparse itself
(``spnasc search: error: argument --batch-size: must be an integer >= 1, got '0'``, exit 2)
before anything is loaded, with the same wording in every command::

    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--out", type=out_folder)

Floats must be finite (``nan``, ``inf`` and ``1e999`` are refused).
"""

from __future__ import annotations

import argparse
import math


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, epochs, process and image counts)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (counts where 0 means "none", e.g. --workers 0: load in the main process)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**32 - 1] (what NumPy accepts; torch overflows past 2**64)."""
    value = _int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {2**32 - 1}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, budgets in ms)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (lambda, warm-up epochs, minutes)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1 (exclusive), got {text!r}")
    return value


def out_folder(text: str) -> str:
    """An output folder: new, or an existing folder (never a file, nor under one).

    Whether an existing folder may be written into (empty, ``--resume``, ``--force``) is the
    command's decision: :func:`spnas_dsl.training.rundir.check_out`.
    """
    from spnas_dsl.io import out_path_problem

    if not text:
        raise argparse.ArgumentTypeError("expected a folder, got ''")
    problem = out_path_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text
