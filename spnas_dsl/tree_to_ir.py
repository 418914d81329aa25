"""Parse tree -> IR: the Lark Transformer of the front end (:func:`spnas_dsl.parser.parse_text` runs it).

It decodes the generic ``op NAME=value`` statements into typed IR nodes, keeping each node's
position (:class:`~spnas_dsl.errors.Span`) and collecting every unknown op, unknown parameter,
mistyped or out-of-range value with its location instead of stopping at the first.
"""

from __future__ import annotations

from lark import Token, Transformer, v_args
from lark.tree import Meta

from spnas_dsl.errors import Span, SpnasError, SpnasValidationError
from spnas_dsl.ir import (
    BN_EPS,
    BN_MOMENTUM,
    EXPAND_MODES,
    MAX_LAYERS,
    MAX_NUMBER_CHARS,
    SKIP_PROJECTIONS,
    CandidateSet,
    Head,
    InputSize,
    Layer,
    MBConvAlt,
    Network,
    Stage,
    Stem,
)


def _short(text: str) -> str:
    """A token for a message: a 5,000-digit number is shown by its ends and its length."""
    return text if len(text) <= 24 else f"{text[:10]}...{text[-6:]} ({len(text)} characters)"


def _shown(value) -> str:
    if isinstance(value, tuple):
        return "<" + ",".join(f"{v:g}" for v in value) + ">"
    return f"{value:g}"


def _same_kind(a: MBConvAlt, b: MBConvAlt) -> bool:
    """Two ``mbconv`` alternatives with the same groups and expand mode (write them as one)."""
    return (a.groups, a.expand_always) == (b.groups, b.expand_always)


class _Param:
    """A decoded ``name=value`` with its location; value is a float, a str or a tuple."""

    def __init__(self, name: str, value, span: Span):
        self.name, self.value, self.span = name, value, span


class _Op:
    def __init__(self, name: str, params: list[_Param], span: Span):
        self.name, self.params, self.span = name, params, span


# Which parameters each op takes, and what it means.
_OP_PARAMS = {
    "stem": {"conv": {"k", "c", "s"}},
    "head": {"conv": {"c", "dropout"}},
    "layer": {"mbconv": {"k", "e", "g", "expand"}, "skip": {"project"}},
    "stage": {"c", "s"},
    "bn": {"eps", "momentum"},
}


@v_args(inline=True, meta=False)
class IRBuilder(Transformer):
    """Parse tree -> IR nodes. Collects located errors instead of stopping at the first."""

    def __init__(self, filename: str, text: str):
        super().__init__()
        self.filename, self.text = filename, text
        self.errors: list[SpnasError] = []
        self.layer_count = 0  # layers so far, repeats expanded (checked against MAX_LAYERS)

    # -- helpers ---------------------------------------------------------------
    def _span(self, item) -> Span:
        meta = item if isinstance(item, Meta) else getattr(item, "meta", None)
        if isinstance(item, Token):
            return Span(self.filename, item.line, item.column, item.end_line, item.end_column)
        if meta is not None and not meta.empty:
            return Span(self.filename, meta.line, meta.column, meta.end_line, meta.end_column)
        return Span(self.filename, 1, 1)

    def _error(self, message: str, span: Span) -> None:
        self.errors.append(SpnasValidationError(message, span, self.text))

    def _float(self, token: Token) -> float:
        """A number token's value; out-of-range numbers (``1e999``, 400 digits) become a located
        error and a harmless placeholder, so no later ``int()`` can overflow."""
        text = str(token)
        value = float(text) if len(text) <= MAX_NUMBER_CHARS else float("inf")
        if not abs(value) < 2.0**53:  # also catches inf and nan; above 2**53 floats are not whole numbers
            self._error(f"number out of range: {_short(text)}", self._span(token))
            return 1.0
        return value

    def _int(self, token: Token, what: str) -> int:
        value = self._float(token)
        if value != int(value):
            self._error(f"{what} must be an integer, got {token}", self._span(token))
        return int(value)

    def _params(self, op: _Op, allowed: set[str], context: str) -> dict[str, _Param]:
        out: dict[str, _Param] = {}
        for p in op.params:
            if p.name not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                self._error(f"unknown parameter '{p.name}' for {context} (known: {known})", p.span)
            elif p.name in out:
                self._error(f"duplicate parameter '{p.name}'", p.span)
            else:
                out[p.name] = p
        return out

    def _scalar(self, params: dict[str, _Param], name: str, what: str, required: bool, span: Span, default=None):
        p = params.get(name)
        if p is None:
            if required:
                self._error(f"missing parameter '{name}=' ({what})", span)
            return default
        if isinstance(p.value, tuple):
            if len(p.value) != 1:
                self._error(f"{what} '{name}' takes one value here, not a candidate set", p.span)
                return default
            return p.value[0]
        if isinstance(p.value, str):
            self._error(f"{what} '{name}' must be a number, got '{p.value}'", p.span)
            return default
        return p.value

    def _whole(self, value, what: str, span: Span, default: int = 1) -> int:
        if value is None:
            return default
        if value != int(value):
            self._error(f"{what} must be an integer, got {value:g}", span)
        return int(value)

    def _candidate_set(self, params: dict[str, _Param], name: str, what: str, span: Span) -> CandidateSet | None:
        p = params.get(name)
        if p is None:
            self._error(f"missing parameter '{name}=' ({what})", span)
            return None
        if isinstance(p.value, str):
            self._error(f"{what} '{name}' must be a number or a candidate set <...>, got '{p.value}'", p.span)
            return None
        values = p.value if isinstance(p.value, tuple) else (p.value,)
        if not values:
            self._error(f"empty candidate set for '{name}'", p.span)
            return None
        if any(v != int(v) for v in values):
            self._error(f"{what} values must be integers", p.span)
            return None
        ints = [int(v) for v in values]
        if len(set(ints)) != len(ints):
            self._error(f"duplicate value in candidate set for '{name}'", p.span)
        return CandidateSet(values=tuple(sorted(set(ints))), span=p.span)

    # -- terminals and small rules --------------------------------------------
    def number(self, token: Token):
        return self._float(token)

    def word(self, token: Token):
        return str(token)

    @v_args(inline=False, meta=True)
    def candidates(self, meta, items):
        return tuple(self._float(t) for t in items if t is not None)

    @v_args(inline=False, meta=True)
    def param(self, meta, items):
        name, value = items
        return _Param(str(name), value, self._span(name))

    @v_args(inline=False, meta=True)
    def op(self, meta, items):
        name, *params = items
        return _Op(str(name), params, self._span(name))

    @v_args(inline=False, meta=True)
    def repeat(self, meta, items):
        (count,) = items
        text = str(count)
        if len(text) > MAX_NUMBER_CHARS or int(text) > MAX_LAYERS:  # before int(): 5,000 digits
            self._error(f"repeat count {_short(text)} is over the limit of {MAX_LAYERS} layers per network",
                        self._span(count))
            return (0, None)  # the layer is dropped; the error above is reported
        return (int(text), self._span(count))

    # -- statements ---------------------------------------------------------------
    @v_args(inline=False, meta=True)
    def input_size(self, meta, items):
        (size,) = items
        parts = str(size).split("x")
        if any(len(v) > MAX_NUMBER_CHARS for v in parts):
            self._error(f"input size out of range: {_short(str(size))}", self._span(size))
            parts = ["1", "1", "1"]
        h, w, c = (int(v) for v in parts)
        return ("input", InputSize(height=h, width=w, channels=c, span=self._span(size)), self._span(meta))

    @v_args(inline=False, meta=True)
    def classes(self, meta, items):
        (tok,) = items
        return ("classes", (self._int(tok, "number of classes"), self._span(tok)), self._span(meta))

    @v_args(inline=False, meta=True)
    def width(self, meta, items):
        (tok,) = items
        return ("width", (self._float(tok), self._span(tok)), self._span(meta))

    @v_args(inline=False, meta=True)
    def bn(self, meta, items):
        span = self._span(meta)
        params = self._params(_Op("bn", list(items), span), _OP_PARAMS["bn"], "bn")
        if not params:
            self._error("'bn' needs eps= and/or momentum= (e.g. bn eps=1e-5 momentum=0.1)", span)
        eps = self._scalar(params, "eps", "BatchNorm epsilon", False, span, BN_EPS)
        momentum = self._scalar(params, "momentum", "BatchNorm momentum", False, span, BN_MOMENTUM)
        return ("bn", (float(eps), float(momentum)), span)

    @v_args(inline=False, meta=True)
    def stem(self, meta, items):
        (op,) = items
        params = self._conv_params(op, "stem")
        if params is None:
            return ("stem", None, self._span(meta))
        k = self._whole(self._scalar(params, "k", "kernel size", True, op.span), "kernel size", op.span, 3)
        c = self._whole(self._scalar(params, "c", "output channels", True, op.span), "channels", op.span, 1)
        s = self._whole(self._scalar(params, "s", "stride", False, op.span, 1), "stride", op.span, 1)
        return ("stem", Stem(kernel=k, channels=c, stride=s, span=op.span), self._span(meta))

    @v_args(inline=False, meta=True)
    def head(self, meta, items):
        (op,) = items
        params = self._conv_params(op, "head")
        if params is None:
            return ("head", None, self._span(meta))
        c = self._whole(self._scalar(params, "c", "output channels", True, op.span), "channels", op.span, 1)
        dropout = self._scalar(params, "dropout", "dropout rate", False, op.span, 0.0)
        return ("head", Head(channels=c, dropout=float(dropout), span=op.span), self._span(meta))

    def _conv_params(self, op: _Op, where: str) -> dict[str, _Param] | None:
        """The parameters of the stem's or head's ``conv`` (None, with the error recorded, for another op)."""
        if op.name != "conv":
            self._error(f"unknown op '{op.name}' for the {where} (known: conv)", op.span)
            return None
        return self._params(op, _OP_PARAMS[where]["conv"], f"{where} conv")

    def _word(self, params: dict[str, _Param], name: str, allowed: tuple[str, ...], default: str) -> str:
        """A parameter whose value is one of the words ``allowed`` (e.g. ``expand=always``)."""
        p = params.get(name)
        if p is None:
            return default
        if p.value not in allowed:
            shown = p.value if isinstance(p.value, str) else _shown(p.value)
            self._error(f"'{name}=' takes one of {', '.join(allowed)}, got '{shown}'", p.span)
            return default
        return p.value

    def _mbconv(self, op: _Op) -> MBConvAlt | None:
        params = self._params(op, _OP_PARAMS["layer"]["mbconv"], "mbconv")
        kernel = self._candidate_set(params, "k", "kernel size", op.span)
        expansion = self._candidate_set(params, "e", "expansion", op.span)
        groups = self._candidate_set(params, "g", "groups", op.span) if "g" in params else None
        if groups is not None and groups.values == (1,):
            groups = None  # g=1 is the default: one IR for one network
        expand = self._word(params, "expand", EXPAND_MODES, "auto")
        if kernel is None or expansion is None:
            return None
        return MBConvAlt(kernel=kernel, expansion=expansion, groups=groups, expand_always=expand == "always",
                         span=op.span)

    @v_args(inline=False, meta=True)
    def layer(self, meta, items):
        repeat, first, *rest = items
        count, count_span = repeat if repeat is not None else (1, None)
        if count < 1 and count_span is not None:
            self._error("a repeat count must be at least 1", count_span)
        if self.layer_count <= MAX_LAYERS:
            self.layer_count += max(count, 1)
            if self.layer_count > MAX_LAYERS:  # reported once, at the line that crosses the limit
                self._error(f"too many layers: more than {MAX_LAYERS} in the network", first.span)
        if self.layer_count > MAX_LAYERS:
            return []  # stop building: the error is reported and a huge list would exhaust memory
        alts: list[MBConvAlt] = []
        skip = project = False
        for op in (first, *rest):
            if op.name == "skip":
                params = self._params(op, _OP_PARAMS["layer"]["skip"], "skip")
                if skip:
                    self._error("'skip' is listed twice", op.span)
                skip = True
                project = self._word(params, "project", SKIP_PROJECTIONS, "") == "conv" or project
            elif op.name == "mbconv":
                alt = self._mbconv(op)
                if alt is None:
                    continue
                if any(_same_kind(alt, a) for a in alts):
                    self._error("only one 'mbconv' per layer with the same g= and expand=: list its candidates "
                                "as k=<...> e=<...>", op.span)
                    continue
                overlap = [o for a in alts for o in a.options() if o in alt.options()]
                if overlap:
                    self._error(f"this 'mbconv' repeats option {overlap[0]} of an earlier one on the line", op.span)
                    continue
                alts.append(alt)
            else:
                self._error(f"unknown op '{op.name}' in a stage (known: mbconv, skip)", op.span)
        if not alts and not skip:
            return []
        head = {}
        if alts:
            a = alts[0]
            head = {"kernel": a.kernel, "expansion": a.expansion, "groups": a.groups, "expand_always": a.expand_always}
        layer = Layer(**head, more=tuple(alts[1:]), skip=skip, skip_project=project, span=first.span)
        return [layer] * max(count, 1)

    @v_args(inline=False, meta=True)
    def stage(self, meta, items):
        name, *rest = items
        params = [p for p in rest if isinstance(p, _Param)]
        layers = [layer for group in rest if isinstance(group, list) for layer in group]
        span = self._span(name)
        end = self._span(meta)  # from the name to the closing brace (the formatter's comments need it)
        span = Span(self.filename, span.line, span.column, end.end_line, end.end_column)
        fake = _Op("stage", params, span)
        ps = self._params(fake, _OP_PARAMS["stage"], f"stage '{name}'")
        c = self._whole(self._scalar(ps, "c", "output channels", True, self._span(name)), "channels", self._span(name), 1)
        s = self._whole(self._scalar(ps, "s", "stride", False, self._span(name), 1), "stride", self._span(name), 1)
        return ("stage", Stage(name=str(name), channels=c, stride=s, layers=tuple(layers), span=span), None)

    @v_args(inline=False, meta=True)
    def network(self, meta, items):
        name, *statements = items
        fields: dict = {}
        spans: dict[str, Span] = {}
        stages = []
        net_span = self._span(name)
        end = self._span(meta)  # from the name to the closing brace
        net_span = Span(self.filename, net_span.line, net_span.column, end.end_line, end.end_column)
        for key, value, span in statements:
            if key == "stage":
                stages.append(value)
                continue
            if key in fields:
                self._error(f"duplicate '{key}' statement", span)
                continue
            if value is None:
                fields[key] = None
                continue
            if key in ("classes", "width"):
                value, spans[key] = value
            else:
                spans[key] = span
            fields[key] = value
        bn_eps, bn_momentum = fields.pop("bn", None) or (BN_EPS, BN_MOMENTUM)
        for key in ("input", "classes", "stem", "head"):
            if key not in fields:
                self._error(f"network '{name}' has no '{key}' statement", net_span)
        if self.errors:
            return None
        spans["input"] = fields["input"].span
        return Network(
            name=str(name),
            input=fields["input"],
            classes=fields["classes"],
            width_multiplier=fields.get("width", 1.0),
            bn_eps=bn_eps,
            bn_momentum=bn_momentum,
            stem=fields["stem"],
            stages=tuple(stages),
            head=fields["head"],
            header_spans=spans,
            span=net_span,
        )

    def start(self, network):
        return network
