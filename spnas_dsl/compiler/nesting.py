"""Which searched layers the single-path supernet can nest in one superkernel (and located errors)."""

from __future__ import annotations

from spnas_dsl.errors import LoweringError
from spnas_dsl.ir import Layer, Network
from spnas_dsl.ops import Site, op_for
from spnas_dsl.shapes import infer_shapes

__all__ = ["check_nestable", "check_space_nests", "nesting_errors"]


def nesting_errors(network: Network) -> list[LoweringError]:
    """The nesting error of every searched layer that the supernet cannot lower, in layer order."""
    errors = []
    for shape in infer_shapes(network).layers:
        if shape.layer.is_searched:
            try:
                check_nestable(shape.layer, Site.of(shape))
            except LoweringError as exc:
                errors.append(exc)
    return errors


def check_space_nests(network: Network) -> None:
    """Raise the first nesting error of ``network`` (``lower_to_supernet``'s rule, torch-free)."""
    errors = nesting_errors(network)
    if errors:
        raise errors[0]


def check_nestable(layer: Layer, site: Site) -> None:
    """Raise :class:`LoweringError` unless the layer's options at ``site`` nest in one superkernel.

    Kernel sets of odd sizes always nest as shells. An op that is a second path (its registry
    entry's ``nests`` says why) is rejected. Expansions nest when every one is a
    multiple of the smallest and the smallest is > 1 or the layer writes ``expand=always`` (e=1
    without its expand conv cannot share a superkernel with larger expansions); a lone e=1 is
    fine. Grouped 1x1 convs, several ``mbconv`` alternatives and a projection skip where the
    shape changes are second paths, not weight subsets: rejected (see
    ``spaces/fbnet_cifar100_searchable.spnas`` for the FBNet space's part that nests).
    """
    if layer.more:
        raise LoweringError(
            "the supernet nests one 'mbconv' per layer: a second 'mbconv' alternative (here with "
            "different g= or expand=) is a second path, not a weight subset; search a space without it",
            layer.more[0].span,
        )
    for option in layer.options:
        op = op_for(option, site)
        if op.nests is not None:
            raise LoweringError(op.nests, op.nest_span(layer))
    expansions = layer.expansion
    if expansions is None or expansions.is_singleton:
        return
    values = expansions.values
    text = "<" + ",".join(str(e) for e in values) + ">"
    if expansions.min == 1 and not layer.expand_always:
        raise LoweringError(
            f"expansions {text} cannot be nested as equal channel groups: expansion 1 has no expand conv, "
            f"so it cannot share a superkernel with larger expansions (write expand=always to keep it)",
            expansions.span,
        )
    if any(e % expansions.min for e in values):
        raise LoweringError(
            f"expansions {text} cannot be nested as equal channel groups: every expansion must be a "
            f"multiple of the smallest ({expansions.min}), e.g. <{expansions.min},{2 * expansions.min}>",
            expansions.span,
        )
