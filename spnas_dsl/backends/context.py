"""What an exporter works with: the build's context, the artifacts it records, and the one
input and output name of every exported model.

An exporter writes its files into ``ctx.staging`` and records them with ``ctx.add(...)``, giving
a function that runs the artifact on an NCHW float32 batch when the artifact computes the
network's outputs; the context compares those outputs with PyTorch's (``parity.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spnas_dsl.ir import Network

# The one input and the one output of every exported model, whatever the format.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass
class Artifact:
    """One file of a build. ``parity``: split name -> :class:`parity.Parity` as JSON."""

    path: str                       # relative to the output folder
    backend: str
    kind: str
    precision: str | None = None    # "float32" / "int8" for files that compute outputs
    checked: bool = False           # held to the float parity rule
    parity: dict[str, dict] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeldOut:
    """Held-out images (NCHW float32, normalised), their labels and the PyTorch logits."""

    images: Any
    labels: Any
    reference: Any
    description: str


@dataclass
class BuildContext:
    """What every exporter gets: the network, its PyTorch model, the parity data, the options."""

    network: Network
    text: str                        # canonical .spnas text of the network
    model: Any                       # the PyTorch module, eval mode
    staging: Path
    batch: Any                       # fixed random NCHW float32 batch
    reference: Any                   # PyTorch outputs on ``batch``
    heldout: HeldOut | None = None
    calibration: Any = None          # NCHW float32 samples for int8 calibration (None: random)
    calibration_source: str = ""
    normalization: dict | None = None  # {"mean": [...], "std": [...]} of the data, when known
    int8: bool = False
    tolerance: float = 1e-4
    artifacts: list[Artifact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = print

    @property
    def stem(self) -> str:
        """File name stem of the artifacts: the network's name."""
        return self.network.name

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.log(f"note: {message}")

    def add(self, path: str | Path, backend: str, kind: str, *, run: Callable | None = None,
            precision: str | None = None, checked: bool | None = None, **info) -> Artifact:
        """Record a file written under ``staging``; with ``run`` (NCHW batch -> outputs) its
        outputs are compared with PyTorch's on the random batch and the held-out data."""
        from spnas_dsl.backends.parity import accuracy, compare

        rel = str(Path(path).relative_to(self.staging)) if Path(path).is_absolute() else str(path)
        artifact = Artifact(rel, backend, kind, precision=precision, info=dict(info))
        if run is not None:
            artifact.precision = precision or "float32"
            artifact.checked = artifact.precision == "float32" if checked is None else checked
            artifact.parity["random"] = compare(run(self.batch), self.reference).to_json()
            if self.heldout is not None:
                out = run(self.heldout.images)
                artifact.parity["heldout"] = compare(out, self.heldout.reference).to_json()
                artifact.info["heldout_accuracy"] = accuracy(out, self.heldout.labels)
        self.artifacts.append(artifact)
        return artifact

    def has(self, path: str) -> bool:
        return any(a.path == path for a in self.artifacts)

    def metadata(self, layout: str, input_shape: list) -> dict:
        """What every model file records about itself (ONNX ``metadata_props``, TFLite ``Model.metadata``):
        the network, the hash of its architecture text, the input and output and the normalisation,
        so that a file found alone says what it computes and how to feed it."""
        import hashlib

        return {
            "producer": "spnas",
            "network": self.network.name,
            "architecture_sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest(),
            "architecture": self.text,
            "input": {"name": INPUT_NAME, "layout": layout, "shape": input_shape, "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": [input_shape[0], self.network.classes],
                       "meaning": "logits (no softmax)"},
            "normalization": self.normalization,
            "normalization_note": None if self.normalization else (
                "unknown at build time (no --data): feed images normalised as the network was trained"),
            "batchnorm": {"eps": self.network.bn_eps, "momentum": self.network.bn_momentum},
        }

    def write_state_dict(self, backend: str) -> Path:
        """``<name>.safetensors`` (once per build, whichever backend asks first)."""
        from spnas_dsl.backends.weights import metadata_for, state_dict_bytes

        path = self.staging / f"{self.stem}.safetensors"
        if not self.has(path.name):
            path.write_bytes(state_dict_bytes(self.model, metadata_for(self.text)))
            self.add(path, backend, "state_dict", tensors=len(self.model.state_dict()))
        return path

    def failures(self) -> list[str]:
        """One line per float artifact whose outputs differ from PyTorch's beyond the tolerance."""
        out = []
        for a in self.artifacts:
            if not a.checked:
                continue
            for split, p in a.parity.items():
                if not (p["relative"] <= self.tolerance):
                    out.append(f"{a.path} ({split}): max abs diff {p['max_abs_diff']:.3g} = "
                               f"{p['relative']:.3g} of the output scale {p['max_abs_reference']:.3g} "
                               f"(limit {self.tolerance:g})")
        return out


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict
    artifacts: list[Artifact]
    notes: list[str]
