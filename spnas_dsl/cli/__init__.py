"""The ``spnasc`` command: one subcommand per module in this package.

Each subcommand module defines ``register(subparsers)`` and a ``run(args) -> int``. They
import heavy libraries (torch, tensorflow) inside ``run`` only, so that the front-end
commands (check, fmt, summary) start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from spnas_dsl.errors import SpnasError

# Order shown in --help. Each name is a module spnas_dsl.cli.<name>.
COMMANDS = ["check", "fmt", "summary", "latency", "search", "train", "build", "profile", "lut", "targets"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spnasc",
        description="spnas: a declarative language and compiler for Single-Path NAS "
        "(hardware-aware neural architecture search).",
        epilog="Run 'spnasc COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"spnas_dsl.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"spnas_dsl.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``spnasc``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SpnasError as exc:
        if args.debug or os.environ.get("SPNAS_DEBUG"):
            raise
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("spnasc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def entry_point() -> None:
    sys.exit(main())
