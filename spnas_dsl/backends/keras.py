"""IR -> Keras: the TFLite path builds the network from the IR, NHWC, op for op.

No ONNX in between (see docs/build.md for why not onnx-tf / onnx2tf). The Keras model has
the PyTorch network's structure, and ``copy_torch_weights`` moves a PyTorch state dict into
it with the layout changes TensorFlow needs:

- conv weight OIHW -> HWIO: ``transpose(2, 3, 1, 0)``
- depthwise weight (C, 1, k, k) -> (k, k, C, 1): ``transpose(2, 3, 0, 1)``
- BatchNorm ``[gamma, beta, running_mean, running_var]``, the network's epsilon (``bn eps=``,
  default 1e-3) and momentum (TF's ``1 - momentum``)
- Dense kernel ``W.T``

Padding: stride 1 with an odd kernel is ``'same'`` (exact); any other case (stride 2) is an
explicit ``ZeroPadding2D(k // 2)`` then ``'valid'``, which is PyTorch's symmetric padding.
TensorFlow's stride-2 ``'same'`` pads bottom/right only and does not match.

Besides whole networks there are builders for one part at a time (stem, one MBConv option
at a given input shape, head): the latency tables time exactly these (``tflite.py``).
Every builder returns a ``keras.Model`` with a fixed batch of 1 (what a phone runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from spnas_dsl.builder import BlockSite, build_blocks
from spnas_dsl.errors import BuildError
from spnas_dsl.ir import BN_EPS, BN_MOMENTUM, Network, Option
from spnas_dsl.ops import Site, op_for
from spnas_dsl.passes import require_concrete
from spnas_dsl.shapes import infer_shapes

if TYPE_CHECKING:  # pragma: no cover
    import keras

# TF BatchNormalization momentum = 1 - PyTorch momentum (only matters for training).
KERAS_BN_MOMENTUM = 1 - BN_MOMENTUM


def import_keras():
    """Keras (and TensorFlow) with TensorFlow's C++ start-up chatter turned down."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


@dataclass
class _Recorder:
    """Builds layers and remembers which PyTorch module each one takes its weights from."""

    keras: Any
    prefix: str = ""            # torch module path of the part being built ("" or "blocks.2.0.")
    records: list[tuple[Any, str, str]] = field(default_factory=list)  # (layer, torch name, kind)
    bn_eps: float = BN_EPS                # the network's `bn eps=` (parts for timing: the default)
    bn_momentum: float = BN_MOMENTUM      # PyTorch convention; Keras gets 1 - momentum

    def _name(self, torch_name: str) -> str:
        return (self.prefix + torch_name).replace(".", "_")

    def _pad(self, x, kernel: int, stride: int, torch_name: str) -> tuple[Any, str]:
        if stride == 1 and kernel % 2 == 1:
            return x, "same"
        if kernel // 2:
            x = self.keras.layers.ZeroPadding2D(kernel // 2, name=self._name(torch_name) + "_pad")(x)
        return x, "valid"

    def conv(self, x, torch_name: str, filters: int, kernel: int, stride: int = 1):
        x, padding = self._pad(x, kernel, stride, torch_name)
        layer = self.keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                                         name=self._name(torch_name))
        self.records.append((layer, self.prefix + torch_name, "conv"))
        return layer(x)

    def grouped_pointwise(self, x, torch_name: str, filters: int, groups: int):
        """A grouped 1x1 conv as ``groups`` slices, one dense 1x1 conv each, concatenated.

        Why not ``Conv2D(groups=g)``: TFLite's reference CONV_2D kernel does not run grouped
        convolutions everywhere; slices + concat are plain ops on every runtime.
        """
        if groups == 1:
            return self.conv(x, torch_name, filters, 1)
        cin = x.shape[-1]
        step_in, step_out = cin // groups, filters // groups
        outs = []
        for j in range(groups):
            part = _channel_slice(j * step_in, (j + 1) * step_in, name=self._name(torch_name) + f"_in{j}")(x)
            layer = self.keras.layers.Conv2D(step_out, 1, padding="valid", use_bias=False,
                                             name=self._name(torch_name) + f"_g{j}")
            self.records.append((layer, self.prefix + torch_name, f"conv_group:{j}:{groups}"))
            outs.append(layer(part))
        return self.keras.layers.Concatenate(axis=-1, name=self._name(torch_name))(outs)

    def shuffle(self, x, torch_name: str, groups: int):
        """Channel shuffle in NHWC: (H, W, g, C/g) -> (H, W, C/g, g) -> (H, W, C)."""
        h, w, c = x.shape[1:]
        layers = self.keras.layers
        x = layers.Reshape((h, w, groups, c // groups), name=self._name(torch_name) + "_split")(x)
        x = layers.Permute((1, 2, 4, 3), name=self._name(torch_name) + "_swap")(x)
        return layers.Reshape((h, w, c), name=self._name(torch_name))(x)

    def depthwise(self, x, torch_name: str, kernel: int, stride: int):
        x, padding = self._pad(x, kernel, stride, torch_name)
        layer = self.keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                                                  name=self._name(torch_name))
        self.records.append((layer, self.prefix + torch_name, "depthwise"))
        return layer(x)

    def bn(self, x, torch_name: str):
        layer = self.keras.layers.BatchNormalization(epsilon=self.bn_eps, momentum=1 - self.bn_momentum,
                                                     name=self._name(torch_name))
        self.records.append((layer, self.prefix + torch_name, "bn"))
        return layer(x)

    def relu(self, x, torch_name: str):
        return self.keras.layers.ReLU(name=self._name(torch_name))(x)

    def dense(self, x, torch_name: str, units: int):
        layer = self.keras.layers.Dense(units, name=self._name(torch_name))
        self.records.append((layer, self.prefix + torch_name, "dense"))
        return layer(x)

    def child(self, prefix: str) -> _Recorder:
        return _Recorder(self.keras, prefix, self.records, self.bn_eps, self.bn_momentum)


# -- the parts (same structure and names as spnas_dsl.compiler.blocks) ----------------------------

def _stem(r: _Recorder, x, kernel: int, channels: int, stride: int):
    x = r.conv(x, "conv_stem", channels, kernel, stride)
    return r.relu(r.bn(x, "bn1"), "act1")


def _block(r: _Recorder, x, option: Option, site: Site):
    """One option's block: its op's Keras lowering (``spnas_dsl.ops``); ``x`` itself for an identity skip."""
    return op_for(option, site).keras(r, x, option, site)


def _head(r: _Recorder, x, channels: int, classes: int, dropout: float):
    x = r.relu(r.bn(r.conv(x, "conv_head", channels, 1), "bn2"), "act2")
    x = r.keras.layers.GlobalAveragePooling2D(name=r._name("global_pool"))(x)
    if dropout > 0:
        x = r.keras.layers.Dropout(dropout, name=r._name("dropout"))(x)
    return r.dense(x, "classifier", classes)


def _input(keras, hwc: tuple[int, int, int], name: str = "input"):
    return keras.Input(shape=tuple(hwc), batch_size=1, name=name)


def _finish(keras, inputs, outputs, records, name: str, state_dict) -> keras.Model:
    model = keras.Model(inputs, outputs, name=name)
    if state_dict is not None:
        copy_torch_weights(records, state_dict)
    return model


# -- public builders --------------------------------------------------------------------------------

def build_keras_model(network: Network, state_dict: dict | None = None) -> keras.Model:
    """The Keras model (NHWC, batch 1) of a concrete network; with ``state_dict`` (the PyTorch
    network's, e.g. ``lower_to_network(net).state_dict()``) its weights are copied in."""
    require_concrete(network)
    keras = import_keras()
    shapes = infer_shapes(network)
    r = _Recorder(keras, bn_eps=network.bn_eps, bn_momentum=network.bn_momentum)
    inputs = _input(keras, shapes.input_hwc)
    x = _stem(r, inputs, network.stem.kernel, shapes.stem_out[2], network.stem.stride)

    def block(site: BlockSite):
        nonlocal x
        if site.op.name == "identity":
            return None  # absent from the PyTorch blocks too
        x = _block(r.child(site.prefix), x, site.option, site.site)
        return x

    build_blocks(network, block, shapes)
    x = _head(r, x, shapes.head_channels, shapes.classes, network.head.dropout)
    return _finish(keras, inputs, x, r.records, _keras_name(network.name), state_dict)


def build_keras_stem(input_hwc: tuple[int, int, int], kernel: int, channels: int, stride: int,
                     state_dict: dict | None = None) -> keras.Model:
    """The stem alone: conv k x k (stride) + BN + ReLU. ``state_dict`` keys: ``conv_stem.*, bn1.*``."""
    keras = import_keras()
    r = _Recorder(keras)
    inputs = _input(keras, input_hwc)
    return _finish(keras, inputs, _stem(r, inputs, kernel, channels, stride), r.records, "stem", state_dict)


def build_keras_mbconv(in_hwc: tuple[int, int, int], out_channels: int, option: Option, stride: int,
                       state_dict: dict | None = None) -> keras.Model:
    """One MBConv option at input shape ``in_hwc`` (H, W, C). ``state_dict`` has the block's own
    keys (``conv_pw.weight, bn1.weight, ...``, as in ``blocks.torch_block(...).state_dict()``).
    A skip option has no model: it costs nothing."""
    site = Site(tuple(in_hwc), out_channels, stride)
    if op_for(option, site).name == "identity":
        raise BuildError("a skip layer has no model to build (it is the identity)")
    keras = import_keras()
    r = _Recorder(keras)
    inputs = _input(keras, in_hwc)
    x = _block(r, inputs, option, site)
    name = f"mbconv_{option}_s{stride}"
    return _finish(keras, inputs, x, r.records, name, state_dict)


def build_keras_head(in_hwc: tuple[int, int, int], channels: int, classes: int, dropout: float = 0.0,
                     state_dict: dict | None = None) -> keras.Model:
    """The head alone: 1x1 conv + BN + ReLU, global average pool, (dropout), dense.
    ``state_dict`` keys: ``conv_head.*, bn2.*, classifier.*``."""
    keras = import_keras()
    r = _Recorder(keras)
    inputs = _input(keras, in_hwc)
    return _finish(keras, inputs, _head(r, inputs, channels, classes, dropout), r.records, "head", state_dict)


def build_keras_part(network: Network, part: str | int, option: Option | None = None,
                     state_dict: dict | None = None) -> keras.Model:
    """One part of ``network`` at its place in the network: ``"stem"``, ``"head"`` or a layer
    index (as in ``infer_shapes(network).layers[i].index``) with the ``option`` to build
    (default: the layer's only candidate). Works on search spaces too, for any candidate."""
    shapes = infer_shapes(network)
    if part == "stem":
        return build_keras_stem(shapes.input_hwc, network.stem.kernel, shapes.stem_out[2], network.stem.stride,
                                state_dict)
    if part == "head":
        return build_keras_head(shapes.head_in, shapes.head_channels, shapes.classes, network.head.dropout,
                                state_dict)
    if not isinstance(part, int) or not 0 <= part < len(shapes.layers):
        raise BuildError(f"unknown part {part!r}: expected 'stem', 'head' or a layer index 0..{len(shapes.layers) - 1}")
    shape = shapes.layers[part]
    if option is None:
        if not shape.layer.is_concrete:
            raise BuildError(f"layer {part} ({shape.name}) has several candidates: pass the option to build")
        option = shape.layer.options[0]
    elif option not in shape.layer.options:
        known = ", ".join(str(o) for o in shape.layer.options)
        raise BuildError(f"{option} is not a candidate of layer {part} ({shape.name}; candidates: {known})")
    return build_keras_mbconv(shape.in_hwc, shape.out_hwc[2], option, shape.stride, state_dict)


# -- weights ----------------------------------------------------------------------------------------

def _convert(kind: str, name: str, sd: dict) -> list:
    import numpy as np

    def get(key: str):
        if key not in sd:
            raise BuildError(f"cannot copy weights to Keras: '{key}' is not in the state dict")
        value = sd[key]
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        return value.astype(np.float32)

    if kind == "conv":
        return [get(f"{name}.weight").transpose(2, 3, 1, 0)]            # OIHW -> HWIO
    if kind.startswith("conv_group:"):  # output rows of group j of a grouped 1x1 conv
        j, groups = (int(v) for v in kind.split(":")[1:])
        w = get(f"{name}.weight")
        step = w.shape[0] // groups
        return [w[j * step:(j + 1) * step].transpose(2, 3, 1, 0)]
    if kind == "depthwise":
        return [get(f"{name}.weight").transpose(2, 3, 0, 1)]            # (C,1,k,k) -> (k,k,C,1)
    if kind == "bn":
        return [get(f"{name}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
    if kind == "dense":
        return [get(f"{name}.weight").T, get(f"{name}.bias")]
    raise AssertionError(kind)


def copy_torch_weights(records: list[tuple[Any, str, str]], state_dict: dict) -> None:
    """Copy PyTorch tensors into the recorded Keras layers, checking every shape."""
    for layer, name, kind in records:
        values = _convert(kind, name, state_dict)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(v.shape) for v in values] != expected:
            raise BuildError(f"cannot copy weights to Keras layer '{layer.name}' from '{name}': shapes "
                             f"{[tuple(v.shape) for v in values]} vs {expected}")
        layer.set_weights(values)


@lru_cache(maxsize=1)
def _channel_slice_class():
    """A Keras layer that keeps channels ``[start, stop)`` of an NHWC tensor (defined lazily: no
    Keras import at module import)."""
    keras = import_keras()

    class ChannelSlice(keras.layers.Layer):
        def __init__(self, start: int, stop: int, **kwargs):
            super().__init__(**kwargs)
            self.start, self.stop = start, stop

        def call(self, x):
            return x[..., self.start:self.stop]

        def get_config(self):
            return {**super().get_config(), "start": self.start, "stop": self.stop}

    return ChannelSlice


def _channel_slice(start: int, stop: int, name: str):
    return _channel_slice_class()(start, stop, name=name)


def _keras_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name) or "network"
