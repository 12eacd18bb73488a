"""Augmentation pipelines of named views on uint8 image batches, reproducible per (seed, stage, epoch, view).

A ``ViewPipeline`` is one view's steps (see ``kdgraph.views``). Like the default view's crop and
flip, every random choice is drawn per *sample* for the whole epoch up front, from a generator
seeded by (seed, stage, epoch) and the view's name, so a batch does not depend on the batches
before it: a resumed epoch, or one sharded over processes, sees the same pixels.

* ``crop`` (zero padding ``pad``: 4 on 32x32, ``pad_of``), ``flip`` (probability ``p``) and ``cutout``
  (a ``size`` x ``size`` square, clipped at the border, centred uniformly in the image, filled with
  the dataset mean: DeVries & Taylor, arXiv:1708.04552, whose zero after normalisation is the mean;
  default size: half the image side) are batched gathers / masks on the device that holds the images;
* ``autoaugment`` (torchvision's CIFAR-10 policy by default: Cubuk et al., arXiv:1805.09501),
  ``randaugment`` (Cubuk et al., arXiv:1909.13719), ``trivialaugment`` (TrivialAugmentWide, Müller &
  Hutter, arXiv:2103.10146) and ``colorjitter`` are torchvision.transforms.v2 on uint8 tensors,
  applied image by image (their choices are per image) on the same device, each image's choices
  seeded by its own drawn seed on the CPU generator, which is restored afterwards.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch

from .data import crop_flip, pad_of
from .views import steps_of

_TORCHVISION = ("autoaugment", "randaugment", "trivialaugment", "colorjitter")


def _view_generator(seed: int, stage: int, epoch: int, view: str) -> torch.Generator:
    salt = zlib.crc32(view.encode())  # stable across processes and runs (unlike hash())
    return torch.Generator().manual_seed((seed * 1_000_003 + stage * 10_007 + epoch) * 7_919 + salt)


def _torchvision_transform(name: str, params: dict[str, Any]):
    from torchvision.transforms import v2

    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(params["policy"]))
    if name == "randaugment":
        return v2.RandAugment(num_ops=int(params["num_ops"]), magnitude=int(params["magnitude"]))
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    return v2.ColorJitter(params["brightness"], params["contrast"], params["saturation"], params["hue"])


class ViewPipeline:
    """One view's augmentation: ``draws`` per epoch (host), then ``apply`` per batch (on the images' device)."""

    def __init__(self, name: str, view: dict[str, Any], image_size: int, mean: tuple[float, ...]):
        self.name = name
        self.steps = steps_of(view)
        self.size = image_size
        self.fill = torch.tensor([round(255 * m) for m in mean], dtype=torch.uint8).view(-1, 1, 1)
        self.transforms = {i: _torchvision_transform(n, p) for i, (n, p) in enumerate(self.steps) if n in _TORCHVISION}

    def draws(self, n: int, seed: int, stage: int, epoch: int) -> list[dict[str, torch.Tensor]]:
        """Per step, its per-sample choices for the epoch's n samples (indexed by sample, not by batch)."""
        g = _view_generator(seed, stage, epoch, self.name)
        out: list[dict[str, torch.Tensor]] = []
        for name, params in self.steps:
            if name == "crop":
                pad = self._pad(params)
                out.append({"oy": torch.randint(0, 2 * pad + 1, (n,), generator=g),
                            "ox": torch.randint(0, 2 * pad + 1, (n,), generator=g)})
            elif name == "flip":
                out.append({"flip": torch.rand(n, generator=g) < float(params["p"])})
            elif name == "cutout":
                out.append({"cy": torch.randint(0, self.size, (n,), generator=g),
                            "cx": torch.randint(0, self.size, (n,), generator=g)})
            else:
                out.append({"seed": torch.randint(0, 2**62, (n,), generator=g)})
        return out

    def to(self, draws: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
        """The draws where the images live (per-image seeds stay on the host: the CPU generator reads them)."""
        return [{k: (v if k == "seed" else v.to(device)) for k, v in d.items()} for d in draws]

    def apply(
        self, images: torch.Tensor, idx: torch.Tensor, host_idx: torch.Tensor, draws: list[dict[str, torch.Tensor]]
    ) -> torch.Tensor:
        """The view of uint8 images (b, C, H, W) of samples `idx` (their device; `host_idx`: the same, on the host)."""
        for i, ((name, params), d) in enumerate(zip(self.steps, draws)):
            if name == "crop":
                flip = torch.zeros(len(idx), dtype=torch.bool, device=images.device)
                images = crop_flip(images, d["oy"][idx], d["ox"][idx], flip, self._pad(params))
            elif name == "flip":
                images = torch.where(d["flip"][idx][:, None, None, None], images.flip(-1), images)
            elif name == "cutout":
                images = self._cutout(images, d["cy"][idx], d["cx"][idx], params)
            else:
                images = self._per_image(self.transforms[i], images, d["seed"][host_idx])
        return images

    def _pad(self, params: dict[str, Any]) -> int:
        return int(params["pad"]) if params["pad"] is not None else pad_of(self.size)

    def _cutout(self, images: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        size = int(params["size"]) if params["size"] is not None else self.size // 2
        h, w = images.shape[-2:]
        y0, x0 = cy - size // 2, cx - size // 2  # the square [y0, y0 + size) x [x0, x0 + size), clipped
        rows = torch.arange(h, device=images.device)[None, :]
        cols = torch.arange(w, device=images.device)[None, :]
        inside_r = (rows >= y0[:, None]) & (rows < (y0 + size)[:, None])  # b x h
        inside_c = (cols >= x0[:, None]) & (cols < (x0 + size)[:, None])  # b x w
        mask = (inside_r[:, :, None] & inside_c[:, None, :])[:, None]  # b x 1 x h x w
        fill = self.fill if params["fill"] == "mean" else torch.tensor(int(params["fill"]), dtype=torch.uint8)
        fill = fill.to(images.device)[: images.shape[1]] if fill.dim() else fill.to(images.device)
        return torch.where(mask, fill, images)

    @staticmethod
    def _per_image(transform: Any, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):  # the CPU generator only, restored on exit
            out = []
            for image, s in zip(images, seeds.tolist()):
                torch.default_generator.manual_seed(s)
                out.append(transform(image))
        return torch.stack(out)


def make_views(views: dict[str, Any] | None, image_size: int, mean: tuple[float, ...]) -> dict[str, ViewPipeline]:
    """The pipelines of a `data.views` mapping."""
    return {name: ViewPipeline(name, view, image_size, mean) for name, view in (views or {}).items()}
