"""Pricing a network's parts from a target's table: fixed groups first, then each candidate's
signature by the table's lookup rule; every missing signature is reported at once."""

from __future__ import annotations

from dataclasses import replace

from spnas_dsl.errors import TargetError
from spnas_dsl.ir import Network
from spnas_dsl.latency.nodes import FixedGroupUse, LatencyNode, NodeKey
from spnas_dsl.targets.registry import Target


def price_nodes(network: Network, nodes: list[LatencyNode], target: Target) -> tuple[list[LatencyNode],
                                                                                   list[FixedGroupUse]]:
    """``nodes`` (in network order) with their figures, and the table's fixed groups they use.

    Raises :class:`TargetError` listing every signature the table lacks, with how to profile them.
    """
    groups, membership, notes = assign_fixed_groups(nodes, target)
    priced: list[LatencyNode] = []
    missing: list[tuple[str, str]] = []
    for node in nodes:
        latency: dict = {}
        rules: dict = {}
        group = membership.get(node.key)
        if group is None:
            for option in node.candidates:
                sig = node.signatures[option]
                if sig is None:
                    latency[option], rules[option] = 0.0, "skip"
                    continue
                found = target.lookup(sig, node.index)
                if found is None:
                    missing.append((node.where, sig))
                else:
                    latency[option], rules[option] = found.latency_ms, found.rule
        priced.append(replace(node, latency_ms=latency, rules=rules, fixed_group=group))
    if missing:
        raise TargetError(missing_message(network, target, missing, notes))
    return priced, groups


def assign_fixed_groups(nodes: list[LatencyNode], target: Target) -> tuple[list[FixedGroupUse],
                                                                          dict[NodeKey, int], list[str]]:
    """Give each fixed group of the table whose signatures are all in the network its parts.

    Only parts with one candidate (stem, head, concrete layers) can join a group; a signature
    listed twice needs two parts. Returns the groups used, the group of each member part, and
    notes on groups that matched only in part (to explain missing signatures).
    """
    eligible = [n for n in nodes if not n.is_searched and n.signatures[n.candidates[0]]]
    used: list[FixedGroupUse] = []
    notes: list[str] = []
    membership: dict[NodeKey, int] = {}
    for gi, group in enumerate(target.table.fixed_groups):
        members: list[NodeKey] = []
        lacking: list[str] = []
        for sig in group.signatures:
            node = next((n for n in eligible if n.key not in membership and n.key not in members
                         and n.signatures[n.candidates[0]] == sig), None)
            if node is None:
                lacking.append(sig)
            else:
                members.append(node.key)
        if not lacking:
            membership.update((key, gi) for key in members)
            used.append(FixedGroupUse(gi, group.latency_ms, group.note, tuple(members)))
        elif members:
            notes.append(f"fixed group {gi} ({group.latency_ms:g} ms: {group.note or 'parts priced jointly'}) "
                         f"prices {', '.join(group.signatures)} only together; this network lacks {', '.join(lacking)}")
    return used, membership, notes


def missing_message(network: Network, target: Target, missing: list[tuple[str, str]], notes: list[str]) -> str:
    """The error for signatures the table lacks: each with where it is, and what to run."""
    seen: dict[str, list[str]] = {}
    for where, sig in missing:
        seen.setdefault(sig, []).append(where)
    plural = "s" if len(seen) != 1 else ""
    head = f"target '{target.name}' ({target.path}) has no latency for {len(seen)} signature{plural} of '{network.name}':"
    lines = [head]
    for sig, wheres in seen.items():
        lines.append(f"  {sig}  at {', '.join(wheres)}")
    lines += [f"  note: {n}" for n in notes]
    space = network.span.file if network.span and network.span.file else "SPACE"
    if target.read_only:
        lines.append(f"'{target.name}' is a read-only table ({target.spec.what}) that cannot be profiled here; "
                     f"profile the space on a local target instead: spnasc lut build {space} --target host-tflite")
    else:
        lines.append(f"profile them with: spnasc lut build {space} --target {target.name}")
    return "\n".join(lines)
