"""Feature adapters: connectors, SimKD's projector, pooling, MGD's channel mask and generation block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..params import flag, integer, real
from ..registry import PortInfo, register_op
from ..schedule import Schedule
from .base import Op, channels_of, first_info


def resize_to(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bring a map to a spatial size: adaptive average pooling to shrink, bilinear interpolation to grow."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _target_channels(channels: int | None, in_info: list[PortInfo] | None, what: str) -> int:
    """Output width: the ``channels`` parameter, else the channels of the second (reference) input."""
    if channels is not None:
        return int(channels)
    if in_info and len(in_info) > 1 and in_info[1].channels is not None:
        return int(in_info[1].channels)
    raise ValueError(f"{what}: give `channels`, or a second input (the target port) with known channels")


def convreg_layer(c_in: int, c_out: int, s_h: int, t_h: int) -> nn.Module:
    """The conv of RepDistiller / mdistiller ``ConvReg`` for a student map of side s_h and a teacher map of side t_h.

    s_h = 2 t_h: Conv3x3 stride 2 padding 1; 2 s_h = t_h: ConvTranspose4x4 stride 2 padding 1;
    s_h >= t_h otherwise: Conv k x k with k = 1 + s_h - t_h (1x1 for equal sizes), no padding. All with
    bias (the reference keeps it before its BatchNorm). A student map smaller than the teacher's by
    another factor is rejected, as the reference does.
    """
    if s_h == 2 * t_h:
        return nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
    if 2 * s_h == t_h:
        return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
    if s_h >= t_h:
        return nn.Conv2d(c_in, c_out, 1 + s_h - t_h)
    raise ValueError(
        f"student map {s_h}x{s_h} is smaller than the teacher's {t_h}x{t_h} by a factor other "
        "than 2, which ConvReg does not map; give kernel_size for a conv + resize instead"
    )


@register_op(
    "connector",
    params={
        "channels": integer(null=True),
        "kernel_size": integer(le=64, null=True),
        "bn": flag(),
        "relu": flag(),
        "bias": flag(null=True),
    },
)
class Connector(Op):
    """FitNet's connector (RepDistiller / mdistiller ``ConvReg``): Conv with bias + BN [+ ReLU] to `channels`.

    Inputs: x [, ref]. Output channels: the ``channels`` parameter, else ref's channels (ref is
    typically the teacher map the output is compared with). Default (kernel_size unset): the conv is
    ConvReg's choice from the two map sides (``convreg_layer``: 1x1 for equal sizes, strided 3x3 to
    halve, transposed 4x4 to double, a (1 + s - t) kernel otherwise), bias on; sides come from the
    ports' strides and the data's image size. kernel_size = k: a k x k conv (padding k // 2, no bias
    unless bias: true) whose output is resized to ref (average pooling down, bilinear up). relu adds
    a ReLU (ConvReg's use_relu; FitNet sets it). A vector input (N, C) gets Linear + BatchNorm1d.
    Output ``out``: (N, channels, H, W), or (N, channels) for vectors.
    """

    def __init__(
        self,
        channels: int | None = None,
        kernel_size: int | None = None,
        bn: bool = True,
        relu: bool = False,
        bias: bool | None = None,
        in_info: list[PortInfo] | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        info, ref = first_info(in_info), first_info(in_info, 1)
        c_in, c_out = channels_of(in_info, 0, "connector"), _target_channels(channels, in_info, "connector")
        self.vector = info.kind in ("vector", "logits")
        if self.vector:
            layers: list[nn.Module] = [nn.Linear(c_in, c_out, bias=not bn if bias is None else bias)]
            layers += [nn.BatchNorm1d(c_out)] if bn else []
        elif kernel_size is None:
            sides = [image_size // s if image_size and s else None for s in (info.stride, ref.stride)]
            s_h, t_h = sides if None not in sides else (1, 1)  # sizes unknown: 1x1, resized in forward
            conv = convreg_layer(c_in, c_out, s_h, t_h)
            if bias is False:
                conv.bias = None
            layers = [conv]
        else:
            k = int(kernel_size)
            layers = [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=not bn if bias is None else bias)]
        if not self.vector:
            layers += [nn.BatchNorm2d(c_out)] if bn else []
        layers += [nn.ReLU()] if relu else []
        self.body = nn.Sequential(*layers)
        self._info = PortInfo("vector" if self.vector else "map", c_out, ref.stride or info.stride)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        y = self.body(x)
        return resize_to(y, ref.shape[-2:]) if ref is not None and y.dim() == 4 and ref.dim() == 4 else y

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


@register_op("projector", params={"channels": integer(null=True), "factor": integer(le=64)})
class Projector(Op):
    """SimKD's projector: Conv1x1(s -> t/f)+BN+ReLU, Conv3x3(t/f -> t/f)+BN+ReLU, Conv1x1(t/f -> t)+BN+ReLU.

    No biases; f = factor (2). Inputs: the student map [, the teacher map]; t = ``channels`` or the
    teacher's channels. When the teacher map is given and smaller, the student map is first
    average-pooled to its size (SimKD pools the larger map; pool the teacher side with a ``pool`` op
    when it is the larger one). Output ``out``: (N, t, H, W). Deployed SimKD = student +
    projector + the teacher's classifier (``pool`` then ``call`` on ``teacher.fc``).
    Chen et al., SimKD, CVPR 2022.
    """

    def __init__(self, channels: int | None = None, factor: int = 2, in_info: list[PortInfo] | None = None):
        super().__init__()
        c_s, c_t = channels_of(in_info, 0, "projector"), _target_channels(channels, in_info, "projector")
        mid = c_t // int(factor)
        self.body = nn.Sequential(
            nn.Conv2d(c_s, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, c_t, 1, bias=False),
            nn.BatchNorm2d(c_t),
            nn.ReLU(),
        )
        ref = first_info(in_info, 1)
        self._info = PortInfo("map", c_t, ref.stride or first_info(in_info).stride)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        if ref is not None and x.shape[-2] * x.shape[-1] > ref.shape[-2] * ref.shape[-1]:
            x = F.adaptive_avg_pool2d(x, ref.shape[-2:])
        return self.body(x)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


@register_op("pool", params={"size": integer(le=4096), "flatten": flag(null=True)})
class Pool(Op):
    """Adaptive average pooling: to `size` (default 1, then flattened to (N, C)) or to a second input's size.

    Inputs: x [, ref]. With ref (a map), x is pooled to ref's spatial size and stays a map. Without,
    to size x size; size 1 is flattened to a vector unless flatten=false. A vector input passes through.
    """

    def __init__(self, size: int = 1, flatten: bool | None = None, in_info: list[PortInfo] | None = None):
        super().__init__()
        self.size = int(size)
        self.flatten = (self.size == 1) if flatten is None else bool(flatten)
        info, ref = first_info(in_info), first_info(in_info, 1)
        has_ref = bool(in_info) and len(in_info) > 1
        if info.kind in ("vector", "logits"):
            self._info = info
        elif has_ref:
            self._info = PortInfo("map", info.channels, ref.stride)
        else:
            self._info = PortInfo("vector" if self.flatten else "map", info.channels, None)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() < 3:
            return x
        if ref is not None:
            return F.adaptive_avg_pool2d(x, ref.shape[-2:])
        y = F.adaptive_avg_pool2d(x, self.size)
        return y.flatten(1) if self.flatten else y

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


def channel_mask(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """MGD's random mask: zero each (sample, channel) slice where u < ratio, u ~ U[0, 1); no rescaling."""
    keep = torch.rand(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)), device=x.device) >= ratio
    return x * keep.to(x.dtype)


@register_op("channel_mask", params={"ratio": real(ge=0, le=1, schedule=True), "train_only": flag()})
class ChannelMask(Op):
    """MGD's random channel mask: zero a (sample, channel) slice where u < ratio (0.15), u ~ U[0, 1).

    The mask is drawn per sample and channel and broadcast over H, W; kept values are not rescaled
    (unlike dropout). train_only (default): in eval mode the input passes unchanged. ratio may be a
    schedule. When the student needs a 1x1 alignment first (channels differ), MGD masks *after* the
    alignment: use ``generator``'s own ``mask_ratio`` instead. Yang et al., MGD, ECCV 2022.
    """

    def __init__(self, ratio: float | Schedule = 0.15, train_only: bool = True, in_info: list[PortInfo] | None = None):
        super().__init__()
        self.ratio, self.train_only = ratio, bool(train_only)
        self._info = first_info(in_info)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.train_only and not self.training:
            return x
        return channel_mask(x, float(self.scheduled(self.ratio)))

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


@register_op("generator", params={"channels": integer(null=True), "mask_ratio": real(ge=0, le=1, schedule=True)})
class Generator(Op):
    """MGD's generation block: [Conv1x1 align if channels differ] -> [mask] -> Conv3x3-ReLU-Conv3x3 (biases).

    Inputs: the student map [, the teacher map, for its channel count]; output channels:
    ``channels`` or the teacher's. mask_ratio > 0 applies MGD's random channel mask between the
    alignment and the generation, as MGD's code (training mode only); leave it 0 when a
    ``channel_mask`` node already masks the input. Loss (MGD): ``mse`` with reduction ``sum_n``
    against the teacher map, weight alpha (2e-5 .. 7e-5). Output ``out``: (N, channels, H, W).
    """

    def __init__(
        self,
        channels: int | None = None,
        mask_ratio: float | Schedule = 0.0,
        in_info: list[PortInfo] | None = None,
    ):
        super().__init__()
        c_s, c_t = channels_of(in_info, 0, "generator"), _target_channels(channels, in_info, "generator")
        self.align = nn.Conv2d(c_s, c_t, 1) if c_s != c_t else nn.Identity()
        self.mask_ratio = mask_ratio
        self.generation = nn.Sequential(nn.Conv2d(c_t, c_t, 3, padding=1), nn.ReLU(), nn.Conv2d(c_t, c_t, 3, padding=1))
        ref = first_info(in_info, 1)
        self._info = PortInfo("map", c_t, ref.stride or first_info(in_info).stride)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x = self.align(x)
        ratio = float(self.scheduled(self.mask_ratio))
        if ratio > 0 and self.training:
            x = channel_mask(x, ratio)
        return self.generation(x)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}
