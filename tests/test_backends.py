"""Export backends piece by piece: timm strings, weights I/O, the IR -> Keras translation
(parity with PyTorch on random concrete networks), single-part TFLite models.

End-to-end builds (`spnasc build`) are in test_build.py.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spnas_dsl.backends.parity import FLOAT_TOLERANCE, compare, random_batch
from spnas_dsl.backends.timm import timm_arch_def, timm_config
from spnas_dsl.backends.weights import initialise, load_weights, read_safetensors, save_weights
from spnas_dsl.compiler.blocks import torch_block
from spnas_dsl.compiler.network import lower_to_network
from spnas_dsl.errors import BuildError, CheckpointError, LoweringError
from spnas_dsl.ir import InputSize, Layer, Network, Option
from spnas_dsl.ops import Site
from spnas_dsl.parser import load, parse_text
from spnas_dsl.shapes import infer_shapes

# timm's spnasnet_100 (timm/models/efficientnet.py, _gen_spnasnet), as published.
TIMM_SPNASNET_100 = [
    ["ds_r1_k3_s1_c16_noskip"],
    ["ir_r3_k3_s2_e3_c24"],
    ["ir_r1_k5_s2_e6_c40", "ir_r3_k3_s1_e3_c40"],
    ["ir_r1_k5_s2_e6_c80", "ir_r3_k3_s1_e3_c80"],
    ["ir_r1_k5_s1_e6_c96", "ir_r3_k5_s1_e3_c96"],
    ["ir_r4_k5_s2_e6_c192"],
    ["ir_r1_k3_s1_e6_c320_noskip"],
]


def mbconv(in_chs: int, out_chs: int, kernel: int, stride: int, expansion: int):
    """The MBConv block of (kernel, expansion): depthwise-separable at e=1 (``ops`` registry)."""
    return torch_block(Option(kernel=kernel, expansion=expansion), Site((1, 1, in_chs), out_chs, stride))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Two cores shared by parallel test workers: several OpenMP threads per process spin
    against each other (measured 13x slower), so each worker computes on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample_network(space: Network, rng: random.Random) -> Network:
    """A concrete network of ``space``: one seeded random choice per layer."""
    return space.replace_layers([Layer.from_option(rng.choice(layer.options)) for _, _, layer in space.iter_layers()])


def random_networks(count_per_space: int = 10, seed: int = 0) -> list[Network]:
    """``count_per_space`` networks of spaces/fashion_mnist.spnas (28x28x1) and of
    spaces/mnasnet.spnas at 64x64x3 (the input size rewritten in the IR, to keep it fast)."""
    rng = random.Random(seed)
    fashion = load(REPO / "spaces" / "fashion_mnist.spnas")
    mnas = load(REPO / "spaces" / "mnasnet.spnas").model_copy(
        update={"input": InputSize(height=64, width=64, channels=3)})
    return [sample_network(s, rng) for s in (fashion, mnas) for _ in range(count_per_space)]


def torch_model(network: Network, seed: int = 0, batches: int = 2, batch_size: int = 4):
    """The PyTorch network with seeded weights and BN statistics from random batches."""
    model = lower_to_network(network)
    size = network.input
    return initialise(model, (size.channels, size.height, size.width), seed=seed, batches=batches,
                      batch_size=batch_size)


def torch_outputs(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def keras_outputs(keras_model, x_nchw: np.ndarray) -> np.ndarray:
    x = np.transpose(x_nchw, (0, 2, 3, 1))
    return np.concatenate([keras_model(x[i:i + 1], training=False).numpy() for i in range(len(x))])


# -- timm ---------------------------------------------------------------------------------------------

def test_timm_arch_def_of_spnasnet_is_timms_spnasnet_100():
    net = load(REPO / "examples" / "spnasnet.spnas")
    expected = [[s.replace("_noskip", "") for s in stage] for stage in TIMM_SPNASNET_100]
    assert timm_arch_def(net) == expected
    cfg = timm_config(net)
    assert (cfg["stem_size"], cfg["num_features"], cfg["num_classes"]) == (32, 1280, 1000)


def test_timm_folds_runs_and_omits_skips():
    net = parse_text("""network t {
    input 32x32x3
    classes 10
    stem conv k=3 c=16 s=2
    stage a c=16 s=1 {
        mbconv k=3 e=1
        skip
    }
    stage b c=24 s=2 {
        2x mbconv k=3 e=6
        skip
        mbconv k=3 e=6
        mbconv k=5 e=3
    }
    stage c c=24 s=1 {
        skip
        mbconv k=5 e=3
    }
    head conv c=64
}
""")
    assert timm_arch_def(net) == [
        ["ds_r1_k3_s1_c16"],
        ["ir_r3_k3_s2_e6_c24", "ir_r1_k5_s1_e3_c24"],  # the skip between equal layers joins the run
        ["ir_r1_k5_s1_e3_c24"],
    ]


def test_timm_refuses_a_space():
    with pytest.raises(LoweringError, match="layer 1"):
        timm_arch_def(load(REPO / "spaces" / "fashion_mnist.spnas"))


# -- weights --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_net() -> Network:
    return random_networks(1, seed=3)[0]


def test_weights_round_trip(tmp_path, small_net):
    model = torch_model(small_net)
    path = tmp_path / "w.safetensors"
    save_weights(model, path, {"note": "x"})
    other = lower_to_network(small_net)
    meta = load_weights(other, path)
    assert meta["note"] == "x"
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_weights_errors_name_the_problem(tmp_path, small_net):
    from safetensors.torch import save_file

    model = lower_to_network(small_net)
    sd = {k: v.clone() for k, v in model.state_dict().items()}

    missing = dict(sd)
    del missing["conv_stem.weight"]
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing: conv_stem\.weight"):
        load_weights(model, tmp_path / "missing.safetensors")

    extra = dict(sd, **{"blocks.9.0.conv_pw.weight": torch.zeros(1)})
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match=r"1 unexpected: blocks\.9\.0\.conv_pw\.weight"):
        load_weights(model, tmp_path / "extra.safetensors")

    shaped = dict(sd, **{"classifier.weight": torch.zeros(3, 3)})
    save_file(shaped, tmp_path / "shape.safetensors")
    with pytest.raises(CheckpointError, match=r"classifier\.weight \(file \(3, 3\), network \(10, 256\)\)"):
        load_weights(model, tmp_path / "shape.safetensors")

    torch.save(sd, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="pickled PyTorch checkpoint"):
        load_weights(model, tmp_path / "pickled.pt")

    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_weights(model, tmp_path / "junk.safetensors")

    with pytest.raises(CheckpointError, match="not found"):
        read_safetensors(tmp_path / "nope.safetensors")


def test_weights_accept_a_ddp_prefix_and_no_step_counters(tmp_path, small_net):
    from safetensors.torch import save_file

    model = torch_model(small_net)
    sd = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(sd, tmp_path / "ddp.safetensors")
    other = lower_to_network(small_net)
    load_weights(other, tmp_path / "ddp.safetensors")
    assert torch.equal(other.classifier.weight, model.classifier.weight)


def test_initialise_gives_batchnorm_real_statistics(small_net):
    model = torch_model(small_net)
    assert not model.training
    bn = model.blocks[1][0].bn2
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert bn.momentum == pytest.approx(0.01)
    x = random_batch((1, 28, 28), 4, seed=1)
    y = torch_outputs(model, x)
    assert np.std(y) > 0.1  # outputs depend on the input
    assert not np.allclose(y[0], y[1], atol=1e-3)
    again = torch_outputs(torch_model(small_net), x)
    np.testing.assert_array_equal(y, again)  # seeded


# -- IR -> Keras parity --------------------------------------------------------------------------

def check_networks(nets: list[Network], backends: tuple[str, ...] = ("keras",)) -> float:
    """Build each network with seeded weights and compare every backend with PyTorch on a
    random batch; returns the worst relative difference (all must pass the float rule)."""
    import tempfile
    from pathlib import Path

    from spnas_dsl.backends.keras import build_keras_model

    worst = 0.0
    for i, net in enumerate(nets):
        model = torch_model(net, seed=i)
        size = net.input
        x = random_batch((size.channels, size.height, size.width), 2, seed=i)
        ref = torch_outputs(model, x)
        keras_model = build_keras_model(net, model.state_dict())
        outputs = {"keras": lambda m=keras_model, x=x: keras_outputs(m, x)}
        if "tflite" in backends:
            from spnas_dsl.backends.tflite import TFLiteModel, keras_to_tflite

            outputs["tflite"] = lambda m=keras_model, x=x: TFLiteModel(keras_to_tflite(m)).run_nchw(x)
        with tempfile.TemporaryDirectory() as tmp:
            if "onnx" in backends:
                from spnas_dsl.backends.onnx import export_onnx, onnxruntime_runner

                export_onnx(model, torch.from_numpy(x), Path(tmp) / "m.onnx")
                outputs["onnx"] = lambda p=Path(tmp) / "m.onnx", x=x: onnxruntime_runner(p)(x)
            if "pytorch" in backends:
                from spnas_dsl.backends.pytorch import export_program, load_program_runner

                export_program(model, torch.from_numpy(x), Path(tmp) / "m.pt2")
                outputs["pytorch"] = lambda p=Path(tmp) / "m.pt2", x=x: load_program_runner(p)(x)
            for name, run in outputs.items():
                parity = compare(run(), ref)
                assert parity.ok(), f"network {i} ({net.name}), {name}: {parity}"
                worst = max(worst, parity.relative)
    return worst


def test_keras_matches_pytorch_on_random_networks():
    """Two networks of each space (the slow test below takes 20, through every backend)."""
    nets = random_networks(10, seed=0)
    assert check_networks(nets[0:2] + nets[10:12]) < FLOAT_TOLERANCE


@pytest.mark.slow
def test_20_random_networks_through_every_backend():
    """10 networks of spaces/fashion_mnist.spnas and 10 of spaces/mnasnet.spnas at 64x64x3:
    the Keras model for all 20; TFLite, ONNX and the .pt2 program for three of them (the
    TFLite converter and the dynamo ONNX exporter cost 5-30 s a network on two cores)."""
    nets = random_networks(10, seed=0)
    assert check_networks(nets) < FLOAT_TOLERANCE
    sample = nets[1:3] + nets[10:11]
    assert check_networks(sample, ("tflite", "onnx", "pytorch")) < FLOAT_TOLERANCE


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_keras_matches_pytorch_on_generated_networks(valid_networks, data):
    """Odd input sizes, non-square inputs, kernel 7, 1x1 stems, width multipliers, skips."""
    from spnas_dsl.backends.keras import build_keras_model

    space = data.draw(valid_networks)
    layers = [Layer.from_option(data.draw(st.sampled_from(layer.options))) for _, _, layer in space.iter_layers()]
    net = space.replace_layers(layers)
    if infer_shapes(net).head_channels * net.classes > 300_000:  # keep each example small
        net = net.model_copy(update={"classes": 10})
    model = torch_model(net, batches=1, batch_size=2)
    size = net.input
    x = random_batch((size.channels, size.height, size.width), 1, seed=0)
    parity = compare(keras_outputs(build_keras_model(net, model.state_dict()), x), torch_outputs(model, x))
    assert parity.ok(), str(parity)


def test_keras_refuses_a_space():
    from spnas_dsl.backends.keras import build_keras_model

    with pytest.raises(LoweringError, match=r"layer 1 \(s16\.0\) has 4 candidates"):
        build_keras_model(load(REPO / "spaces" / "fashion_mnist.spnas"))


# -- TFLite: single parts (whole networks: test_build.py and the slow test above) ----------------

def test_build_layer_tflite_for_one_searched_option():
    """The lookup-table helper: one MBConv candidate of a space, float matches the PyTorch
    block with the same weights; int8 has int8 input/output with quantization params."""
    from spnas_dsl.backends.tflite import TFLiteModel, build_layer_tflite, layer_shapes

    space = load(REPO / "spaces" / "mnasnet.spnas").model_copy(
        update={"input": InputSize(height=64, width=64, channels=3)})
    shape = layer_shapes(space)[5]  # s40.0: 8x8x24 -> 4x4x40, stride 2, searched
    option = Option(kernel=5, expansion=6)
    assert option in shape.layer.options and shape.stride == 2
    block = mbconv(shape.in_hwc[2], shape.out_hwc[2], option.kernel, shape.stride, option.expansion)
    initialise(block, (shape.in_hwc[2], *shape.in_hwc[:2]))
    content = build_layer_tflite(shape, option, state_dict=block.state_dict())
    runner = TFLiteModel(content)
    assert runner.input_shape == (1, *shape.in_hwc)
    x = random_batch((shape.in_hwc[2], *shape.in_hwc[:2]), 2, seed=5)
    with torch.no_grad():
        ref = block(torch.from_numpy(x)).permute(0, 2, 3, 1).numpy()
    out = np.stack([runner.run(np.transpose(x[i:i + 1], (0, 2, 3, 1)))[0] for i in range(2)])
    assert compare(out.reshape(2, -1), ref.reshape(2, -1)).ok()

    q = TFLiteModel(build_layer_tflite(shape, option, int8=True))
    assert q.input_dtype == np.int8 and q.input_quantization is not None and q.output_quantization is not None
    assert q.run(np.zeros((1, *shape.in_hwc), np.float32)).shape == (1, *shape.out_hwc)
    with pytest.raises(BuildError, match="skip"):
        build_layer_tflite(layer_shapes(space)[6], Option())


def test_stem_and_head_parts_match_pytorch():
    from spnas_dsl.backends.keras import build_keras_part

    net = random_networks(1, seed=1)[1]  # mnasnet at 64x64
    model = torch_model(net)
    sd = model.state_dict()
    x = random_batch((3, 64, 64), 1, seed=2)
    with torch.no_grad():
        stem = model.act1(model.bn1(model.conv_stem(torch.from_numpy(x))))
    keras_stem = build_keras_part(net, "stem", state_dict={k: v for k, v in sd.items() if k.split(".")[0] in
                                                           ("conv_stem", "bn1")})
    out = keras_stem(np.transpose(x, (0, 2, 3, 1)), training=False).numpy()
    assert compare(out.reshape(1, -1), stem.permute(0, 2, 3, 1).numpy().reshape(1, -1)).ok()

    shapes = infer_shapes(net)
    h = random_batch((shapes.head_in[2], *shapes.head_in[:2]), 1, seed=3)
    with torch.no_grad():
        t = torch.from_numpy(h)
        ref = model.classifier(model.flatten(model.global_pool(model.act2(model.bn2(model.conv_head(t))))))
    keras_head = build_keras_part(net, "head", state_dict=sd)
    assert compare(keras_head(np.transpose(h, (0, 2, 3, 1)), training=False).numpy(), ref.numpy()).ok()
    with pytest.raises(BuildError, match="not a candidate"):
        build_keras_part(load(REPO / "spaces" / "mnasnet.spnas"), 0, Option(kernel=5, expansion=6))
