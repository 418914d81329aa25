"""spnasc latency FILE --target NAME: predicted latency from a target's lookup table."""

from __future__ import annotations

import json
from typing import Any

from spnas_dsl.targets.registry import DEFAULT_TARGET


def register(sub) -> None:
    p = sub.add_parser(
        "latency",
        help="predict latency on a target from its lookup table",
        description="Predict latency from the target's lookup table. For a concrete network: the predicted "
        "latency and the per-layer breakdown. For a search space: the fastest and slowest network's latency "
        "and the slowest network's per-layer breakdown. Parts that the table prices jointly (a fixed group, "
        "e.g. Pixel 1's stem + layer 0 + layer 21 + head) are shown once, as a group. See docs/targets.md.",
    )
    p.add_argument("file", metavar="FILE", help=".spnas network or search space")
    p.add_argument("--target", default=DEFAULT_TARGET, metavar="NAME",
                   help=f"target name (see 'spnasc targets') or a table .json file (default: {DEFAULT_TARGET})")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _report(graph, rows) -> dict[str, Any]:
    names = {key: graph.node(key).name for key in graph.order}
    cal = graph.target.calibration
    return {
        "network": graph.network.name,
        "target": graph.target.name,
        "table": str(graph.target.path),
        "concrete": graph.network.is_concrete,
        "fixed_ms": _ms(graph.fixed_ms),
        "calibration": cal.model_dump(mode="json"),
        "fixed_groups": [
            {"index": g.index, "latency_ms": _ms(g.latency_ms), "note": g.note, "members": [names[m] for m in g.members]}
            for g in graph.groups
        ],
        "layers": [dict(r.to_dict(), latency_ms=_ms(r.latency_ms)) for r in rows],
    }


def run(args) -> int:
    from spnas_dsl.latency.graph import LatencyGraph
    from spnas_dsl.parser import load
    from spnas_dsl.passes import with_options
    from spnas_dsl.targets import load_target

    network = load(args.file)
    target = load_target(args.target)
    graph = LatencyGraph.build(network, target)
    if network.is_concrete:
        rows = graph.breakdown()
        report = _report(graph, rows)
        report["latency_ms"] = _ms(graph.predict())
    else:
        largest = graph.largest()
        rows = graph.breakdown(with_options(network, largest))
        report = _report(graph, rows)
        report.update(latency_ms_min=_ms(graph.min_ms()), latency_ms_max=_ms(graph.max_ms()),
                      largest=[str(o) for o in largest], smallest=[str(o) for o in graph.smallest()])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_text(graph, rows, report)
    return 0


def _print_text(graph, rows, report: dict[str, Any]) -> None:
    target = graph.target
    kind = "network" if graph.network.is_concrete else "search space"
    ro = ", read-only" if target.read_only else ""
    print(f"{graph.network.name} ({kind}) on {target.name}: {target.spec.what}{ro}")
    print(f"table: {target.path}")
    if not graph.network.is_concrete:
        print("per-layer latencies of the slowest network of the space:")
    print(f"{'#':>3}  {'part':<10} {'input':>11} {'out':>5} {'s':>1}  {'choice':<6}  {'signature':<34} {'ms':>9}")
    means = False
    for r in rows:
        if r.latency_ms is None:
            ms = f"group {r.fixed_group}"
        else:
            ms = f"{r.latency_ms:.4f}" + ("*" if r.rule == "mean" else "")
            means = means or r.rule == "mean"
        index = "" if r.index is None else str(r.index)
        print(f"{index:>3}  {r.name:<10} {r.input:>11} {r.out_channels:>5} {r.stride:>1}  {r.choice:<6}  "
              f"{r.signature or '-':<34} {ms:>9}")
    for g in report["fixed_groups"]:
        print(f"group {g['index']}: {g['latency_ms']:.4f} ms for {' + '.join(g['members'])}, priced jointly"
              + (f" ({g['note']})" if g["note"] else ""))
    if means:
        print("* mean of the table's entries for this signature (measured at other positions)")
    cal = target.calibration
    if not cal.is_identity:
        print(f"calibrated: {cal.scale:g} x table sum + {cal.offset_ms:g} ms")
    if graph.network.is_concrete:
        print(f"predicted latency: {report['latency_ms']:.2f} ms")
    else:
        print(f"fixed parts: {graph.fixed_ms:.4f} ms (table sum)")
        print(f"latency: {report['latency_ms_min']:.2f} ms (fastest) .. {report['latency_ms_max']:.2f} ms (slowest)")
