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


def _checked(parse, ok, requirement: str, doc: str):
    """An argparse type: ``parse(text)``, then ``ok(value)`` or "must be <requirement>" (one message form)."""

    def check(text: str):
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value

    check.__doc__ = doc
    return check


positive_int = _checked(_int, lambda v: v >= 1, "an integer >= 1",
                        "An integer >= 1 (batch sizes, epochs, process and image counts).")
nonnegative_int = _checked(_int, lambda v: v >= 0, "an integer >= 0",
                           'An integer >= 0 (counts where 0 means "none", e.g. --workers 0).')
seed = _checked(_int, lambda v: 0 <= v < 2**32, f"an integer from 0 to {2**32 - 1}",
                "A random seed in [0, 2**32 - 1] (what NumPy accepts; torch overflows past 2**64).")
positive_float = _checked(_float, lambda v: v > 0, "a number > 0",
                          "A finite number > 0 (learning rates, budgets in ms).")
nonnegative_float = _checked(_float, lambda v: v >= 0, "a number >= 0",
                             "A finite number >= 0 (lambda, warm-up epochs, minutes).")
open_fraction = _checked(_float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)",
                         "A number strictly between 0 and 1.")


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
