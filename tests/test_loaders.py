"""Loaders: the device loader reads nothing back, and its augmentation is torchvision's, image for image.

Also the torchvision loader itself (deterministic per item, resumable, sharded) and image folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy.stats import chisquare

from kdgraph.data import (
    Normalizer,
    Split,
    TensorLoader,
    TorchvisionLoader,
    crop_flip,
    data_info_of,
    load_dataset,
    make_loaders,
)
from kdgraph.errors import DataError
from kdgraph.spec import DATA_DEFAULTS, TRAIN_DEFAULTS, merge

CPU = torch.device("cpu")


def test_crop_flip_equals_torchvision_pad_crop_flip() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    oy = torch.tensor([0, 8, 3, 0, 8, 5])
    ox = torch.tensor([0, 8, 0, 8, 2, 4])
    flip = torch.tensor([False, True, True, False, False, True])
    out = crop_flip(images, oy, ox, flip, pad=4)
    for i in range(6):
        expected = TF.crop(TF.pad(images[i], [4], fill=0), int(oy[i]), int(ox[i]), 32, 32)
        if flip[i]:
            expected = TF.hflip(expected)
        assert torch.equal(out[i], expected), i


def coded(n: int, size: int = 32) -> Split:
    """Images whose channel 0 holds row + 1 and channel 1 column + 1 (0 is the zero padding)."""
    ramp = torch.arange(1, size + 1, dtype=torch.uint8)
    image = torch.stack([ramp[:, None].expand(size, size), ramp[None, :].expand(size, size), torch.zeros(size, size)])
    return Split(image.to(torch.uint8).expand(n, 3, size, size).contiguous(), torch.zeros(n, dtype=torch.int64))


def recover(images: torch.Tensor, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row offset, column offset, flipped) of crops of `coded` images, from their (unnormalised) pixels."""
    c = images.shape[-1] // 2
    rows, cols = images[:, 0, c, c].round().long() - 1, images[:, 1, c, c].round().long() - 1
    flipped = images[:, 1, c, c + 1] < images[:, 1, c, c]
    oy = rows - c + pad
    ox = torch.where(flipped, cols - (images.shape[-1] - 1 - c) + pad, cols - c + pad)
    return oy, ox, flipped


def assert_uniform_crops_and_fair_flips(oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor) -> None:
    n = len(oy)
    for offsets in (oy, ox):
        counts = torch.bincount(offsets, minlength=9)
        assert len(counts) == 9 and counts.min() > 0  # every offset 0..8, nothing else
        assert chisquare(counts.numpy()).pvalue > 1e-3  # uniform over 0..8
    assert abs(flip.float().mean().item() - 0.5) < 4 * 0.5 / n**0.5  # p = 1/2 within 4 sigma


@pytest.fixture(scope="module")
def augmented() -> dict[str, torch.Tensor]:
    """One epoch of 1800 augmented `coded` images through both loaders, unnormalised (mean 0, std 1)."""
    split = coded(1800)
    norm = Normalizer((0.0,) * 3, (1 / 255,) * 3, CPU)  # x / 255 / (1 / 255): raw pixel values
    tensor = TensorLoader(split, 600, norm, CPU, train=True, augment=True, seed=3)
    vision = TorchvisionLoader(split, 600, (0.0,) * 3, (1 / 255,) * 3, CPU, train=True, augment=True, seed=3)
    return {
        "tensor": torch.cat([b.image for b in tensor.epoch(1)]),
        "vision": torch.cat([b.image for b in vision.epoch(1)]),
        "draws": tensor.draws(1),
        "split": split.images,
    }


def test_device_loader_draws_crop_offsets_and_flips_as_torchvision(augmented) -> None:
    d = augmented["draws"]
    oy, ox, flip = recover(augmented["tensor"])
    # the pixels say what the draws said (in the epoch's order)
    assert torch.equal(oy, d.oy[d.order]) and torch.equal(ox, d.ox[d.order]) and torch.equal(flip, d.flip[d.order])
    assert_uniform_crops_and_fair_flips(oy, ox, flip)
    assert_uniform_crops_and_fair_flips(*recover(augmented["vision"]))


def test_torchvision_pipeline_is_crop_flip_image_for_image(augmented) -> None:
    vision = augmented["vision"]
    oy, ox, flip = recover(vision)
    redone = crop_flip(augmented["split"][: len(vision)], oy, ox, flip, pad=4).float()
    assert torch.allclose(vision, redone, atol=1e-3)  # ToTensor + Normalize(0, 1/255) gives the pixels back


def test_device_loader_reads_nothing_back_to_the_host() -> None:
    """On the data-less meta device any read of a value (.cpu(), .item(), bool()) would raise."""
    meta = torch.device("meta")
    split = Split(
        torch.empty(40, 3, 8, 8, dtype=torch.uint8, device=meta), torch.empty(40, dtype=torch.int64, device=meta)
    )
    loader = TensorLoader(
        split, 16, Normalizer((0.5,) * 3, (0.2,) * 3, meta), meta, train=True, augment=True, rank=1, world=2
    )
    batches = list(loader.epoch(1))
    assert len(batches) == 3 and all(b.image.device == meta and b.index.device == meta for b in batches)  # 16, 16, 8
    assert batches[0].image.shape == (8, 3, 8, 8) and batches[0].image.dtype == torch.float32


def test_normalisation_matches_torchvision() -> None:
    split = coded(8)
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    ours = next(TensorLoader(split, 8, Normalizer(mean, std, CPU), CPU, train=False, augment=False).epoch(1))
    theirs = next(TorchvisionLoader(split, 8, mean, std, CPU, train=False, augment=False).epoch(1))
    assert torch.allclose(ours.image, theirs.image, atol=1e-5) and torch.equal(ours.index, theirs.index)


def test_torchvision_loader_is_deterministic_resumable_and_sharded() -> None:
    g = torch.Generator().manual_seed(1)
    split = Split(torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(24) % 3)

    def loader(**kw) -> TorchvisionLoader:
        return TorchvisionLoader(split, 8, (0.5,) * 3, (0.25,) * 3, CPU, train=True, augment=True, seed=5, **kw)

    full = list(loader().epoch(2))
    assert sorted(torch.cat([b.index for b in full]).tolist()) == list(range(24))
    assert all(torch.equal(a.image, b.image) for a, b in zip(full, loader().epoch(2)))
    assert not torch.equal(full[0].index, next(loader().epoch(3)).index)  # reshuffled each epoch
    resumed = list(loader().epoch(2, start=1))
    assert all(torch.equal(a.image, b.image) for a, b in zip(full[1:], resumed, strict=True))
    halves = [list(loader(rank=r, world=2).epoch(2)) for r in (0, 1)]
    for b, (r0, r1) in enumerate(zip(*halves)):
        assert torch.equal(torch.cat([r0.image, r1.image]), full[b].image)
        assert torch.equal(torch.cat([r0.label, r1.label]), full[b].label)


def test_bf16_device_loader_normalises_in_bf16_and_keeps_eval_in_fp32() -> None:
    ds = load_dataset(merge(DATA_DEFAULTS, {"dataset": "synthetic", "size": 16, "test_size": 8}), Path.cwd())
    data = merge(DATA_DEFAULTS, {"dataset": "synthetic", "loader": "device", "batch_size": 8, "eval_batch_size": 8})
    train, fit, test = make_loaders(ds, data, merge(TRAIN_DEFAULTS, {"precision": "bf16"}), CPU)
    assert next(train.epoch(1)).image.dtype == torch.bfloat16
    assert next(fit.epoch(1)).image.dtype == torch.float32 and next(test.epoch(1)).image.dtype == torch.float32


def write_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", 5), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / part / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20 + i, 14, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / part / cls / f"{i}.png")


def test_imagefolder_streams_resized_images(tmp_path: Path) -> None:
    write_folder(tmp_path / "pics")
    data = merge(
        DATA_DEFAULTS,
        {
            "dataset": "imagefolder",
            "root": "pics",
            "image_size": 16,
            "loader": "torchvision",
            "batch_size": 4,
            "eval_batch_size": 4,
            "workers": 0,
        },
    )
    assert data_info_of(data, tmp_path) == (2, 3, 16)  # classes counted from the folders
    ds = load_dataset(data, tmp_path)
    assert (ds.num_classes, ds.channels, ds.image_size, len(ds.train), len(ds.test)) == (2, 3, 16, 10, 4)
    train, _, test = make_loaders(ds, data, TRAIN_DEFAULTS, CPU)
    batches = list(train.epoch(1))
    assert len(batches) == 3 and batches[0].image.shape == (4, 3, 16, 16)  # 4, 4, 2: the last partial batch kept
    labels = torch.cat([b.label for b in test.epoch(1)])
    assert labels.tolist() == [0, 0, 1, 1]  # class folders in sorted order
    with pytest.raises(DataError, match="data.loader: torchvision"):
        load_dataset({**data, "loader": "device"}, tmp_path)
    with pytest.raises(DataError, match="train/ and val/"):
        load_dataset({**data, "root": "nowhere"}, tmp_path)
