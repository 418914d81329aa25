"""spnasc fmt FILE...: print, check or rewrite the canonical form."""

from __future__ import annotations

import sys

from spnas_dsl.errors import SpnasError


def register(sub) -> None:
    p = sub.add_parser(
        "fmt",
        help="print the canonical form of .spnas files",
        description="Print the canonical form of each file (comments are kept). With --write, rewrite "
        "files in place (atomically); with --check, print nothing and exit 1 if a file is not canonical.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", "-w", action="store_true", help="rewrite the files in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when a file is not in canonical form")
    p.set_defaults(run=run)


def run(args) -> int:
    from spnas_dsl.io import atomic_write_text
    from spnas_dsl.parser import load, parse_text
    from spnas_dsl.printer import format_network

    status = 0
    for path in args.files:
        try:
            network = load(path)
        except SpnasError as exc:
            print(exc.render(), file=sys.stderr)
            status = max(status, exc.exit_code)
            continue
        text = format_network(network)
        # Round trip before anything is written: the canonical text must read back as the same
        # network, or the file is left alone (a printer bug must never destroy a user's file).
        try:
            same = parse_text(text, path) == network
        except SpnasError as exc:
            same, why = False, exc.message
        else:
            why = "it reads back as a different network"
        if not same:
            print(f"{path}: error: the canonical text does not read back ({why}); file left unchanged "
                  "(a bug in spnasc fmt, please report it)", file=sys.stderr)
            status = max(status, 1)
            continue
        with open(path, encoding="utf-8") as f:
            original = f.read()
        if args.check:
            if text != original:
                print(f"{path}: not in canonical form (run 'spnasc fmt --write {path}')", file=sys.stderr)
                status = max(status, 1)
        elif args.write:
            if text != original:
                try:
                    atomic_write_text(path, text)
                except OSError as exc:
                    print(f"{path}: error: cannot rewrite file: {exc.strerror or exc}", file=sys.stderr)
                    status = max(status, 1)
                    continue
                print(f"{path}: reformatted", file=sys.stderr)
        else:
            sys.stdout.write(text)
    return status
