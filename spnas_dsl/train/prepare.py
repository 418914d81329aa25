"""Preparing a ``spnasc train`` run: every check happens here, before anything is written.

The arch must be a concrete network (``require_concrete`` names the first layer with several
candidates), the data set must open, ``--init-from`` / ``--resume`` checkpoints must load safely
and match. Also :func:`load_trained`: a finished run read back (for ``build`` and tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from spnas_dsl import training
from spnas_dsl.backends.weights import read_safetensors
from spnas_dsl.compiler.network import lower_to_network, require_concrete
from spnas_dsl.data import DatasetSplits, open_dataset
from spnas_dsl.errors import CheckpointError, SpnasError, UsageError
from spnas_dsl.ir import InputSize, Network
from spnas_dsl.parser import load, parse_text
from spnas_dsl.train.settings import ARCH, CHECKPOINT_KIND, WEIGHTS, TrainSettings, merge_resume_settings
from spnas_dsl.training import CHECKPOINT, load_state, rundir


def load_trained(run_dir: str | Path) -> tuple[Network, nn.Module]:
    """The arch and the trained network of a finished ``spnasc train`` run folder."""
    run_dir = Path(run_dir)
    network = load(run_dir / ARCH)
    model = lower_to_network(network)
    load_state(model, read_safetensors(run_dir / WEIGHTS)[0], str(run_dir / WEIGHTS))
    return network, model.eval()


def trained_arch(network: Network, image_size: int | None) -> Network:
    """The arch as trained: its input resized to ``image_size`` x ``image_size`` when given."""
    if image_size is None or (network.input.height, network.input.width) == (image_size, image_size):
        return network
    size = InputSize(height=image_size, width=image_size, channels=network.input.channels)
    return network.model_copy(update={"input": size})


def default_image_size(network: Network) -> int:
    if network.input.height != network.input.width:
        raise UsageError(f"'{network.name}' has a non-square input {network.input}; pass --image-size S "
                         "(the data sets yield square images)")
    return network.input.height


def init_from_search(search_dir: Path, arch: Network) -> nn.Module:
    """The concrete network ``arch`` with weights extracted from the supernet of a search.

    Loads ``SEARCH_DIR/checkpoint.pt`` safely (``weights_only``), rebuilds the supernet from the
    space recorded in it (the source text is saved with the search's config, so the space file
    need not exist any more), and slices the chosen options' weights out (``compiler.extract``).
    A :class:`LoweringError` names the layer when ``arch`` is not a network of that space.
    """
    from spnas_dsl.compiler.extract import check_choices, extract
    from spnas_dsl.compiler.supernet import lower_to_supernet
    from spnas_dsl.errors import LoweringError

    if not search_dir.is_dir():
        raise CheckpointError(f"--init-from {search_dir}: not a folder (expected a 'spnasc search' output folder)")
    where = search_dir / CHECKPOINT
    state = training.read_run_checkpoint(search_dir, "search", needed=("config", "step"), kind="spnas-search")
    config = state["config"]
    if not config.get("space_text") or "model" not in state:
        raise CheckpointError(f"{where} records no search space or no supernet weights")
    try:
        space = parse_text(config["space_text"], config.get("space") or str(where))
    except SpnasError as exc:
        raise CheckpointError(f"{where}: the search space recorded in it is invalid: {exc}") from None
    try:
        check_choices(space, arch)  # before the (slower) weight loading: the arch must be in the space
    except LoweringError as exc:
        raise LoweringError(f"--init-from {search_dir}: {exc.message}", exc.span, exc.source) from None
    supernet = lower_to_supernet(space)
    load_state(supernet, state["model"], f"{where} (supernet weights)")
    return extract(supernet, arch)


@dataclass
class Prepared:
    """Everything a run needs, checked: the arch as trained, settings, data, model, state."""

    arch: Network
    settings: TrainSettings
    data: DatasetSplits
    model: nn.Module
    out_dir: Path
    resume_state: dict | None
    force: bool = False  # a new run may remove a previous run's files in out_dir


def prepare(arch_path: str | Path | None, settings: TrainSettings | None, *, out: str | Path | None = None,
            resume: str | Path | None = None, resume_overrides: dict[str, Any] | None = None,
            force: bool = False) -> Prepared:
    """Check the inputs and build the model; raise a :class:`SpnasError` on the first problem.

    ``resume``: a run folder; its checkpoint's settings are used (``resume_overrides`` are the
    options passed again: only those in ``RESUMABLE_CHANGES`` may differ). A new run's ``out``
    must be new or empty unless ``force`` (:func:`spnas_dsl.training.rundir.check_out`). Writes nothing.
    """
    state = None
    if resume is not None:
        run_dir = Path(resume)
        state = training.read_run_checkpoint(run_dir, "train", kind=CHECKPOINT_KIND, needed=(
            "arch", "settings", "model", "optimizer", "scheduler", "step", "history", "wall_time_s"))
        try:
            saved_arch = parse_text(state["arch"], f"{run_dir / CHECKPOINT}:arch")
        except SpnasError as exc:
            raise CheckpointError(f"{run_dir / CHECKPOINT}: the arch recorded in it is invalid: {exc}") from None
        settings = merge_resume_settings(TrainSettings.from_dict(state["settings"]), resume_overrides or {}, run_dir)
        if arch_path is not None:
            given = load(arch_path)
            require_concrete(given)
            if trained_arch(given, settings.image_size) != saved_arch:
                raise UsageError(f"{arch_path} is not the network the run in {run_dir} trains "
                                 f"('{saved_arch.name}'); leave out the arch to resume it")
        network = saved_arch
        out_dir = run_dir
    else:
        if arch_path is None:
            raise UsageError("give an arch (.spnas file) to train, or --resume DIR")
        if settings is None:
            raise UsageError("no training settings given")
        source = load(arch_path)
        require_concrete(source)
        if settings.image_size is None:
            settings.image_size = default_image_size(source)
        network = trained_arch(source, settings.image_size)
        out_dir = Path(out) if out is not None else rundir.default_out_dir("train", network.name)
        rundir.check_out(out_dir, "train", force=force)
    if settings.image_size is None:
        settings.image_size = default_image_size(network)
    if settings.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {settings.epochs}")
    settings.recipe()  # validates optimizer / batch size

    data = open_dataset(settings.data, settings.image_size, network.input.channels, data_dir=settings.data_dir,
                        subset=settings.subset, val_subset=settings.val_subset, num_classes=network.classes,
                        seed=settings.seed)
    training.seed_everything(settings.seed)  # the same initial weights for the same seed
    if state is not None:
        model = lower_to_network(network)
        load_state(model, state["model"], f"{out_dir / CHECKPOINT}")
    elif settings.init_from:
        model = init_from_search(Path(settings.init_from), source)
    else:
        model = lower_to_network(network)
    return Prepared(network, settings, data, model, out_dir, state, force)


