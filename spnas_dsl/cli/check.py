"""spnasc check FILE...: parse and validate, one line per file (``--for-search``: the search's rules too)."""

from __future__ import annotations

import sys

from spnas_dsl.errors import SpnasError, SpnasErrors


def register(sub) -> None:
    p = sub.add_parser(
        "check",
        help="parse and validate .spnas files",
        description="Parse and validate each file. Prints 'FILE: OK (...)' per good file; errors as "
        "'file:line:col: error: message' with the line and a caret. Exit 0 when all are valid, 2 for syntax "
        "and rule errors, 1 when only a target's table cannot price a space. "
        "--for-search also checks what 'spnasc search' enforces on a space when it lowers it: a searched "
        "layer, candidate sets that nest in one superkernel and, with --target, a table that prices them.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".spnas files to check")
    p.add_argument("--for-search", action="store_true",
                   help="also check the rules the search enforces on a space (nesting; coverage with --target)")
    p.add_argument("--target", metavar="T", help="with --for-search: the target whose table must price the space")
    p.set_defaults(run=run)


def run(args) -> int:
    from spnas_dsl.errors import UsageError
    from spnas_dsl.parser import load

    if args.target and not args.for_search:
        raise UsageError("--target is checked with --for-search: spnasc check --for-search --target T FILE")
    target = None
    if args.for_search and args.target:
        from spnas_dsl.targets import load_target

        target = load_target(args.target)
    status = 0
    for path in args.files:
        try:
            network = load(path)
            if args.for_search:
                _check_for_search(network, path, target)
        except SpnasError as exc:
            if args.debug:
                raise
            print(exc.render(), file=sys.stderr)
            status = max(status, exc.exit_code)
            continue
        kind = "network" if network.is_concrete else "search space"
        layers = sum(1 for _ in network.iter_layers())
        ready = ""
        if args.for_search:  # without --target no table was asked: say so rather than promise a search
            ready = f", ready to search on {target.name}" if target is not None else \
                ", nests for a search; latency table not checked (add --target T)"
        print(f"{path}: OK ({kind} '{network.name}', {layers} layers{ready})")
    return status


def _check_for_search(network, path: str, target) -> None:
    """Raise every search rule ``network`` breaks, located in ``path`` with its caret."""
    from spnas_dsl.compiler.preflight import search_errors

    errors = search_errors(network, target)
    if not errors:
        return
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for error in errors:  # errors raised after parsing carry the IR's spans: add the text for the caret
        if error.source is None and error.span is not None and error.span.file == path:
            error.source = text
    raise errors[0] if len(errors) == 1 else SpnasErrors(errors)
