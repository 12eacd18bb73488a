"""ReviewKD's attention-based fusion (ABF) across stages: deeper student features review shallower ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..params import integer, integers
from ..registry import PortInfo, register_op
from .base import Op, channels_of, first_info


class ABF(nn.Module):
    """One attention-based fusion step: Conv1x1+BN to the mid width, fuse with the deeper residual, Conv3x3+BN.

    fuse: z = sigmoid(Conv1x1(cat[x, up(y)]) -> 2 maps, with bias); x' = x z_0 + up(y) z_1, up = nearest
    upsampling of the deeper level's fused map y to x's size. Returns (Conv3x3+BN(x'), x'): the output
    compared with the teacher, and the residual handed to the next (shallower) level. Convolutions
    without bias, drawn kaiming_uniform(a=1) as the reference.
    """

    def __init__(self, c_in: int, mid: int, c_out: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.att_conv = nn.Sequential(nn.Conv2d(mid * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None and y is not None:
            y = F.interpolate(y, x.shape[-2:], mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))  # (N, 2, H, W)
            x = x * z[:, :1] + y * z[:, 1:]
        return self.conv2(x), x


@register_op("review", params={"channels": integers(null=True), "mid_channels": integer()})
class Review(Op):
    """ReviewKD's residual learning framework: ABF modules from the deepest student feature to the shallowest.

    Inputs: student features from shallow to deep, e.g. [student.feat1, student.feat2,
    student.feat3, student.pooled] (vectors are taken as 1x1 maps). ``channels``: the output width per
    input (the teacher's widths; default the inputs'); mid width min(mid_channels, C of the last
    input) (mdistiller: min(512, in_channels[-1])). The deepest input gets an ABF without fusion; each
    shallower input i gets ABF_i(x_i, residual of level i+1). Outputs ``out0`` .. ``out{n-1}``, one
    per input in input order, (N, channels[i], H_i, W_i), to compare with the teacher's features
    (mdistiller: teacher.preact1..3 and teacher.pooled) by ``hcl`` edges.
    Chen, Liu, Zhao, Jia. Distilling Knowledge via Knowledge Review. CVPR 2021, arXiv:2104.09044.
    """

    outputs: tuple[str, ...] = ()

    def __init__(
        self, channels: list[int] | None = None, mid_channels: int = 512, in_info: list[PortInfo] | None = None
    ):
        super().__init__()
        n = len(in_info) if in_info else 0
        if n == 0:
            raise ValueError("review: give the student features as inputs, shallow to deep")
        c_in = [channels_of(in_info, i, "review") for i in range(n)]
        c_out = [int(c) for c in channels] if channels is not None else c_in
        if len(c_out) != n:
            raise ValueError(f"review: {n} inputs but {len(c_out)} channels")
        mid = min(int(mid_channels), c_in[-1])
        self.abfs = nn.ModuleList([ABF(c_in[i], mid, c_out[i], fuse=i < n - 1) for i in range(n)])
        self._ports = {f"out{i}": PortInfo("map", c_out[i], first_info(in_info, i).stride) for i in range(n)}

    def forward(self, *features: torch.Tensor) -> dict[str, torch.Tensor]:
        xs = [f if f.dim() == 4 else f.reshape(f.shape[0], -1, 1, 1) for f in features]
        outs: list[torch.Tensor] = [xs[0]] * len(xs)
        residual = None
        for i in reversed(range(len(xs))):
            outs[i], residual = self.abfs[i](xs[i], residual)
        return {f"out{i}": out for i, out in enumerate(outs)}

    def port_info(self) -> dict[str, PortInfo]:
        return dict(self._ports)
