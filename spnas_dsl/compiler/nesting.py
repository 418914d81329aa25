"""Which searched layers the single-path supernet can nest in one superkernel (and located errors)."""

from __future__ import annotations

from spnas_dsl.errors import LoweringError
from spnas_dsl.ir import Layer

__all__ = ["check_nestable"]


def check_nestable(layer: Layer, changes_shape: bool = False) -> None:
    """Raise :class:`LoweringError` unless the layer's options nest in one superkernel.

    Kernel sets of odd sizes always nest as shells. Expansions nest when every one is a
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
    if layer.groups is not None:
        raise LoweringError(
            "the supernet does not search grouped 1x1 convolutions (g=): a grouped conv is not a "
            "channel subset of the dense one; drop g= from searched layers",
            layer.groups.span,
        )
    if layer.skip and layer.skip_project and changes_shape:
        raise LoweringError(
            "the supernet cannot search 'skip project=conv' where the shape changes: the 1x1 projection "
            "is a second path, not a weight subset of the block; drop the skip from this layer",
            layer.span,
        )
    choice = layer.expansion
    if choice is None or choice.is_singleton:
        return
    values = choice.values
    text = "<" + ",".join(str(e) for e in values) + ">"
    if choice.min == 1 and not layer.expand_always:
        raise LoweringError(
            f"expansions {text} cannot be nested as equal channel groups: expansion 1 has no expand conv, "
            f"so it cannot share a superkernel with larger expansions (write expand=always to keep it)",
            choice.span,
        )
    if any(e % choice.min for e in values):
        raise LoweringError(
            f"expansions {text} cannot be nested as equal channel groups: every expansion must be a "
            f"multiple of the smallest ({choice.min}), e.g. <{choice.min},{2 * choice.min}>",
            choice.span,
        )
