"""Data sets: IDX reading, corrupt files, synthetic determinism, image folders, channels, resize, batching."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from spnas_dsl.data import Batches, epoch_permutation, open_dataset
from spnas_dsl.data.fashion_mnist import read_idx
from spnas_dsl.data.transforms import Normalization, convert_channels, resize, to_float
from spnas_dsl.errors import DataError


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def fake_fashion(folder: Path, n_train: int = 40, n_test: int = 20, compress: bool = True) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    return folder


# -- IDX ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte", array, compress)
    out = read_idx(path)
    assert out.shape == (2, 3, 4)
    assert np.array_equal(out, array)


def test_read_idx_truncated_names_the_file(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*corrupt"):
        read_idx(path)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "junk-idx1-ubyte"
    path.write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="junk-idx1-ubyte.*not an IDX"):
        read_idx(path)


def test_read_idx_bad_gzip(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b" + b"\x00" * 20)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        read_idx(path)


def test_fashion_mnist_from_data_dir(tmp_path):
    folder = fake_fashion(tmp_path / "fm")
    splits = open_dataset("fashion-mnist", 28, 1, data_dir=str(folder))
    assert (len(splits.train), len(splits.val), splits.num_classes) == (40, 20, 10)
    assert "official test set" in splits.description
    x, y = next(iter(Batches(splits.train, 8)))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == list(range(8))


def test_fashion_mnist_val_fraction_and_subset(tmp_path):
    folder = fake_fashion(tmp_path / "fm", n_train=100)
    splits = open_dataset("fashion-mnist", 16, 3, data_dir=str(folder), val_fraction=0.2)
    assert (len(splits.train), len(splits.val)) == (80, 20)
    small = open_dataset("fashion-mnist", 16, 3, data_dir=str(folder), subset=30, val_subset=5)
    assert (len(small.train), len(small.val)) == (30, 5)
    x, _ = next(iter(Batches(small.train, 4)))
    assert x.shape == (4, 3, 16, 16)


def test_fashion_mnist_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="Fashion-MNIST not found in .*apt-get install -y dataset-fashion-mnist"):
        open_dataset("fashion-mnist", 28, 1, data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte"):
        open_dataset("fashion-mnist", 28, 1, data_dir=str(tmp_path / "empty"))


def test_fashion_mnist_corrupt_file(tmp_path):
    folder = fake_fashion(tmp_path / "fm", compress=False)
    labels = folder / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        open_dataset("fashion-mnist", 28, 1, data_dir=str(folder))


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist():
    splits = open_dataset("fashion-mnist", 32, 3, subset=500, seed=1)
    assert (len(splits.train), len(splits.val), splits.num_classes) == (500, 1000, 10)
    x, y = next(iter(Batches(splits.train, 500)))
    assert x.shape == (500, 3, 32, 32)
    assert abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3  # normalised
    assert len(set(y.tolist())) == 10


# -- synthetic ----------------------------------------------------------------------------------

def test_synthetic_is_deterministic_and_balanced():
    a = open_dataset("synthetic:200", 24, 3, num_classes=5, seed=3)
    b = open_dataset("synthetic:200", 24, 3, num_classes=5, seed=3)
    c = open_dataset("synthetic:200", 24, 3, num_classes=5, seed=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.num_classes == 5 and len(a.train) == 200 and len(a.val) == 256
    assert torch.bincount(a.train.labels).tolist() == [40] * 5


def test_synthetic_is_learnable():
    """A nearest-class-mean classifier on the raw pixels beats chance by far."""
    s = open_dataset("synthetic:500", 16, 1, num_classes=4, seed=0)
    xtr, ytr = next(iter(Batches(s.train, 500)))
    xva, yva = next(iter(Batches(s.val, 1000)))
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(4)]).flatten(1)
    pred = torch.cdist(xva.flatten(1), means).argmin(1)
    assert (pred == yva).float().mean() > 0.6


def test_unknown_spec():
    with pytest.raises(DataError, match="unknown data set 'mnist'.*fashion-mnist"):
        open_dataset("mnist", 28, 1)


# -- image folders ----------------------------------------------------------------------------

def make_tree(root: Path, classes=("cat", "dog", "fish"), per_class: int = 3, val: bool = True, mode: str = "RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val") if val else ("train",):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                shape = (30 + 5 * j, 40) + ((3,) if mode == "RGB" else ())
                array = np.full(shape, 60 * i + 20, np.uint8) + rng.integers(0, 10, shape, dtype=np.uint8)
                Image.fromarray(array, mode).save(folder / f"{j}.png")
    return root


def test_imagefolder(tmp_path):
    root = make_tree(tmp_path / "imgs")
    s = open_dataset(f"imagefolder:{root}", 24, 3, seed=0)
    assert (len(s.train), len(s.val), s.num_classes) == (9, 9, 3)
    x, y = next(iter(Batches(s.val, 9)))
    assert x.shape == (9, 3, 24, 24) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # training augmentation is a function of (seed, epoch): the same twice, another epoch differs
    a = next(iter(Batches(s.train, 9, shuffle=True, seed=1, epoch=0)))[0]
    b = next(iter(Batches(s.train, 9, shuffle=True, seed=1, epoch=0)))[0]
    assert torch.equal(a, b)


def test_imagefolder_grey_to_rgb_and_split(tmp_path):
    root = make_tree(tmp_path / "imgs", val=False, mode="L", per_class=10)
    s = open_dataset(f"imagefolder:{root}", 16, 3, val_fraction=0.2)
    assert (len(s.train), len(s.val)) == (24, 6)
    image, _ = s.val[0]  # uint8 before normalisation
    assert image.shape == (3, 16, 16) and torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset(f"imagefolder:{tmp_path / 'none'}", 16, 3)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        open_dataset(f"imagefolder:{tmp_path / 'empty'}", 16, 3)


def test_imagefolder_skips_and_counts_unreadable_images(tmp_path, capsys):
    """A corrupt JPEG and a truncated PNG are skipped (the next readable image takes their place, so
    batches keep their size), counted once, and summed up in one line per pass that met them."""
    root = make_tree(tmp_path / "imgs", per_class=4)
    (root / "train" / "cat" / "1.png").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    good = (root / "train" / "dog" / "2.png").read_bytes()
    (root / "train" / "dog" / "2.png").write_bytes(good[: len(good) // 2])
    s = open_dataset(f"imagefolder:{root}", 16, 3)
    for epoch in range(2):
        batches = list(Batches(s.train, 4, shuffle=True, epoch=epoch, drop_last=True))
        assert [len(y) for _, y in batches] == [4, 4, 4]
    assert sorted(Path(p).relative_to(root).as_posix() for p in s.train.unreadable) == [
        "train/cat/1.png", "train/dog/2.png"]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("data: skipped")]
    assert len(lines) == 1  # the second pass met no new ones
    assert "skipped 2 unreadable images in this pass (2 of 12 so far; the run stops past 10)" in lines[0]
    # the same through worker processes
    s = open_dataset(f"imagefolder:{root}", 16, 3)
    assert sum(len(y) for _, y in Batches(s.train, 4, num_workers=2)) == 12 and len(s.train.unreadable) == 2


def test_imagefolder_stops_past_the_unreadable_limit(tmp_path):
    root = make_tree(tmp_path / "imgs", per_class=5)
    for i, path in enumerate(sorted((root / "train").rglob("*.png"))):  # 11 of 15: past the limit of 10
        if i % 4 != 2:
            path.write_bytes(b"garbage")
    s = open_dataset(f"imagefolder:{root}", 16, 3)
    with pytest.raises(DataError, match=r"11 images of this split cannot be decoded \(more than 10, .*cat/0.png.*"
                                        r"and 6 more; first: .*cat/0.png: cannot identify image file"):
        list(Batches(s.train, 5))
    every = make_tree(tmp_path / "all", per_class=1)
    for path in (every / "val").rglob("*.png"):
        path.write_bytes(b"garbage")
    s = open_dataset(f"imagefolder:{every}", 16, 3)
    with pytest.raises(DataError, match=r"cannot decode image .*\.png: cannot identify image file \(nor the next 2 "):
        list(Batches(s.val, 3))


def test_default_workers_fit_the_cores(tmp_path, monkeypatch):
    """On a 2-core machine the default loader makes no 'worker processes' warning (4 workers did)."""
    import warnings

    from spnas_dsl.data import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_workers() == 1 and default_workers(2) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert default_workers() == 4 and default_workers(8) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    root = make_tree(tmp_path / "imgs", per_class=2)
    s = open_dataset(f"imagefolder:{root}", 16, 3)
    from spnas_dsl.search import SearchConfig
    from spnas_dsl.train import TrainSettings

    assert SearchConfig(space="x").workers is None and TrainSettings().workers is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(len(y) for _, y in Batches(s.train, 3, num_workers=SearchConfig(space="x").workers)) == 6


# -- transforms -----------------------------------------------------------------------------------

def test_channel_conversion():
    grey = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    rgb = convert_channels(grey, 3)
    assert rgb.shape == (2, 3, 5, 5) and all(torch.equal(rgb[:, c], grey[:, 0]) for c in range(3))
    pure = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    pure[:, 1] = 255  # pure green -> luminance 0.587 * 255
    assert convert_channels(pure, 1).flatten().tolist() == [150] * 4
    assert Normalization((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)).to_channels(1).mean == pytest.approx((0.5,))
    with pytest.raises(ValueError):
        convert_channels(torch.zeros(1, 2, 2, 2, dtype=torch.uint8), 3)


def test_resize_and_normalise():
    x = torch.full((3, 1, 28, 28), 128, dtype=torch.uint8)
    up, down = resize(x, 40), resize(x, 14)
    assert up.shape == (3, 1, 40, 40) and down.shape == (3, 1, 14, 14) and up.dtype == torch.uint8
    assert int(up.min()) == int(up.max()) == 128  # a constant stays constant
    f = to_float(up, Normalization((0.5,), (0.25,)))
    assert torch.allclose(f, torch.full_like(f, (128 / 255 - 0.5) / 0.25), atol=1e-5)


# -- batching ----------------------------------------------------------------------------------------

def test_batches_order_is_a_function_of_seed_and_epoch():
    s = open_dataset("synthetic:100", 8, 1, num_classes=10, seed=0)
    ys = lambda **kw: torch.cat([y for _, y in Batches(s.train, 10, shuffle=True, **kw)])
    assert torch.equal(ys(seed=1, epoch=2), ys(seed=1, epoch=2))
    assert not torch.equal(ys(seed=1, epoch=2), ys(seed=1, epoch=3))
    # resuming mid-epoch: start_batch skips exactly the batches already seen
    full = list(Batches(s.train, 10, shuffle=True, seed=1, epoch=2))
    rest = list(Batches(s.train, 10, shuffle=True, seed=1, epoch=2, start_batch=4))
    assert len(rest) == len(full) - 4 and torch.equal(rest[0][1], full[4][1])
    # ranks split the same permutation (like DistributedSampler)
    perm = epoch_permutation(100, 1, 2)
    r0 = Batches(s.train, 5, shuffle=True, seed=1, epoch=2, rank=0, world=2)
    r1 = Batches(s.train, 5, shuffle=True, seed=1, epoch=2, rank=1, world=2)
    assert torch.equal(r0.indices, perm[0::2]) and torch.equal(r1.indices, perm[1::2])
    assert len(Batches(s.train, 30, drop_last=True)) == 3 and len(Batches(s.train, 30)) == 4
