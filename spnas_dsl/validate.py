"""The semantic pass: rules of the language that the grammar cannot express.

Every broken rule becomes a located error; all of them are reported together, sorted
by position. The pass returns the network unchanged when it is valid.
"""

from __future__ import annotations

from spnas_dsl.errors import Span, SpnasError, SpnasErrors, SpnasValidationError
from spnas_dsl.ir import (
    EXPANSIONS,
    GROUPS,
    KERNEL_SIZES,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_INPUT_SIDE,
    MAX_STEM_KERNEL,
    MAX_WIDTH,
    STRIDES,
    MBConvAlt,
    Network,
)
from spnas_dsl.shapes import round_channels, total_stride


def validate(network: Network, source: str | None = None) -> Network:
    """Check ``network`` against the language's rules; raise :class:`SpnasErrors` if any fail."""
    errors: list[SpnasError] = []

    def error(message: str, span: Span | None) -> None:
        errors.append(SpnasValidationError(message, span, source))

    def channels(what: str, value: int, span: Span | None) -> None:
        """Channels as written and after the width multiplier stay within MAX_CHANNELS."""
        if value < 1:
            error(f"{what} channels must be at least 1, got {value}", span)
        elif value > MAX_CHANNELS:
            error(f"{what} channels {value} are over the limit of {MAX_CHANNELS}", span)
        elif width_ok and round_channels(value, network.width_multiplier) > MAX_CHANNELS:
            scaled = round_channels(value, network.width_multiplier)
            error(f"{what} channels {value} x width {network.width_multiplier:g} = {scaled}: over the limit of "
                  f"{MAX_CHANNELS}", span)

    spans = network.header_spans
    width_ok = False
    if not network.width_multiplier > 0:
        error(f"width multiplier must be > 0, got {network.width_multiplier:g}", spans.get("width"))
    elif not network.width_multiplier <= MAX_WIDTH:
        error(f"width multiplier {network.width_multiplier:g} is over the limit of {MAX_WIDTH:g}", spans.get("width"))
    else:
        width_ok = True
    if not 0 < network.bn_eps <= 1:
        error(f"BatchNorm eps must be in (0, 1], got {network.bn_eps:g}", spans.get("bn"))
    if not 0 < network.bn_momentum <= 1:
        error(f"BatchNorm momentum must be in (0, 1] (PyTorch's convention: 1 - TensorFlow's decay), "
              f"got {network.bn_momentum:g}", spans.get("bn"))
    if network.classes < 1:
        error(f"number of classes must be at least 1, got {network.classes}", spans.get("classes"))
    elif network.classes > MAX_CLASSES:
        error(f"number of classes {network.classes} is over the limit of {MAX_CLASSES}", spans.get("classes"))
    size = network.input
    if min(size.height, size.width, size.channels) < 1:
        error(f"input size must be positive in every dimension, got {size}", size.span)
    elif max(size.height, size.width) > MAX_INPUT_SIDE or size.channels > MAX_CHANNELS:
        error(f"input size {size} is over the limit ({MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}x{MAX_CHANNELS})", size.span)

    stem = network.stem
    if stem.kernel < 1 or stem.kernel % 2 == 0:
        error(f"stem kernel size must be odd and positive, got {stem.kernel}", stem.span)
    elif stem.kernel > MAX_STEM_KERNEL:
        error(f"stem kernel size {stem.kernel} is over the limit of {MAX_STEM_KERNEL}", stem.span)
    if stem.stride not in STRIDES:
        error(f"stride must be 1 or 2, got {stem.stride}", stem.span)
    channels("stem", stem.channels, stem.span)

    seen: dict[str, Span | None] = {}
    in_channels = stem.channels
    for stage in network.stages:
        if stage.name in seen:
            first = seen[stage.name]
            where = f" (first defined at {first})" if first else ""
            error(f"duplicate stage name '{stage.name}'{where}", stage.span)
        seen[stage.name] = stage.span
        if stage.stride not in STRIDES:
            error(f"stride must be 1 or 2, got {stage.stride}", stage.span)
        channels("stage", stage.channels, stage.span)
        if not stage.layers:
            error(f"stage '{stage.name}' is empty: give it at least one layer", stage.span)
        for i, layer in enumerate(stage.layers):
            for alt in layer.alternatives:
                _check_alt(alt, in_channels if i == 0 else stage.channels, stage.channels, error)
            changes_shape = i == 0 and (stage.stride != 1 or stage.channels != in_channels)
            if layer.skip and changes_shape and not layer.skip_project:
                why = f"stride {stage.stride}" if stage.stride != 1 else f"{in_channels} -> {stage.channels} channels"
                error(
                    f"the first layer of stage '{stage.name}' changes the shape ({why}) and cannot be skipped "
                    f"(an identity); write 'skip project=conv' for a 1x1 projection there",
                    layer.span,
                )
        in_channels = stage.channels

    head = network.head
    channels("head", head.channels, head.span)
    if not 0 <= head.dropout < 1:
        error(f"dropout must be in [0, 1), got {head.dropout:g}", head.span)

    if not errors:
        stride = total_stride(network)
        if min(size.height, size.width) < stride:
            error(
                f"input {size.height}x{size.width} is smaller than the network's total stride {stride}",
                size.span,
            )
    if errors:
        raise SpnasErrors(errors)
    return network


def _check_alt(alt: MBConvAlt, in_channels: int, out_channels: int, error) -> None:
    """Kernel, expansion and groups of one ``mbconv`` alternative (channels as written)."""
    for k in alt.kernel.values:
        if k not in KERNEL_SIZES:
            error(f"kernel size {k} is not one of {_set(KERNEL_SIZES)}", alt.kernel.span)
    for e in alt.expansion.values:
        if e not in EXPANSIONS:
            error(f"expansion {e} is not one of {_set(EXPANSIONS)}", alt.expansion.span)
    if alt.groups is None:
        return
    for g in alt.groups.values:
        if g not in GROUPS:
            error(f"groups {g} is not one of {_set(GROUPS)}", alt.groups.span)
            continue
        if g > 1 and 1 in alt.expansion.values and not alt.expand_always:
            error(f"groups {g} needs the 1x1 expansion conv, which e=1 leaves out (a depthwise-separable "
                  f"block): write expand=always", alt.groups.span)
        # Grouped 1x1 convs split input and output channels into g equal parts.
        bad = [c for c in (in_channels, out_channels) if c % g]
        if bad:
            error(f"groups {g} must divide the layer's channels ({in_channels} -> {out_channels})", alt.groups.span)


def _set(values) -> str:
    return "{" + ",".join(str(v) for v in values) + "}"
