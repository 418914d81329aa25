"""``--to tflite``: TFLite flatbuffers from the Keras model of the IR (``keras.py``).

Reusable pieces (the latency tables time single parts with them):

- ``keras_to_tflite(model, int8=False, representative=None) -> bytes``: float32, or full-integer
  int8 (int8 input and output) with a representative data set (NHWC float32 samples).
- ``network_tflite(network, state_dict=None, ...) -> bytes``: a whole concrete network.
- ``build_layer_tflite(shape, option, ...) -> bytes``: one MBConv option at the input shape of
  ``shape`` (a ``shapes.LayerShape``, e.g. ``infer_shapes(space).layers[i]``), for any candidate
  of a search space; ``build_stem_tflite(network)``, ``build_head_tflite(network)`` and
  ``build_part_tflite(network, "stem" | "head" | index, option)`` for the rest.
- ``TFLiteModel(bytes_or_path, num_threads=1)``: an ``ai_edge_litert`` interpreter (XNNPACK,
  one thread by default) with ``run(nhwc_float32)`` (quantizing int8 inputs and dequantizing
  outputs) and ``invoke()`` for timing the loaded input as is.

Part models are built with Keras' initial weights unless ``state_dict`` is given: the
running time of a float model does not depend on its weight values. An int8 part is
calibrated on N(0,1) samples unless ``representative`` is given.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from spnas_dsl.backends.context import INPUT_NAME, OUTPUT_NAME
from spnas_dsl.backends.quiet import quiet_output
from spnas_dsl.errors import BuildError
from spnas_dsl.ir import Network, Option
from spnas_dsl.shapes import LayerShape, infer_shapes, is_identity


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def random_representative(input_hwc: tuple[int, int, int], samples: int = 32, seed: int = 0) -> np.ndarray:
    """N(0,1) NHWC samples (batch 1 each): the calibration of a part when no data is given."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((samples, 1, *input_hwc), dtype=np.float32)


def keras_to_tflite(model, *, int8: bool = False, representative: Iterable[np.ndarray] | None = None) -> bytes:
    """Convert a Keras model with ``tf.lite.TFLiteConverter.from_keras_model``.

    ``int8``: full-integer post-training quantization (int8 weights and activations, int8
    input and output tensors); ``representative`` is an iterable of NHWC float32 arrays of
    the model's input shape (batch 1), default 32 random N(0,1) samples.
    """
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        if representative is None:
            representative = random_representative(tuple(model.input_shape[1:]))
        samples = [np.asarray(s, dtype=np.float32).reshape((1, *model.input_shape[1:])) for s in representative]
        if not samples:
            raise BuildError("int8 quantization needs at least one representative sample")

        def dataset():
            for s in samples:
                yield [s]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    failure = None
    with quiet_output() as log, warnings.catch_warnings():
        # int8 I/O without "quantized_input_stats" (a TF1 option): expected, harmless
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        try:
            content = bytes(converter.convert())
        except Exception as exc:  # noqa: BLE001 - the converter raises many kinds; report them as a build failure
            failure = exc
    if failure is not None:
        raise BuildError(f"TFLite conversion failed: {type(failure).__name__}: {failure}\n{log.text[-2000:]}")
    return content


SPNAS_METADATA = "spnas"  # the name of our entry in the flatbuffer's Model.metadata


def finish_tflite(content: bytes, metadata: dict, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME) -> bytes:
    """Name the model's input and output as in ONNX and record ``metadata`` in the flatbuffer.

    The converter names the signature's output ``output_0`` and the tensors
    ``serving_default_input:0`` / ``StatefulPartitionedCall_1:0``; this renames the input and
    output (signature and tensor names) and adds a ``Model.metadata`` entry ``spnas`` whose
    buffer is the UTF-8 JSON of ``metadata`` (the schema's name -> buffer mechanism the
    converter uses itself for ``min_runtime_version``; read it back with :func:`read_metadata`).
    """
    import json

    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise BuildError(f"expected one input and one output in the TFLite model, got {len(graph.inputs)} and "
                         f"{len(graph.outputs)}")
    graph.tensors[graph.inputs[0]].name = input_name
    graph.tensors[graph.outputs[0]].name = output_name
    for signature in model.signatureDefs or []:
        for tensor_map in signature.inputs:
            tensor_map.name = input_name
        for tensor_map in signature.outputs:
            tensor_map.name = output_name
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = SPNAS_METADATA, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (SPNAS_METADATA, SPNAS_METADATA.encode())]
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(model: bytes | str | Path) -> dict | None:
    """The ``spnas`` metadata of a TFLite file (None when it has none)."""
    import json

    from ai_edge_litert.tools import flatbuffer_utils

    content = bytes(model) if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    parsed = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    for entry in parsed.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == SPNAS_METADATA:
            return json.loads(bytes(parsed.buffers[entry.buffer].data).decode("utf-8"))
    return None


def network_tflite(network: Network, state_dict: dict | None = None, *, int8: bool = False,
                   representative: Iterable[np.ndarray] | None = None) -> bytes:
    """The TFLite model of a whole concrete network (weights from a PyTorch ``state_dict``)."""
    from spnas_dsl.backends.keras import build_keras_model

    return keras_to_tflite(build_keras_model(network, state_dict), int8=int8, representative=representative)


def build_layer_tflite(shape: LayerShape, option: Option, *, state_dict: dict | None = None, int8: bool = False,
                       representative: Iterable[np.ndarray] | None = None) -> bytes:
    """One MBConv ``option`` at the place of ``shape`` (input HxWxC, output channels, stride)."""
    from spnas_dsl.backends.keras import build_keras_mbconv

    if is_identity(shape, option):
        raise BuildError(f"layer {shape.index} ({shape.name}): an identity skip has no model (it costs nothing)")
    model = build_keras_mbconv(shape.in_hwc, shape.out_hwc[2], option, shape.stride, state_dict)
    return keras_to_tflite(model, int8=int8, representative=representative)


def build_stem_tflite(network: Network, *, state_dict: dict | None = None, int8: bool = False,
                      representative: Iterable[np.ndarray] | None = None) -> bytes:
    """The stem of ``network`` (conv + BN + ReLU at the network's input size)."""
    from spnas_dsl.backends.keras import build_keras_part

    return keras_to_tflite(build_keras_part(network, "stem", state_dict=state_dict), int8=int8,
                           representative=representative)


def build_head_tflite(network: Network, *, state_dict: dict | None = None, int8: bool = False,
                      representative: Iterable[np.ndarray] | None = None) -> bytes:
    """The head of ``network`` (1x1 conv + BN + ReLU, pool, dense) at its input shape."""
    from spnas_dsl.backends.keras import build_keras_part

    return keras_to_tflite(build_keras_part(network, "head", state_dict=state_dict), int8=int8,
                           representative=representative)


def build_part_tflite(network: Network, part: str | int, option: Option | None = None, **kwargs) -> bytes:
    """``"stem"``, ``"head"`` or layer ``index`` of ``network`` (with ``option`` for a searched layer)."""
    if part == "stem":
        return build_stem_tflite(network, **kwargs)
    if part == "head":
        return build_head_tflite(network, **kwargs)
    from spnas_dsl.backends.keras import build_keras_part

    model = build_keras_part(network, part, option, state_dict=kwargs.pop("state_dict", None))
    return keras_to_tflite(model, **kwargs)


def layer_shapes(network: Network) -> list[LayerShape]:
    """Convenience: ``infer_shapes(network).layers`` (what ``build_layer_tflite`` takes)."""
    return infer_shapes(network).layers


class TFLiteModel:
    """A TFLite model loaded in ``ai_edge_litert.interpreter.Interpreter`` (one thread by default)."""

    def __init__(self, model: bytes | str | Path, num_threads: int = 1):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from ai_edge_litert.interpreter import Interpreter

        with quiet_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            if isinstance(model, (bytes, bytearray)):
                self.interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
            else:
                self.interpreter = Interpreter(model_path=str(model), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.input["shape"])

    @property
    def input_dtype(self):
        return self.input["dtype"]

    @property
    def input_quantization(self) -> tuple[float, int] | None:
        """(scale, zero point) of an integer input, else None."""
        scale, zero = self.input["quantization"]
        return (float(scale), int(zero)) if np.issubdtype(self.input["dtype"], np.integer) and scale else None

    @property
    def output_quantization(self) -> tuple[float, int] | None:
        scale, zero = self.output["quantization"]
        return (float(scale), int(zero)) if np.issubdtype(self.output["dtype"], np.integer) and scale else None

    def set_input(self, x: np.ndarray) -> None:
        """Load one NHWC float32 sample (batch 1), quantizing it for an int8 model."""
        x = np.asarray(x, dtype=np.float32).reshape(self.input_shape)
        q = self.input_quantization
        if q is not None:
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / q[0] + q[1]), info.min, info.max).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], x)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def get_output(self) -> np.ndarray:
        y = self.interpreter.get_tensor(self.output["index"])
        q = self.output_quantization
        if q is not None:
            y = (y.astype(np.float32) - q[1]) * q[0]
        return y.astype(np.float32)

    def run(self, x_nhwc: np.ndarray) -> np.ndarray:
        """Outputs (float32) for a batch of NHWC samples, one invoke per sample."""
        outs = []
        for sample in np.asarray(x_nhwc, dtype=np.float32):
            self.set_input(sample[None])
            self.invoke()
            outs.append(self.get_output()[0])
        return np.stack(outs)

    def run_nchw(self, x_nchw: np.ndarray) -> np.ndarray:
        return self.run(np.transpose(x_nchw, (0, 2, 3, 1)))


def op_names(model: bytes | str | Path) -> list[str]:
    """The builtin operator of every node of the (first) subgraph, in order."""
    from ai_edge_litert.interpreter import Interpreter

    content = bytes(model) if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    with quiet_output():
        interp = Interpreter(model_content=content)
    return [op["op_name"] for op in interp._get_ops_details()]


def export(ctx) -> None:
    from spnas_dsl.backends import deploy
    from spnas_dsl.backends.keras import build_keras_model

    model = build_keras_model(ctx.network, ctx.model.state_dict())
    float_path = ctx.staging / f"{ctx.stem}.tflite"
    size = ctx.network.input
    metadata = ctx.metadata("NHWC", [1, size.height, size.width, size.channels])
    float_path.write_bytes(finish_tflite(keras_to_tflite(model), metadata))
    runner = TFLiteModel(float_path)
    ops = op_names(float_path)
    ctx.add(float_path, "tflite", "tflite", run=runner.run_nchw, precision="float32",
            input=f"float32 NHWC {list(runner.input_shape)}", ops=len(ops),
            transposes=ops.count("TRANSPOSE"))
    models = [(float_path.name, runner)]
    if ctx.int8:
        calib = np.transpose(ctx.calibration, (0, 2, 3, 1))[:, None]
        int8_path = ctx.staging / f"{ctx.stem}_int8.tflite"
        int8_meta = dict(metadata, input=dict(metadata["input"], dtype="int8"),
                         quantization="int8 input and output: see deploy/input_spec.json for scales and zero points")
        int8_path.write_bytes(finish_tflite(keras_to_tflite(model, int8=True, representative=calib), int8_meta))
        q = TFLiteModel(int8_path)
        ctx.add(int8_path, "tflite", "tflite", run=q.run_nchw, precision="int8", checked=False,
                input=f"int8 NHWC {list(q.input_shape)}", input_quantization=q.input_quantization,
                output_quantization=q.output_quantization, calibration=ctx.calibration_source,
                size_ratio=round(float_path.stat().st_size / int8_path.stat().st_size, 2))
        models.append((int8_path.name, q))
    deploy.write_deploy(ctx, models)
