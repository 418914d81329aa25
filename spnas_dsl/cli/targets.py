"""spnasc targets: the known targets, what they are, and where their lookup tables are."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser(
        "targets",
        help="list the known targets and their lookup tables",
        description="List every known target: what it is (device, runtime, threads), where its lookup table "
        "is (or how to build it) and how many layer signatures the table prices. Local tables live in "
        "$SPNAS_CACHE_DIR/targets (default ~/.cache/spnas/targets).",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)


def run(args) -> int:
    from spnas_dsl.targets import cache_dir, list_targets

    rows = list_targets()
    if args.json:
        print(json.dumps({
            "cache_dir": str(cache_dir()),
            "targets": [
                {
                    "name": r.spec.name,
                    "kind": r.spec.kind,
                    "description": r.spec.description,
                    "device": r.spec.device,
                    "runtime": r.spec.runtime,
                    "threads": r.spec.threads,
                    "profilable": r.spec.profilable,
                    "built": r.built,
                    "table": str(r.path) if r.path else None,
                    "signatures": r.signatures,
                    "status": r.where,
                    "space": r.spec.space or None,
                    "source": r.source or None,
                    "error": r.error,
                }
                for r in rows
            ],
        }, indent=2))
        return 0
    width = max(len(r.spec.name) for r in rows) + 2
    for r in rows:
        flag = "" if r.spec.profilable else " (read-only)"
        print(f"{r.spec.name:<{width}}{r.spec.what}{flag}")
        print(f"{'':<{width}}{r.spec.description}")
        count = f", {r.signatures} signatures" if r.signatures is not None else ""
        print(f"{'':<{width}}table: {r.where}{count}")
        if r.spec.space:
            print(f"{'':<{width}}for: {r.spec.space}")
        if r.source:
            print(f"{'':<{width}}source: {r.source}")
    print(f"\nlocal tables: {cache_dir()}")
    return 0
