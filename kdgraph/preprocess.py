"""An exported model that takes images as the dataset gives them and normalises them itself.

    model = load_exported("model.pt", raw=True)     # RawImages around the DeployedModel
    logits = model(images_uint8)                    # (N, C, H, W) uint8 0..255, or float in [0, 1]

The normalisation is the run's own, with the same arithmetic as its loader (``data.Normalizer``:
``x * (1 / (255 std)) + (-mean / std)`` in float32), so top-1 on the raw test split equals the run's.
"""

from __future__ import annotations

import torch
from torch import nn


class RawImages(nn.Module):
    """Raw images -> the run's normalisation -> the deployed model; ``expects`` says what goes in."""

    expects = "images (N, C, H, W): uint8 in 0..255 as the dataset stores them, or floats in [0, 1]"

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        std_t, mean_t = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, -1, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float() if images.dtype == torch.uint8 else images.float() * 255.0
        return self.model(torch.addcmul(self.shift, pixels, self.scale))
