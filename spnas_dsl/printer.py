"""IR -> canonical ``.spnas`` text (the formatter's output and the search's output).

Canonical form: 4-space indentation, header statements in a fixed order, runs of equal
consecutive layers folded into ``Nx``, candidate sets sorted and written ``<...>`` only
when they hold more than one value. Comments of the source are put back before the
statement that followed them (or at the end of its line), so formatting never loses them.
"""

from __future__ import annotations

from spnas_dsl.ir import BN_EPS, BN_MOMENTUM, CandidateSet, Comment, Layer, MBConvAlt, Network

INDENT = "    "


def format_candidates(name: str, candidates: CandidateSet) -> str:
    if candidates.is_singleton:
        return f"{name}={candidates.values[0]}"
    return f"{name}=<{','.join(str(v) for v in candidates.values)}>"


def format_alt(alt: MBConvAlt) -> str:
    """One ``mbconv`` alternative, e.g. ``mbconv k=<3,5> e=1 g=2 expand=always``."""
    text = f"mbconv {format_candidates('k', alt.kernel)} {format_candidates('e', alt.expansion)}"
    if alt.groups is not None:
        text += f" {format_candidates('g', alt.groups)}"
    return text + (" expand=always" if alt.expand_always else "")


def format_layer(layer: Layer) -> str:
    """One layer line without the repeat count, e.g. ``mbconv k=<3,5> e=<3,6> | skip``."""
    parts = [format_alt(alt) for alt in layer.alternatives]
    if layer.skip:
        parts.append("skip project=conv" if layer.skip_project else "skip")
    return " | ".join(parts)


def _number(value: float) -> str:
    """Shortest text that reads back as exactly ``value`` (``1.0``, ``0.2``, ``1e-05``)."""
    return repr(float(value))


def format_network(network: Network, header: list[str] | None = None) -> str:
    """The canonical text of ``network``; ``header`` lines are written first as comments."""
    lines: list[tuple[int | None, int, str, bool]] = []  # (source line, depth, text, closes a block)

    def emit(span, depth: int, text: str) -> None:
        lines.append((span.line if span else None, depth, text, False))

    def close(span, depth: int) -> None:  # a block's `}`: the parser ends its span there
        lines.append((span.end_line if span else None, depth, "}", True))

    spans = network.header_spans
    emit(network.span, 0, f"network {network.name} {{")
    emit(spans.get("input"), 1, f"input {network.input}")
    emit(spans.get("classes"), 1, f"classes {network.classes}")
    emit(spans.get("width"), 1, f"width {_number(network.width_multiplier)}")
    # `bn` is printed when declared or not the default, so files without it keep their text.
    if "bn" in spans or (network.bn_eps, network.bn_momentum) != (BN_EPS, BN_MOMENTUM):
        emit(spans.get("bn"), 1, f"bn eps={_number(network.bn_eps)} momentum={_number(network.bn_momentum)}")
    stem = network.stem
    emit(stem.span, 1, f"stem conv k={stem.kernel} c={stem.channels} s={stem.stride}")
    for stage in network.stages:
        emit(stage.span, 1, f"stage {stage.name} c={stage.channels} s={stage.stride} {{")
        i = 0
        while i < len(stage.layers):
            j = i
            while j + 1 < len(stage.layers) and stage.layers[j + 1] == stage.layers[i]:
                j += 1
            count = j - i + 1
            prefix = f"{count}x " if count > 1 else ""
            emit(stage.layers[i].span, 2, prefix + format_layer(stage.layers[i]))
            i = j + 1
        close(stage.span, 1)
    head = network.head
    emit(head.span, 1, f"head conv c={head.channels} dropout={_number(head.dropout)}")
    close(network.span, 0)

    out = [f"# {h}" if h else "#" for h in (header or [])]
    out += _with_comments(lines, list(network.comments))
    return "\n".join(out) + "\n"


def _with_comments(lines, comments: list[Comment]) -> list[str]:
    own = [c for c in comments if not c.trailing]
    trailing = {c.line: c for c in comments if c.trailing}
    out: list[str] = []
    last_line = 0
    for source_line, depth, text, closing in lines:
        indent = INDENT * depth
        if source_line is not None:
            inner = INDENT * (depth + closing)  # comments before a `}` stay inside its block
            while own and own[0].line < source_line:
                out.append(f"{inner}#{own.pop(0).text}".rstrip())
            note = trailing.pop(source_line, None) if source_line > last_line else None
            last_line = max(last_line, source_line)
            out.append(f"{indent}{text}" + (f"  #{note.text}".rstrip() if note else ""))
        else:
            out.append(indent + text)
    # Comments after the network's `}` (and any trailing ones not re-attached).
    rest = sorted(own + list(trailing.values()), key=lambda c: c.line)
    out.extend(f"#{c.text}".rstrip() for c in rest)
    return out
