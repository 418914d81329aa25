"""spnasc check FILE...: parse and validate, one line per file."""

from __future__ import annotations

import sys

from spnas_dsl.errors import SpnasError


def register(sub) -> None:
    p = sub.add_parser(
        "check",
        help="parse and validate .spnas files",
        description="Parse and validate each file. Prints 'FILE: OK (...)' per good file; errors as "
        "'file:line:col: error: message' with the line and a caret. Exit 0 when all are valid, 2 otherwise.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".spnas files to check")
    p.set_defaults(run=run)


def run(args) -> int:
    from spnas_dsl.parser import load

    status = 0
    for path in args.files:
        try:
            network = load(path)
        except SpnasError as exc:
            if args.debug:
                raise
            print(exc.render(), file=sys.stderr)
            status = max(status, exc.exit_code)
            continue
        kind = "network" if network.is_concrete else "search space"
        layers = sum(1 for _ in network.iter_layers())
        print(f"{path}: OK ({kind} '{network.name}', {layers} layers)")
    return status
