"""Shared test fixtures: where the repository and its shipped files are.

Keep this small: fixtures used by more than one test module only.
"""

from __future__ import annotations

import os
import sys

# The suite runs as two xdist workers on two cores: one thread each (and in the
# subprocesses they start) avoids oversubscription, which slows torch down many times.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SPACES = sorted((REPO / "spaces").glob("*.spnas"))
EXAMPLES = sorted((REPO / "examples").glob("*.spnas"))
SHIPPED = SPACES + EXAMPLES
# The console script of the interpreter running the tests (the project's venv).
SPNASC = Path(sys.executable).parent / "spnasc"


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def spnasc() -> Path:
    """Path of the installed ``spnasc`` console script."""
    if not SPNASC.exists():
        pytest.skip(f"{SPNASC} is not installed")
    return SPNASC


@pytest.fixture
def spnas_file(tmp_path):
    """``spnas_file(text_or_bytes, name="net.spnas") -> Path``: write a source file in tmp_path."""

    def write(content: str | bytes, name: str = "net.spnas") -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def valid_networks():
    """A hypothesis strategy of random *valid* IR networks, built directly (not parsed).

    Random stages (channels from a small pool so that equal widths, hence legal first-layer
    skips, occur), strides 1/2, candidate subsets of the language's kernels and expansions,
    skip only where it keeps the shape, runs of equal layers, width multipliers, dropout.
    Use it as ``data.draw(valid_networks)`` in a ``@given(data=st.data())`` test.
    """
    from hypothesis import strategies as st

    from spnas_dsl.ir import EXPANSIONS, KERNEL_SIZES, CandidateSet, Head, InputSize, Layer, Network, Stage, Stem

    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
    names = st.builds(  # identifiers; keywords such as `stage` or `skip` are valid names too
        str.__add__,
        st.sampled_from(list(letters) + ["stage", "skip", "mbconv", "x", "network", "input"]),
        st.text(letters + "0123456789", max_size=6),
    )
    channels = st.sampled_from([1, 3, 8, 16, 24, 32, 40, 320])
    strides = st.sampled_from([1, 2])

    def subset(values):
        return st.sets(st.sampled_from(values), min_size=1).map(lambda s: CandidateSet(values=tuple(sorted(s))))

    # strategies built once: hypothesis is much slower when it meets new strategy objects
    kernels, expansions, stem_kernels = subset(KERNEL_SIZES), subset(EXPANSIONS), st.sampled_from([1, 3, 5, 7])
    kinds, kinds_no_skip = st.sampled_from(["mbconv", "mbconv|skip", "skip"]), st.just("mbconv")
    layer_counts, repeat = st.integers(1, 4), st.integers(0, 3)
    widths = st.one_of(st.sampled_from([0.35, 0.5, 1.0, 1.4]), st.floats(0.05, 4.0))
    dropouts = st.one_of(st.sampled_from([0.0, 0.2]), st.floats(0.0, 1.0, exclude_max=True))

    @st.composite
    def networks(draw):
        stem = Stem(kernel=draw(stem_kernels), channels=draw(channels), stride=draw(strides))
        stages, in_channels = [], stem.channels
        for name in draw(st.lists(names, min_size=1, max_size=5, unique=True)):
            out_channels, stride = draw(channels), draw(strides)
            layers: list[Layer] = []
            for i in range(draw(layer_counts)):
                if layers and draw(repeat) == 0:
                    layers.append(layers[-1])  # runs of equal layers (folded into `Nx`)
                    continue
                may_skip = i > 0 or (stride == 1 and out_channels == in_channels)
                kind = draw(kinds if may_skip else kinds_no_skip)
                if kind == "skip":
                    layers.append(Layer(skip=True))
                else:
                    kernel, expansion = draw(kernels), draw(expansions)
                    layers.append(Layer(kernel=kernel, expansion=expansion, skip=kind != "mbconv"))
            stages.append(Stage(name=name, channels=out_channels, stride=stride, layers=tuple(layers)))
            in_channels = out_channels
        total_stride = stem.stride * 2 ** sum(s.stride == 2 for s in stages)
        return Network(
            name=draw(names),
            input=InputSize(
                height=draw(st.integers(total_stride, 2 * total_stride + 40)),
                width=draw(st.integers(total_stride, 2 * total_stride + 40)),
                channels=draw(st.integers(1, 4)),
            ),
            classes=draw(st.integers(1, 1000)),
            width_multiplier=draw(widths),
            stem=stem,
            stages=tuple(stages),
            head=Head(
                channels=draw(st.integers(1, 2048)),
                dropout=draw(dropouts),
            ),
        )

    return networks()


def pytest_generate_tests(metafunc):
    """A test that takes ``shipped_file`` runs once per shipped .spnas file (spaces/, examples/)."""
    if "shipped_file" in metafunc.fixturenames:
        metafunc.parametrize("shipped_file", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
