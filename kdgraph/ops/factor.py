"""Factor transfer's paraphraser (a teacher-side autoencoder) and translator (the student's factor head)."""

from __future__ import annotations

import torch
from torch import nn

from ..params import flag, integer, real
from ..registry import PortInfo, register_op
from .base import Op, channels_of, first_info


def _conv_stack(channels: list[int], bn: bool, transpose: bool = False) -> nn.Sequential:
    """Conv3x3 (stride 1, padding 1, bias) [+ BN] + LeakyReLU(0.1) between consecutive widths."""
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [conv(c_in, c_out, 3, 1, 1)] + ([nn.BatchNorm2d(c_out)] if bn else []) + [nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


@register_op("paraphraser", params={"rate": real(gt=0, le=64), "bn": flag()})
class Paraphraser(Op):
    """FT's paraphraser: an autoencoder of the teacher's map whose code is the teacher's factor.

    Input: the teacher's map (N, C, H, W). Encoder: Conv3x3 C -> C, C -> kC, kC -> kC; decoder:
    ConvTranspose3x3 kC -> kC, kC -> C, C -> C; each with bias, [BN,] LeakyReLU(0.1); k = rate (0.5),
    bn false (RepDistiller's Paraphraser defaults). Outputs ``factor`` (N, kC, H, W) and ``rec``
    (N, C, H, W), the reconstruction (pre-trained with an ``mse`` edge against the input, then frozen).
    Kim, Park, Kwak. Paraphrasing Complex Network: Network Compression via Factor Transfer.
    NeurIPS 2018, arXiv:1802.04977.
    """

    outputs = ("factor", "rec")

    def __init__(self, rate: float = 0.5, bn: bool = False, in_info: list[PortInfo] | None = None):
        super().__init__()
        c = channels_of(in_info, 0, "paraphraser")
        k = int(c * float(rate))
        self.encoder = _conv_stack([c, c, k, k], bool(bn))
        self.decoder = _conv_stack([k, k, c, c], bool(bn), transpose=True)
        stride = first_info(in_info).stride
        self._ports = {"factor": PortInfo("map", k, stride), "rec": PortInfo("map", c, stride)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        factor = self.encoder(x)
        return {"factor": factor, "rec": self.decoder(factor)}

    def port_info(self) -> dict[str, PortInfo]:
        return dict(self._ports)


@register_op("translator", params={"channels": integer(null=True), "rate": real(gt=0, le=64), "bn": flag()})
class Translator(Op):
    """FT's translator: the student's map to a factor the width of the teacher's.

    Inputs: the student's map (N, C_s, H, W) [, the teacher's map, for C_t]. Conv3x3 C_s -> C_s,
    C_s -> kC_t, kC_t -> kC_t, each with bias, [BN,] LeakyReLU(0.1); k = rate (0.5), bn true
    (RepDistiller's Translator defaults). C_t: ``channels`` or the second input's. Output ``out``:
    (N, kC_t, H, W). Kim, Park, Kwak, NeurIPS 2018.
    """

    def __init__(
        self, channels: int | None = None, rate: float = 0.5, bn: bool = True, in_info: list[PortInfo] | None = None
    ):
        super().__init__()
        c_s = channels_of(in_info, 0, "translator")
        c_t = int(channels) if channels is not None else channels_of(in_info, 1, "translator")
        k = int(c_t * float(rate))
        self.encoder = _conv_stack([c_s, c_s, k, k], bool(bn))
        self._info = PortInfo("map", k, first_info(in_info).stride)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(x)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}
