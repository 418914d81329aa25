"""The intermediate representation: typed, frozen pydantic models of a network or space.

A concrete network and a search space are the same IR: a concrete network is a space in
which every layer has exactly one candidate. Source spans are kept on every node for
error messages but are not part of a node's identity: two IRs are equal when they
describe the same network, wherever they came from.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spnas_dsl.errors import Span

KERNEL_SIZES = (3, 5, 7)
EXPANSIONS = (1, 2, 3, 4, 5, 6)
STRIDES = (1, 2)
# BatchNorm settings when a network declares none: the paper's TensorFlow code (epsilon 1e-3,
# decay 0.99, i.e. PyTorch momentum 0.01). timm's spnasnet_100 uses PyTorch's defaults instead
# (eps 1e-5, momentum 0.1): examples/spnasnet_timm.spnas declares them.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# Size limits of the language (docs/language.md, "Limits"). They exist so that a typo such as
# `99999999x mbconv` is a located error in milliseconds instead of a multi-GB, minutes-long
# expansion; each is far above any network in the literature.
MAX_FILE_BYTES = 128 * 1024       # a .spnas file (shipped files are ~1 KB; Lark parses ~0.4 MB/s)
MAX_NUMBER_CHARS = 32             # one number token (longer ones are never meaningful)
MAX_LAYERS = 1000                 # MBConv layers per network, skipped ones and repeats included
MAX_CHANNELS = 16384              # any channel count, as written and after the width multiplier
MAX_INPUT_SIDE = 8192             # input height and width
MAX_CLASSES = 100_000             # outputs of the classifier
MAX_WIDTH = 16.0                  # width multiplier
MAX_STEM_KERNEL = 15              # stem conv kernel size
GROUPS = (1, 2, 4)  # groups of the 1x1 convolutions (a channel shuffle follows the first)
EXPAND_MODES = ("auto", "always")  # auto: no 1x1 expansion conv at e=1 (depthwise-separable)
SKIP_PROJECTIONS = ("conv",)  # `skip project=conv`: 1x1 conv + BN + ReLU where the shape changes


class Node(BaseModel):
    """Base IR node: frozen, no unknown fields, a source span that equality ignores."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, defer_build=True)
    span: Span | None = Field(default=None, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.model_dump() == other.model_dump()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self.model_dump_json())


class CandidateSet(Node):
    """A candidate set ``<v1,v2,...>`` (sorted, no duplicates); a singleton is one value."""

    values: tuple[int, ...]

    @property
    def is_singleton(self) -> bool:
        return len(self.values) == 1

    @property
    def max(self) -> int:
        return max(self.values)

    @property
    def min(self) -> int:
        return min(self.values)


class Option(BaseModel):
    """One option of a layer (one member of its candidate sets): an MBConv variant, or a skip.

    MBConv: ``kernel``, ``expansion``, ``groups`` of both 1x1 convs (a channel shuffle follows
    the first when > 1) and ``expand_always`` (keep the 1x1 expansion conv at e=1; normalised
    to False for e > 1, where the conv is always there). Skip: ``project`` says the skip becomes
    a 1x1 conv + BN + ReLU where the layer changes the shape (identity elsewhere).
    Text form (:meth:`__str__`): ``k3e6``, ``k3e1`` (depthwise-separable), ``k3e1x`` (e=1 with
    its expansion conv), ``k3e1xg2`` (grouped), ``skip``, ``skip_proj``.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)
    kernel: int | None = None
    expansion: int | None = None
    groups: int = 1
    expand_always: bool = False
    project: bool = False

    @model_validator(mode="after")
    def _normalise(self) -> Option:
        # Why: k3e6 written with expand=always is the same block; keep one Option per block.
        if self.expand_always and self.expansion != 1:
            object.__setattr__(self, "expand_always", False)
        return self

    @property
    def is_skip(self) -> bool:
        return self.kernel is None

    @property
    def has_expand_conv(self) -> bool:
        """Whether the block has its 1x1 expansion conv (e > 1, or e = 1 with ``expand=always``)."""
        return not self.is_skip and (self.expansion != 1 or self.expand_always)

    def __str__(self) -> str:
        if self.is_skip:
            return "skip_proj" if self.project else "skip"
        text = f"k{self.kernel}e{self.expansion}" + ("x" if self.expand_always else "")
        return text + (f"g{self.groups}" if self.groups != 1 else "")


SKIP = Option()


class MBConvAlt(Node):
    """One ``mbconv`` alternative of a layer line: every (kernel, expansion, groups) it lists."""

    kernel: CandidateSet
    expansion: CandidateSet
    groups: CandidateSet | None = None  # None: <1>
    expand_always: bool = False

    def options(self) -> list[Option]:
        """The alternative's options, by kernel, then expansion, then groups."""
        groups = self.groups.values if self.groups is not None else (1,)
        return [Option(kernel=k, expansion=e, groups=g, expand_always=self.expand_always)
                for k in self.kernel.values for e in self.expansion.values for g in groups]


class Layer(Node):
    """An MBConv layer (or a skip). ``kernel``/``expansion`` are None for a skip-only layer.

    ``kernel``, ``expansion``, ``groups`` and ``expand_always`` are the line's first ``mbconv``;
    ``more`` holds further ``mbconv`` alternatives of the same line (e.g. a grouped variant),
    ``skip_project`` marks ``skip project=conv``.
    """

    kernel: CandidateSet | None = None
    expansion: CandidateSet | None = None
    groups: CandidateSet | None = None
    expand_always: bool = False
    more: tuple[MBConvAlt, ...] = ()
    skip: bool = False
    skip_project: bool = False

    @property
    def alternatives(self) -> list[MBConvAlt]:
        """Every ``mbconv`` alternative of the line, the first one first."""
        if self.kernel is None or self.expansion is None:
            return list(self.more)
        first = MBConvAlt(kernel=self.kernel, expansion=self.expansion, groups=self.groups,
                          expand_always=self.expand_always, span=self.kernel.span)
        return [first, *self.more]

    @property
    def options(self) -> list[Option]:
        """Every candidate of this layer, MBConv options first (by alternative, kernel, expansion)."""
        opts: list[Option] = []
        for alt in self.alternatives:
            opts += [o for o in alt.options() if o not in opts]
        return opts + ([Option(project=True) if self.skip_project else SKIP] if self.skip else [])

    @property
    def is_concrete(self) -> bool:
        return len(self.options) == 1

    @property
    def is_searched(self) -> bool:
        return len(self.options) > 1

    @property
    def is_skip_only(self) -> bool:
        return self.kernel is None and not self.more and self.skip

    @classmethod
    def from_option(cls, option: Option, span: Span | None = None) -> Layer:
        """The concrete layer for one option."""
        if option.is_skip:
            return cls(skip=True, skip_project=option.project, span=span)
        groups = CandidateSet(values=(option.groups,)) if option.groups != 1 else None
        return cls(kernel=CandidateSet(values=(option.kernel,)), expansion=CandidateSet(values=(option.expansion,)),
                   groups=groups, expand_always=option.expand_always, span=span)


class Stem(Node):
    """First convolution: k x k conv + BN + ReLU."""

    kernel: int
    channels: int
    stride: int


class Stage(Node):
    """A run of layers with one output width; ``stride`` applies to the first layer."""

    name: str
    channels: int
    stride: int
    layers: tuple[Layer, ...]


class Head(Node):
    """1x1 conv + BN + ReLU, global average pool, dropout, fully connected."""

    channels: int
    dropout: float = 0.0


class InputSize(Node):
    height: int
    width: int
    channels: int

    def __str__(self) -> str:
        return f"{self.height}x{self.width}x{self.channels}"


class Comment(BaseModel):
    """A source comment, kept so that ``fmt`` never loses a user's notes."""

    model_config = ConfigDict(frozen=True, defer_build=True)
    line: int
    text: str
    trailing: bool = False


class Network(Node):
    """A whole network or search space."""

    name: str
    input: InputSize
    classes: int
    width_multiplier: float = 1.0
    bn_eps: float = BN_EPS            # every BatchNorm's epsilon (`bn eps=...`)
    bn_momentum: float = BN_MOMENTUM  # PyTorch convention: running = (1 - m) * running + m * batch
    stem: Stem
    stages: tuple[Stage, ...]
    head: Head
    # Layout details kept for the formatter only (not part of the network's identity).
    comments: tuple[Comment, ...] = Field(default=(), exclude=True, repr=False)
    header_spans: dict[str, Span] = Field(default_factory=dict, exclude=True, repr=False)

    @property
    def is_concrete(self) -> bool:
        return all(layer.is_concrete for _, _, layer in self.iter_layers())

    def iter_layers(self) -> Iterator[tuple[Stage, int, Layer]]:
        """(stage, index within the stage, layer) over every layer in network order."""
        for stage in self.stages:
            for i, layer in enumerate(stage.layers):
                yield stage, i, layer

    def replace_layers(self, layers: list[Layer]) -> Network:
        """A new network with the same macro-architecture and these layers, in order."""
        it = iter(layers)
        stages = tuple(s.model_copy(update={"layers": tuple(next(it) for _ in s.layers)}) for s in self.stages)
        return self.model_copy(update={"stages": stages})
