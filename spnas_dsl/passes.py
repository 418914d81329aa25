"""IR -> IR passes that make concrete networks, each result checked by the verifier (``validate``).

``with_options`` is the one way to make a concrete network (or a partly concrete space) from
chosen options: the search's answer, a budget fit, a latency-graph query, a profiled network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from spnas_dsl.errors import LoweringError, SpnasValidationError
from spnas_dsl.ir import Layer, Network, Option
from spnas_dsl.printer import format_layer
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.validate import validate

__all__ = ["require_concrete", "require_same_macro", "with_options"]


def with_options(network: Network, options: Mapping[int, Option] | Sequence[Option]) -> Network:
    """``network`` with layers set to chosen options, verified.

    ``options``: ``{layer index: option}`` (the other layers stay as they are) or one option per
    layer, in layer order. Each option must be a candidate of its layer; source spans, names and
    comments are kept. The result goes through :func:`~spnas_dsl.validate.validate`, as a parsed
    network does; a wrong count or a non-candidate is a :class:`SpnasValidationError`.
    """
    shapes = infer_shapes(network).layers
    if not isinstance(options, Mapping):
        options = list(options)
        if len(options) != len(shapes):
            raise SpnasValidationError(f"{len(options)} options for the {len(shapes)} layers of '{network.name}'",
                                       network.span)
        options = dict(enumerate(options))
    unknown = sorted(set(options) - {s.index for s in shapes})
    if unknown:
        raise SpnasValidationError(f"'{network.name}' has no layer {unknown[0]} (layers 0..{len(shapes) - 1})",
                                   network.span)
    layers = []
    for shape in shapes:
        option = options.get(shape.index)
        if option is None:
            layers.append(shape.layer)
            continue
        if option not in shape.layer.options:
            raise SpnasValidationError(
                f"{option} is not a candidate of layer {shape.index} ({shape.name}) of '{network.name}' "
                f"({format_layer(shape.layer)})", shape.layer.span)
        layers.append(Layer.from_option(option, span=shape.layer.span))
    return validate(network.replace_layers(layers))


def require_concrete(network: Network) -> None:
    """Raise a located error naming the first layer that still has several candidates."""
    for shape in infer_shapes(network).layers:
        if not shape.layer.is_concrete:
            raise LoweringError(
                f"'{network.name}' is a search space, not a concrete network: layer {shape.index} "
                f"({shape.name}) has {len(shape.layer.options)} candidates ({format_layer(shape.layer)})",
                shape.layer.span,
            )


def require_same_macro(space: Network, network: Network) -> None:
    """Raise :class:`LoweringError` unless ``network`` has the macro-architecture of ``space``.

    Same input, classes, width, stem, head, and stages of the same names, widths, strides and
    numbers of layers (the layers' candidates may differ).
    """
    def fail(what: str, span: Any) -> None:
        raise LoweringError(
            f"'{network.name}' does not have the macro-architecture of space '{space.name}': {what}",
            span or network.span,
        )

    for field in ("input", "classes", "width_multiplier", "bn_eps", "bn_momentum", "stem", "head"):
        mine, theirs = getattr(network, field), getattr(space, field)
        if mine != theirs:
            fail(f"{field} differs ({mine!s} vs {theirs!s})", getattr(mine, "span", None))
    if len(network.stages) != len(space.stages):
        fail(f"{len(network.stages)} stages vs {len(space.stages)}", None)
    for mine, theirs in zip(network.stages, space.stages):
        ours = (mine.name, mine.channels, mine.stride, len(mine.layers))
        if ours != (theirs.name, theirs.channels, theirs.stride, len(theirs.layers)):
            fail(
                f"stage '{mine.name}' c={mine.channels} s={mine.stride} with {len(mine.layers)} layers vs "
                f"stage '{theirs.name}' c={theirs.channels} s={theirs.stride} with {len(theirs.layers)} layers",
                mine.span,
            )
