"""Datasets and the in-memory loader: the real CIFAR on-disk format, digits, determinism, sharding."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdgraph.data import Normalizer, TensorLoader, load_dataset
from kdgraph.errors import DataError
from kdgraph.spec import DATA_DEFAULTS, merge


def write_fake_cifar100(root: Path, n_train: int = 50, n_test: int = 20) -> tuple[np.ndarray, list[int]]:
    """CIFAR-100 as torchvision downloads it: pickled dicts with b'data' (N x 3072 uint8) and b'fine_labels'."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100, n).tolist()
        with open(folder / split, "wb") as fh:
            pickle.dump({b"data": images, b"fine_labels": labels, b"coarse_labels": [0] * n}, fh)
        data[split] = (images, labels)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, fh)
    return data["train"]


def cfg(**kw) -> dict:
    return merge(DATA_DEFAULTS, kw)


def test_cifar100_reads_the_on_disk_format(tmp_path: Path) -> None:
    images, labels = write_fake_cifar100(tmp_path / "data")
    ds = load_dataset(cfg(dataset="cifar100", root=str(tmp_path / "data"), download=False), tmp_path)
    assert ds.num_classes == 100 and ds.channels == 3 and ds.image_size == 32
    assert ds.train.images.shape == (50, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    # row-major 3072 bytes = R plane, G plane, B plane of 32 x 32
    assert torch.equal(ds.train.images[3, 1].flatten(), torch.from_numpy(images[3, 1024:2048]))
    assert ds.train.labels.tolist() == labels and len(ds.test) == 20
    assert ds.mean == (0.5071, 0.4867, 0.4408) and ds.std == (0.2675, 0.2565, 0.2761)


def test_missing_cifar_offline_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(cfg(dataset="cifar100", root=str(tmp_path / "nowhere"), download=False), tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nowhere" / "cifar-100-python") in message
    assert "data.download: true" in message


def test_digits_is_bundled_with_a_fixed_split() -> None:
    a = load_dataset(cfg(dataset="digits"), Path.cwd())
    b = load_dataset(cfg(dataset="digits"), Path.cwd())
    assert len(a.train) == 1437 and len(a.test) == 360 and a.image_size == 8 and a.channels == 1
    assert torch.equal(a.test.labels, b.test.labels) and int(a.train.images.max()) == 255


def test_loader_is_deterministic_resumable_and_sharded() -> None:
    ds = load_dataset(cfg(dataset="synthetic", size=64, image_size=8, channels=3, classes=5), Path.cwd())
    norm = Normalizer(ds.mean, ds.std, torch.device("cpu"))
    loader = TensorLoader(ds.train, 16, norm, torch.device("cpu"), train=True, augment=True, seed=1)
    first = [b.index for b in loader.epoch(1)]
    again = [b.index for b in loader.epoch(1)]
    other = [b.index for b in loader.epoch(2)]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))  # reshuffled each epoch
    assert sorted(torch.cat(first).tolist()) == list(range(64))
    full = [b.image for b in loader.epoch(3)]
    resumed = [b.image for b in loader.epoch(3, start=2)]
    assert all(torch.equal(x, y) for x, y in zip(full[2:], resumed))  # a resumed epoch sees the same batches
    shards = [TensorLoader(ds.train, 16, norm, torch.device("cpu"), train=True, augment=True, seed=1, rank=r, world=2)
              for r in range(2)]
    for b, (r0, r1) in enumerate(zip(shards[0].epoch(1), shards[1].epoch(1))):
        assert torch.equal(torch.cat([r0.index, r1.index]), first[b])
        assert torch.equal(torch.cat([r0.image, r1.image]), loader_images(loader, b))


def loader_images(loader: TensorLoader, b: int) -> torch.Tensor:
    return list(loader.epoch(1))[b].image


def test_normalizer_matches_the_formula() -> None:
    norm = Normalizer((0.5, 0.25), (0.2, 0.1), torch.device("cpu"))
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)
    expected = torch.stack([(x[0, 0].float() / 255 - 0.5) / 0.2, (x[0, 1].float() / 255 - 0.25) / 0.1])[None]
    assert torch.allclose(norm(x), expected, atol=1e-6)
