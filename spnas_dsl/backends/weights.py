"""Weights in and out of a concrete network: safetensors only, never a pickle.

``load_weights`` checks every tensor name and shape against the network before copying
anything, and names what is missing, unexpected or mis-shaped. ``save_weights`` writes the
state dict atomically, with the network's canonical text in the file's metadata.
Without weights, ``initialise`` seeds the parameters and gives BatchNorm non-trivial
running statistics (from random batches), so that parity checks compare meaningful outputs.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from spnas_dsl.backends.timm import TIMM_BN_EPS, TIMM_BN_MOMENTUM  # timm trains BN with these
from spnas_dsl.errors import CheckpointError
from spnas_dsl.io import atomic_write_bytes, canonical_safetensors

if TYPE_CHECKING:  # pragma: no cover
    import torch

# BatchNorm's step counter is not a weight: files without it (or with it) both load.
_OPTIONAL_SUFFIXES = (".num_batches_tracked",)
_MAX_LISTED = 6


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return shown + more


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a ``.safetensors`` file; any problem is a :class:`CheckpointError`.

    A pickled checkpoint (``torch.save``: a zip or pickle stream) is refused before it is
    opened: weights are never unpickled.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"weights path is a directory, not a .safetensors file: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc.strerror}") from None
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a pickled PyTorch checkpoint; weights are only read from .safetensors files "
            "(pickles are never loaded). Save them with safetensors.torch.save_file(model.state_dict(), ...)"
        )
    if len(head) < 9 or struct.unpack("<Q", head[:8])[0] <= 0 or head[8:9] != b"{":
        raise CheckpointError(f"{path} is not a safetensors file (bad header)")
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            for name in f.keys():  # noqa: SIM118 - a safe_open handle, not a dict
                tensors[name] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read weights {path}: not a valid safetensors file: {exc}") from None
    return tensors, metadata


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str) -> None:
    """Raise a :class:`CheckpointError` naming missing, unexpected and mis-shaped tensors."""
    def required(name: str) -> bool:
        return not name.endswith(_OPTIONAL_SUFFIXES)

    missing = [n for n in expected if n not in given and required(n)]
    unexpected = [n for n in given if n not in expected]
    shapes = [
        f"{n} (file {tuple(given[n].shape)}, network {tuple(expected[n].shape)})"
        for n in expected
        if n in given and tuple(given[n].shape) != tuple(expected[n].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} with the wrong shape: {_listing(shapes)}")
    if problems:
        raise CheckpointError(f"weights in {source} do not match the network: " + "; ".join(problems))


def _strip_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` (DDP) or ``model.`` prefix shared by every name."""
    for prefix in ("module.", "model."):
        if tensors and all(n.startswith(prefix) for n in tensors):
            return {n[len(prefix):]: t for n, t in tensors.items()}
    return tensors


def load_weights(model: torch.nn.Module, path: str | Path) -> dict[str, str]:
    """Load a ``.safetensors`` state dict into ``model`` after checking names and shapes.

    Returns the file's metadata. Nothing is copied unless every tensor matches.
    """
    tensors, metadata = read_safetensors(path)
    tensors = _strip_prefix(tensors)
    expected = model.state_dict()
    check_state_dict(expected, tensors, str(path))
    for name, tensor in tensors.items():
        if expected[name].dtype.is_floating_point and not tensor.dtype.is_floating_point:
            raise CheckpointError(f"weights in {path}: {name} has dtype {tensor.dtype}, expected a float tensor")
    model.load_state_dict({n: t.to(expected[n].dtype) for n, t in tensors.items()}, strict=False)
    return metadata


def state_dict_bytes(model: torch.nn.Module, metadata: dict[str, str] | None = None) -> bytes:
    """The state dict of ``model`` serialised as safetensors (contiguous CPU copies), byte for
    byte the same for the same tensors and metadata (see :func:`canonical_safetensors`)."""
    from safetensors.torch import save

    tensors = {n: t.detach().cpu().contiguous().clone() for n, t in model.state_dict().items()}
    return canonical_safetensors(save(tensors, metadata=metadata or {}))


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the state dict of ``model`` to ``path`` (safetensors, atomically)."""
    atomic_write_bytes(path, state_dict_bytes(model, metadata))


def initialise(model: torch.nn.Module, input_shape: tuple[int, ...], seed: int = 0, batches: int = 4,
               batch_size: int = 8) -> torch.nn.Module:
    """Seeded parameters and BatchNorm statistics measured on random N(0,1) batches.

    PyTorch's fresh BN has mean 0 / variance 1, which makes the eval-mode network almost
    the identity on BN: parity would then test little. Running a few random batches in
    train mode with a cumulative average (momentum None) gives every BN the statistics of
    its actual inputs. The model is returned in eval mode with its momenta restored.
    ``input_shape`` is (C, H, W).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                torch.nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu", generator=generator)
            else:
                p.copy_(torch.empty_like(p).uniform_(-0.1, 0.1, generator=generator))
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for bn in norms:  # gamma around 1 so activations keep their scale
            bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.5, 1.5, generator=generator))
        momenta = [bn.momentum for bn in norms]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        # The measured statistics depend on how the convolutions and BN reductions are split
        # between threads: 1 and 2 threads gave running variances 9.5e-7 apart, so seeded builds
        # differed from run to run (and machine load to machine load). One thread and
        # deterministic algorithms make them a function of the seed alone (on one machine).
        threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            for _ in range(batches):
                model(torch.randn((batch_size, *input_shape), generator=generator))
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
    return model.eval()


# The architecture text spnas records in the weights it writes (`build`, `train`).
_ARCH_KEYS = ("spnas_arch", "arch")


def check_bn_settings(network, metadata: dict[str, str], model: torch.nn.Module, source: str) -> list[str]:
    """Check that weights were made for the network's BatchNorm settings, as far as detectable.

    Epsilon is part of the function: weights trained with eps 1e-5 (timm) compute something
    else in a network with eps 1e-3, though every name and shape matches. Weights written by
    spnas record their architecture, so a different ``bn eps`` is a :class:`CheckpointError`.
    Weights that record none (timm's, any foreign file) get a warning naming the settings in
    use, with the evidence the running variances give (channels whose variance is below eps
    are the ones eps changes most). Returns the warnings and notes to report.
    """
    import torch

    from spnas_dsl.errors import SpnasError
    from spnas_dsl.parser import parse_text

    eps, momentum = network.bn_eps, network.bn_momentum
    recorded = next((metadata[k] for k in _ARCH_KEYS if metadata.get(k)), None)
    if recorded is not None:
        try:
            saved = parse_text(recorded, f"{source} (recorded architecture)")
        except SpnasError as exc:
            return [(f"warning: the architecture recorded in {source} does not parse ({exc.message}); "
                    "its BatchNorm settings cannot be checked")]
        if saved.bn_eps != eps:
            raise CheckpointError(
                f"weights in {source} were saved for '{saved.name}' with bn eps={saved.bn_eps!r} "
                f"momentum={saved.bn_momentum!r}, but '{network.name}' declares bn eps={eps!r} "
                f"momentum={momentum!r}: with another epsilon the same tensors compute a different function. "
                f"Declare `bn eps={saved.bn_eps!r} momentum={saved.bn_momentum!r}` in the .spnas file."
            )
        if saved.bn_momentum != momentum:
            return [(f"note: {source} was trained with BatchNorm momentum {saved.bn_momentum:g}; '{network.name}' "
                    f"declares {momentum:g} (this matters only for further training)")]
        return []
    variances = [m.running_var.detach().double() for m in model.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_var is not None]
    total = sum(v.numel() for v in variances)
    small = sum(int((v < eps).sum()) for v in variances)
    evidence = ""
    if small:
        smallest = min(float(v.min()) for v in variances)
        evidence = (f"; {small} of {total} BatchNorm channels have a running variance below {eps:g} "
                    f"(smallest {smallest:.2g}), where eps changes the output most")
    if eps == TIMM_BN_EPS:
        return [(f"note: {source} records no BatchNorm settings (not written by spnas); '{network.name}' declares "
                f"bn eps={eps:g} momentum={momentum:g}, timm's settings{evidence}")]
    return [(f"warning: {source} records no BatchNorm settings (not written by spnas; timm's checkpoints are "
            f"like this), so they are used with '{network.name}''s bn eps={eps:g} momentum={momentum:g}. timm "
            f"trains with eps {TIMM_BN_EPS:g}: for timm's weights declare "
            f"`bn eps={TIMM_BN_EPS:g} momentum={TIMM_BN_MOMENTUM:g}` "
            f"(examples/spnasnet_timm.spnas){evidence}")]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def metadata_for(network_text: str, **extra: str) -> dict[str, str]:
    """safetensors metadata (str -> str) recording the architecture the weights belong to."""
    return {"format": "pt", "spnas_arch": network_text, **{k: json.dumps(v) if not isinstance(v, str) else v
                                                        for k, v in extra.items()}}
