"""Datasets as uint8 image tensors in memory (or image files on disk), and the loaders that batch them.

Every in-memory dataset becomes a ``Split`` (images N x C x H x W uint8, labels int64) plus its
normalisation. Three loaders yield the same ``Batch`` (normalised image, label, index):

* ``host``: ``TensorLoader`` over tensors in host memory, augmentation in torch, then copied over;
* ``device``: the same ``TensorLoader`` with the uint8 split kept on the accelerator; crop, flip,
  normalisation and the epoch's permutation all happen there, so nothing returns to the host;
* ``torchvision``: a ``DataLoader`` with torchvision's RandomCrop(padding) / RandomHorizontalFlip /
  ToTensor / Normalize on PIL images, in worker processes; the only loader for ``imagefolder``.

Each draws an epoch's order (and, for the tensor loaders, crop offsets and flips; for torchvision,
one seed per image) from a generator seeded by (seed, stage, epoch), so a resumed run sees exactly
the batches an uninterrupted one would. With several processes, process r takes slice r of every
global batch: ``batch_size`` is the global batch.

Datasets are registered (``@register_dataset``, kdgraph/datasets/): ``cifar100``/``cifar10`` (the
python pickle format torchvision downloads; read directly), ``digits`` (scikit-learn's bundled 8x8
handwritten digits, no download), ``synthetic`` (learnable class prototypes plus noise),
``imagefolder`` (``root`` holds ``train/`` and ``val/``, one folder per class, images resized to
``image_size``); a plugin file adds its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .catalog import load_builtins
from .datasets.base import DataInfo, Dataset, FolderSplit, Schema, Split, check_split, subset
from .errors import DataError, first_line
from .files import IMAGE, open_bounded
from .output_cache import variant_ids
from .registry import DATASETS


def load_dataset(cfg: dict[str, Any], base_dir: Path, seed: int = 0) -> Dataset:
    """The dataset a graph file's `data:` section names (a registered dataset), with `subset` applied.

    Whatever the dataset (built-in or a plugin's), its splits are held to the schema its ``info``
    declares before anything uses them: as many labels as images, integer labels in range, the
    declared image shape and uint8 pixels.
    """
    name = cfg["dataset"]
    load_builtins()
    if name not in DATASETS:
        hint = DATASETS.suggest(name)
        raise DataError(f"unknown dataset {name!r}" + (f"; {hint}" if hint else ""))
    source = DATASETS.get(name).obj()
    ds = source.load(cfg, base_dir, seed)
    schema = Schema.of(source.info(cfg, base_dir))
    fix = f"dataset {name!r} must load what its info() declares"
    for part, split in (("train", ds.train), ("test", ds.test)):
        check_split(split, schema, f"dataset {name!r}, {part} split", fix)
    if cfg.get("subset"):
        n = int(cfg["subset"])
        ds.train, ds.test = subset(ds.train, n), subset(ds.test, n)
    return ds


# ----------------------------------------------------------------------------- augmentation


def crop_flip(images: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-image random crop with zero padding `pad` and horizontal flip, as one gather.

    Same semantics as torchvision's RandomCrop(size, padding=pad) followed by RandomHorizontalFlip:
    image i is padded with zeros, cropped at (oy[i], ox[i]) in the padded image, then mirrored
    when flip[i].
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = oy[:, None] + ar_h  # n x h
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # n x w
    idx = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
    return out.permute(0, 3, 1, 2)


class Normalizer:
    """uint8 images -> normalised floats (x / 255 - mean) / std, in the chosen dtype and layout."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        dtype=torch.float32,
        channels_last: bool = False,
    ):
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)
        self.dtype, self.channels_last = dtype, channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, images.float(), self.scale).to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class Batch:
    image: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor
    variant: torch.Tensor | None = None  # each sample's crop/flip as one number (the output cache's key)
    views: dict[str, torch.Tensor] = field(default_factory=dict)  # named views of the same samples


def pad_of(image_size: int) -> int:
    """Zero padding of the random crop: 4 on 32x32 CIFAR (the reference recipe), 1 on 8x8 digits."""
    return max(1, image_size // 8)


def _epoch_generator(seed: int, stage: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_007 + epoch)


def _batch_count(n: int, batch_size: int, drop_last: bool, limit: int | None, world: int = 0) -> int:
    """Batches per epoch: ceil(n / batch) keeping the last partial batch (the reference), floor when dropping.

    world > 0 (training): a partial batch that would give one of `world` processes fewer than 2 samples
    is dropped anyway, since BatchNorm cannot train on one sample (the reference would stop there).
    """
    full, rest = divmod(n, batch_size)
    if rest and not drop_last:
        per = -(-rest // world) if world else 0
        full += 1 if not world or rest - (world - 1) * per >= 2 else 0
    return min(full, limit) if limit else full


def _shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Process `rank`'s slice of a global batch."""
    per = -(-len(batch) // world)
    return batch[rank * per : (rank + 1) * per]


@dataclass
class Draws:
    """One epoch's random choices: the order of the samples, and per sample its crop offsets and flip."""

    order: torch.Tensor
    oy: torch.Tensor | None = None
    ox: torch.Tensor | None = None
    flip: torch.Tensor | None = None


class TensorLoader:
    """Batches of an in-memory split; deterministic per (seed, stage, epoch); sharded across processes.

    Each epoch's permutation, crop offsets and flips are drawn up front from one generator (on the
    host, so every device draws the same) and moved once to where the split lives; each batch is then
    a gather, a crop-and-flip and a normalisation on that device, with no host round trip. Skipping
    the first k batches (a resumed run) leaves the rest identical.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        *,
        train: bool,
        augment: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        limit_batches: int | None = None,
        drop_last: bool = False,
        views: dict[str, Any] | None = None,
    ):
        self.split = split
        self.views = views or {}  # name -> kdgraph.augment.ViewPipeline, drawn on training epochs only
        self.batch_size, self.normalizer, self.device = batch_size, normalizer, device
        self.train, self.augment, self.seed, self.rank, self.world = train, augment, seed, rank, world
        self.pad = pad_of(split.images.shape[-1])
        self.drop_last = bool(drop_last)
        self.num_batches = _batch_count(len(split), batch_size, self.drop_last, limit_batches, world if train else 0)

    def __len__(self) -> int:
        return self.num_batches

    def draws(self, epoch: int, stage: int = 0) -> Draws:
        """The epoch's order, crop offsets (0 .. 2 pad, uniform) and flips (probability 1/2), on the host."""
        n = len(self.split)
        if not self.train:
            return Draws(torch.arange(n))
        g = _epoch_generator(self.seed, stage, epoch)
        order = torch.randperm(n, generator=g)
        oy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        ox = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        return Draws(order, oy, ox, flip)

    def drawn(self, epoch: int, stage: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(sample indices, variants) that this process's batches of the epoch hold, on the host, in order.

        What ``epoch`` yields as ``Batch.index`` and ``Batch.variant``, without building the images: the
        output cache fills ahead from it (kdgraph/train/cache.py).
        """
        d = self.draws(epoch, stage)
        rows = [
            _shard(d.order[b * self.batch_size : (b + 1) * self.batch_size], self.rank, self.world)
            for b in range(self.num_batches)
        ]
        index = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        if not (self.train and self.augment):
            return index, None
        return index, variant_ids(d.oy[index], d.ox[index], d.flip[index], self.pad)

    def epoch(self, epoch: int, stage: int = 0, start: int = 0) -> Iterator[Batch]:
        """Batches of one epoch, beginning after `start` batches already done."""
        where = self.split.images.device
        d = self.draws(epoch, stage)
        order = d.order.to(where)  # one copy per epoch; per batch, indices never leave the device
        augment = self.train and self.augment
        if augment:
            oy, ox, flip = d.oy.to(where), d.ox.to(where), d.flip.to(where)
        views = self.views if self.train else {}
        view_draws = {v: p.to(p.draws(len(self.split), self.seed, stage, epoch), where) for v, p in views.items()}
        for b in range(start, self.num_batches):
            idx = _shard(order[b * self.batch_size : (b + 1) * self.batch_size], self.rank, self.world)
            raw = images = self.split.images[idx]
            variant = None
            if augment:
                images = crop_flip(images, oy[idx], ox[idx], flip[idx], self.pad)
                variant = variant_ids(oy[idx], ox[idx], flip[idx], self.pad).to(self.device, non_blocking=True)
            images = images.to(self.device, non_blocking=True)
            labels = self.split.labels[idx].to(self.device, non_blocking=True)
            shown = {}
            if views:  # every view from the same samples' raw pixels
                host_idx = _shard(d.order[b * self.batch_size : (b + 1) * self.batch_size], self.rank, self.world)
                for v, p in views.items():
                    shown[v] = self.normalizer(p.apply(raw, idx, host_idx, view_draws[v]).to(self.device))
            yield Batch(self.normalizer(images), labels, idx.to(self.device, non_blocking=True), variant, shown)


# ----------------------------------------------------------------------------- the torchvision loader


@dataclass(frozen=True)
class _Unreadable:
    """An image file that could not be decoded: its one-line message, carried out of the worker as a batch."""

    message: str


def _collate(items: list[Any]) -> Any:
    """The default collation, unless an item is unreadable: then that item stands for the whole batch."""
    bad = next((item for item in items if isinstance(item, _Unreadable)), None)
    return bad if bad is not None else torch.utils.data.default_collate(items)


def read_image(path: str) -> Any:
    """An image file as an RGB PIL image, read through the bounded reader; DataError naming the file if it is not one.

    Not an image, a truncated or 0-byte file, a decompression bomb, a pipe named *.jpg: each is one
    line (the bounded reader opens without blocking, so a FIFO is refused, never waited on).
    """
    from PIL import Image, UnidentifiedImageError

    fix = "replace or remove the file"
    with open_bounded(path, IMAGE) as fh:
        try:
            with Image.open(fh) as img:
                return img.convert("RGB")
        except UnidentifiedImageError:
            raise DataError(f"{path}: not an image PIL can read; {fix}") from None
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: a corrupt or truncated image ({first_line(e)}); {fix}") from None


class _TransformedImages(torch.utils.data.Dataset):
    """Items (index, seed) -> (normalised image, label, index) through torchvision transforms on PIL images.

    The transform's random choices are seeded per item, so a batch does not depend on the number of
    workers, on which worker made it, or on the batches before it (a resumed epoch is identical).
    An image file that cannot be read becomes an ``_Unreadable`` item, not an exception: raised in a
    worker, it would reach the user wrapped in that worker's traceback; the loader raises it instead.
    """

    def __init__(self, split: Split | FolderSplit, transform: Any):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def _image(self, index: int):
        from PIL import Image

        if isinstance(self.split, FolderSplit):
            path, label = self.split.samples[index]
            return read_image(path), label
        array = self.split.images[index].permute(1, 2, 0).numpy()
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        return image, int(self.split.labels[index])

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        try:
            image, label = self._image(index)
        except DataError as e:
            return _Unreadable(str(e))
        with torch.random.fork_rng(devices=[]):  # workers=0 runs here: leave the training RNG alone
            # the CPU generator only (transforms draw from it): torch.manual_seed also seeds every
            # accelerator, which tripled the per-image cost (447 against 147 us; 166 us like this)
            torch.default_generator.manual_seed(seed)
            x = self.transform(image)
        return x, label, index


class _GlobalBatches(torch.utils.data.Sampler):
    """This process's slice of each global batch of an epoch, as (index, seed) pairs; set by epoch()."""

    def __init__(self, loader: TorchvisionLoader):
        self.loader = loader
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TorchvisionLoader:
    """A torch DataLoader with torchvision transforms, yielding the same Batches as TensorLoader.

    Training: RandomCrop(size, padding=pad) and RandomHorizontalFlip when `augment`, then ToTensor
    and Normalize, on PIL images (the reference CIFAR recipe); image folders are first resized to
    `image_size` x `image_size`. Evaluation: ToTensor and Normalize (after the resize).
    """

    def __init__(
        self,
        split: Split | FolderSplit,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        *,
        train: bool,
        augment: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        limit_batches: int | None = None,
        drop_last: bool = False,
        workers: int = 0,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ):
        from torchvision import transforms as T

        size = split.image_size if isinstance(split, FolderSplit) else int(split.images.shape[-1])
        self.pad = pad_of(size)
        steps: list[Any] = [T.Resize((size, size))] if isinstance(split, FolderSplit) else []
        if train and augment:
            steps += [T.RandomCrop(size, padding=self.pad), T.RandomHorizontalFlip()]
        steps += [T.ToTensor(), T.Normalize(mean, std)]
        self.transform = T.Compose(steps)
        self.split, self.batch_size, self.device = split, batch_size, device
        self.train, self.seed, self.rank, self.world = train, seed, rank, world
        self.dtype, self.channels_last = dtype, channels_last
        self.drop_last = bool(drop_last)
        self.num_batches = _batch_count(len(split), batch_size, self.drop_last, limit_batches, world if train else 0)
        self.sampler = _GlobalBatches(self)
        self.data = torch.utils.data.DataLoader(
            _TransformedImages(split, self.transform),
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            collate_fn=_collate,
        )

    def __len__(self) -> int:
        return self.num_batches

    def epoch(self, epoch: int, stage: int = 0, start: int = 0) -> Iterator[Batch]:
        """Batches of one epoch, beginning after `start` batches already done."""
        n = len(self.split)
        if self.train:
            g = _epoch_generator(self.seed, stage, epoch)
            order = torch.randperm(n, generator=g)
            seeds = torch.randint(0, 2**62, (n,), generator=g)
        else:
            order, seeds = torch.arange(n), torch.zeros(n, dtype=torch.int64)
        seed_of = seeds.tolist()
        self.sampler.batches = [
            [
                (i, seed_of[i])
                for i in _shard(order[b * self.batch_size : (b + 1) * self.batch_size], self.rank, self.world).tolist()
            ]
            for b in range(start, self.num_batches)
        ]
        for batch in self.data:
            if isinstance(batch, _Unreadable):  # raised here, in the main process: one line, no worker traceback
                raise DataError(batch.message)
            image, label, index = batch
            image = image.to(self.device, non_blocking=True).to(self.dtype)
            if self.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            yield Batch(image, label.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True))


# ----------------------------------------------------------------------------- choosing loaders

Loader = TensorLoader | TorchvisionLoader


def normalization_of(dataset: Dataset, data_cfg: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the normalisation: `data.mean` / `data.std` (a recipe's own, e.g. TESKD's CIFAR-10
    statistics on CIFAR-100, ATS-LargeKD's ImageNet ones), else the dataset's."""
    mean, std = tuple(data_cfg.get("mean") or dataset.mean), tuple(data_cfg.get("std") or dataset.std)
    for key, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, dataset.channels):  # one value for every channel, or one per channel
            raise DataError(
                f"data.{key} has {len(values)} values but the images have {dataset.channels} channels; "
                f"give one value, or one per channel"
            )
    return mean, std


def make_loaders(
    dataset: Dataset,
    data_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    views: dict[str, Any] | None = None,
) -> tuple[Loader, Loader, Loader]:
    """(train, fit, test) loaders of the kind `data.loader` names, for this process of `world`.

    `views`: named views' pipelines (``kdgraph.augment.make_views``), drawn by the train loader only.

    The train loader normalises in bfloat16 when `train.precision` is bf16 on the device loader (the
    network runs under autocast anyway); the fit and test loaders stay in float32 (fits accumulate
    statistics outside autocast).
    """
    kind = data_cfg.get("loader", "host")
    if isinstance(dataset.train, FolderSplit):
        kind = "torchvision"
    channels_last = bool(train_cfg.get("channels_last"))
    train_dtype = torch.bfloat16 if (kind == "device" and train_cfg.get("precision") == "bf16") else torch.float32
    batch, eval_batch = int(data_cfg["batch_size"]), int(data_cfg.get("eval_batch_size") or data_cfg["batch_size"])
    common = dict(rank=rank, world=world, seed=int(train_cfg.get("seed", 0)))
    limit, limit_eval = train_cfg.get("limit_batches"), train_cfg.get("limit_eval_batches")
    augment = bool(data_cfg.get("augment", True))
    if kind == "torchvision" and views:
        raise DataError("data.views need the tensor loaders: set data.loader: host or device")
    drop_last = bool(data_cfg.get("drop_last", False))  # training only; evaluation sees every sample
    mean, std = normalization_of(dataset, data_cfg)
    if kind == "torchvision":
        tv = dict(workers=int(data_cfg.get("workers", 0) or 0), channels_last=channels_last, **common)
        return (
            TorchvisionLoader(
                dataset.train,
                batch,
                mean,
                std,
                device,
                train=True,
                augment=augment,
                limit_batches=limit,
                drop_last=drop_last,
                dtype=train_dtype,
                **tv,
            ),
            TorchvisionLoader(
                dataset.train, eval_batch, mean, std, device, train=False, augment=False, limit_batches=limit, **tv
            ),
            TorchvisionLoader(
                dataset.test, eval_batch, mean, std, device, train=False, augment=False, limit_batches=limit_eval, **tv
            ),
        )
    store = device if kind == "device" else torch.device("cpu")
    train_split, test_split = dataset.train.to(store), dataset.test.to(store)
    norm = Normalizer(mean, std, device, train_dtype, channels_last)
    norm32 = Normalizer(mean, std, device, torch.float32, channels_last)
    return (
        TensorLoader(
            train_split,
            batch,
            norm,
            device,
            train=True,
            augment=augment,
            limit_batches=limit,
            drop_last=drop_last,
            views=views,
            **common,
        ),
        TensorLoader(
            train_split, eval_batch, norm32, device, train=False, augment=False, limit_batches=limit, **common
        ),
        TensorLoader(
            test_split, eval_batch, norm32, device, train=False, augment=False, limit_batches=limit_eval, **common
        ),
    )


def data_info(cfg: dict[str, Any], base_dir: Path | None = None) -> DataInfo:
    """Classes, channels, image size and training samples of a `data:` section without loading the data.

    The registered dataset's ``info`` answers (relative paths from `base_dir`, the graph file's folder);
    `subset` caps the training samples, as loading does.
    """
    load_builtins()
    info = DATASETS.get(cfg["dataset"]).obj().info(cfg, base_dir or Path.cwd())
    if info.num_train is not None and cfg.get("subset"):
        info = replace(info, num_train=min(info.num_train, int(cfg["subset"])))
    return info


def data_info_of(cfg: dict[str, Any], base_dir: Path | None = None) -> tuple[int, int, int]:
    """(classes, channels, image size) of a `data:` section without loading the data."""
    info = data_info(cfg, base_dir)
    return info.num_classes, info.channels, info.image_size
