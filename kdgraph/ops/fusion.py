"""TESKD's Mixed Fusion Module and branch heads: hierarchical students built top-down on a backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..params import choice, integer
from ..registry import PortInfo, register_op
from .base import Op, channels_of, first_info


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, bias=bias), nn.BatchNorm2d(c_out), nn.ReLU())


class _Up(nn.Module):
    """Bilinear upsampling to the finer level's size (x2 between stages; align_corners=True) + Conv1x1-BN-ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv_bn_relu(channels, channels)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


@register_op("mfm", params={"channels": integer(), "fusion": choice("mixed", "add", "concat", "none")})
class MixedFusion(Op):
    """TESKD's Mixed Fusion Module: top-down fusion of stage features s1..sB into t1..tB (C channels each).

    Inputs: s1..sB, finest first (TESKD: the backbone's 4 stage outputs, 64@32, 128@16, 256@8,
    512@4 px for a CIFAR ResNet-18); their channels come from the input ports. With
    lateral_i = Conv1x1(C_i -> C, no bias)+BN+ReLU, up_i = bilinear x2 (align_corners=True) +
    Conv1x1(C -> C, no bias)+BN+ReLU and fuse_i = Conv1x1(2C -> C, no bias)+BN+ReLU:

        t_B = lateral_B(s_B)
        t_i = fuse_i(cat[up_i(t_{i+1}) + lateral_i(s_i), up_i(t_{i+1})])   for i = B-1 .. 1

    C = 512 (TESKD: the last stage's width). Output ports ``t1`` .. ``tB``: (N, C, H_i, W_i), the
    spatial size of s_i. Li et al., TESKD, arXiv:2110.00329.

    fusion: the merge of TESKD's Table 4 ablation (the other levels as above, t_B = lateral_B(s_B)):

    * "mixed" (default, MFM):  t_i = fuse_i(cat[up_i(t_{i+1}) + lateral_i(s_i), up_i(t_{i+1})])
    * "add" (FPN style, "w/o MFM-Concat"):  t_i = up_i(t_{i+1}) + lateral_i(s_i)  (no fuse conv)
    * "concat" (UNet style, "w/o MFM-Add"):  t_i = fuse_i(cat[s_i, up_i(t_{i+1})]), fuse_i =
      Conv1x1(C_i + C -> C)+BN+ReLU, the extra 1x1 conv that halves the concatenation (the raw
      backbone feature, no lateral: the paper's "raw features from the backbone")
    * "none" ("w/o MFM-No Connection"):  t_i = up_i(t_{i+1})  (the last stage's feature upsampled)
    """

    FUSIONS = ("mixed", "add", "concat", "none")

    def __init__(self, channels: int = 512, fusion: str = "mixed", in_info: list[PortInfo] | None = None):
        super().__init__()
        if not in_info or len(in_info) < 2:
            raise ValueError("mfm needs at least two stage features as inputs (s1..sB, finest first)")
        if fusion not in self.FUSIONS:
            raise ValueError(f"mfm: fusion must be one of {', '.join(self.FUSIONS)}, not {fusion!r}")
        c = int(channels)
        self.levels, self.channels, self.fusion = len(in_info), c, fusion
        widths = [channels_of(in_info, i, "mfm") for i in range(self.levels)]
        self.strides = [first_info(in_info, i).stride for i in range(self.levels)]
        self.outputs = tuple(f"t{i + 1}" for i in range(self.levels))
        lateral_at = range(self.levels) if fusion in ("mixed", "add") else [self.levels - 1]
        self.laterals = nn.ModuleList(
            conv_bn_relu(widths[i], c) if i in lateral_at else nn.Identity() for i in range(self.levels)
        )
        self.ups = nn.ModuleList(_Up(c) for _ in range(self.levels - 1))  # ups[i] lifts t_{i+2} to level i+1
        fuse_in = {"mixed": [2 * c] * self.levels, "concat": [w + c for w in widths]}.get(fusion)
        self.fuses = nn.ModuleList(
            conv_bn_relu(fuse_in[i], c) if fuse_in else nn.Identity() for i in range(self.levels - 1)
        )

    def merge(self, i: int, up: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Level i's fused map from the upsampled coarser one and the backbone's stage feature."""
        if self.fusion == "mixed":
            return self.fuses[i](torch.cat([up + self.laterals[i](s), up], dim=1))
        if self.fusion == "add":
            return up + self.laterals[i](s)
        if self.fusion == "concat":
            return self.fuses[i](torch.cat([s, up], dim=1))
        return up

    def forward(self, *stages: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(stages) != self.levels:
            raise ValueError(f"mfm was built for {self.levels} inputs, got {len(stages)}")
        t = self.laterals[-1](stages[-1])
        out = {self.outputs[-1]: t}
        for i in range(self.levels - 2, -1, -1):
            t = self.merge(i, self.ups[i](t, stages[i].shape[-2:]), stages[i])
            out[self.outputs[i]] = t
        return out

    def port_info(self) -> dict[str, PortInfo]:
        return {name: PortInfo("map", self.channels, s) for name, s in zip(self.outputs, self.strides)}


@register_op("branch_head", params={"kernel": integer(le=64), "channels": integer()})
class BranchHead(Op):
    """TESKD's branch classifier: Conv k x k stride k + BN + ReLU, Conv1x1 + BN + ReLU, pool, Linear.

    Input: a fused map (an ``mfm`` output, C_in channels). kernel: k (TESKD: 2, 4, 8 on t3, t2, t1,
    bringing each to the 4x4 of the last stage); convolutions have biases; channels: width of the
    branch (512). Outputs ``logits`` (N, num_classes) and ``feat``: the pooled vector (N, channels),
    TESKD's feature-loss input (compare with the backbone's ``pooled``).
    """

    outputs = ("logits", "feat")

    def __init__(
        self,
        kernel: int,
        channels: int = 512,
        in_info: list[PortInfo] | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        if num_classes is None:
            raise ValueError("branch_head needs num_classes (the engine passes the dataset's)")
        k, c = int(kernel), int(channels)
        self.body = nn.Sequential(
            conv_bn_relu(channels_of(in_info, 0, "branch_head"), c, kernel=k, stride=k, bias=True),
            conv_bn_relu(c, c, bias=True),
        )
        self.fc = nn.Linear(c, int(num_classes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)
        return {"logits": self.fc(feat), "feat": feat}

    def port_info(self) -> dict[str, PortInfo]:
        return {"logits": PortInfo("logits", self.fc.out_features), "feat": PortInfo("vector", self.fc.in_features)}
