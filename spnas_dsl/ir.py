"""The intermediate representation: typed, frozen pydantic models of a network or space.

A concrete network and a search space are the same IR: a concrete network is a space in
which every layer has exactly one candidate. Source spans are kept on every node for
error messages but are not part of a node's identity: two IRs are equal when they
describe the same network, wherever they came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class Node(BaseModel):
    """Base IR node: frozen, no unknown fields, a source span that equality ignores."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, defer_build=True)
    span: Span | None = Field(default=None, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.model_dump() == other.model_dump()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self.model_dump_json())


class Choice(Node):
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
    """One concrete choice of a searched layer: MBConv with (kernel, expansion), or skip."""

    model_config = ConfigDict(frozen=True, defer_build=True)
    kernel: int | None = None
    expansion: int | None = None

    @property
    def is_skip(self) -> bool:
        return self.kernel is None

    def __str__(self) -> str:
        return "skip" if self.is_skip else f"k{self.kernel}e{self.expansion}"


SKIP = Option()


class Layer(Node):
    """An MBConv layer (or a skip). ``kernel``/``expansion`` are None for a skip-only layer."""

    kind: Literal["mbconv"] = "mbconv"
    kernel: Choice | None = None
    expansion: Choice | None = None
    skip: bool = False

    @property
    def options(self) -> list[Option]:
        """Every candidate of this layer, MBConv options first (by kernel, then expansion)."""
        opts = []
        if self.kernel is not None and self.expansion is not None:
            opts = [Option(kernel=k, expansion=e) for k in self.kernel.values for e in self.expansion.values]
        return opts + ([SKIP] if self.skip else [])

    @property
    def is_concrete(self) -> bool:
        return len(self.options) == 1

    @property
    def is_searched(self) -> bool:
        return len(self.options) > 1

    @property
    def is_skip_only(self) -> bool:
        return self.kernel is None and self.skip

    @classmethod
    def from_option(cls, option: Option, span: Span | None = None) -> Layer:
        """The concrete layer for one option."""
        if option.is_skip:
            return cls(skip=True, span=span)
        return cls(kernel=Choice(values=(option.kernel,)), expansion=Choice(values=(option.expansion,)), span=span)


class Stem(Node):
    """First convolution: k x k conv + BN + ReLU."""

    kind: Literal["conv"] = "conv"
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

    kind: Literal["conv"] = "conv"
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
