"""Operations on logits: rho-mix, temperature softening, SKD's learning simplifier, per-class temperatures."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..params import choice, flag, integer, real, reals
from ..registry import PortInfo, register_op
from ..schedule import Schedule
from .base import Op, first_info


@register_op(
    "mix",
    params={
        "weights": reals(schedule=True, null=True),
        "space": choice("logits", "prob"),
        "T": real(gt=0, schedule=True),
    },
)
class Mix(Op):
    """Weighted sum of n inputs (SLKD's rho-mix); over logits, or over probabilities with space=prob.

    weights: one number (or schedule) per input; default equal weights. space: "logits" adds the
    raw inputs (SLKD's default); "prob" adds softmax(input / T) and returns the log of the mixture,
    so a KD edge can read it as logits (softmax(log p) == p; the edge's own T then re-softens it,
    so use T=1 on that edge, or mix logits). Output ``out``: the inputs' shape.
    """

    def __init__(
        self,
        weights: list[float | Schedule] | None = None,
        space: str = "logits",
        T: float | Schedule = 1.0,
        in_info: list[PortInfo] | None = None,
    ):
        super().__init__()
        if space not in ("logits", "prob"):
            raise ValueError(f"mix: space must be 'logits' or 'prob', not {space!r}")
        n = len(in_info) if in_info else (len(weights) if weights else 2)
        # a weight may be a schedule, also as a mapping nested in the list
        self.weights = [Schedule.from_spec(w) for w in weights] if weights is not None else [1.0 / n] * n
        if len(self.weights) != n:
            raise ValueError(f"mix has {n} inputs but {len(self.weights)} weights")
        self.space, self.T = space, T
        self._info = first_info(in_info)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.weights):
            raise ValueError(f"mix: {len(inputs)} inputs for {len(self.weights)} weights")
        weights = [float(self.scheduled(w)) for w in self.weights]
        if self.space == "logits":
            return sum(w * z for w, z in zip(weights, inputs))
        T = self.scheduled(self.T)
        prob = sum(w * torch.softmax(z.float() / T, dim=1) for w, z in zip(weights, inputs))
        return torch.log(prob.clamp_min(1e-12))

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


@register_op("soften", params={"T": real(gt=0, schedule=True), "log": flag()})
class Soften(Op):
    """Softened logits: log_softmax(z / T) (SKD's g); or softmax(z / T) with log=false."""

    def __init__(self, T: float | Schedule = 4.0, log: bool = True, in_info: list[PortInfo] | None = None):
        super().__init__()
        self.T, self.log = T, bool(log)
        self._info = first_info(in_info)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float() / self.scheduled(self.T)  # float32: log-probabilities need the precision
        return torch.log_softmax(z, dim=1) if self.log else torch.softmax(z, dim=1)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


@register_op(
    "simplifier", params={"width": integer(), "dropout": real(ge=0, lt=1), "residual": flag(), "zero_init_out": flag()}
)
class Simplifier(Op):
    """SKD's learning simplifier: self-attention across the batch, out = g + Dropout(Linear(A V)).

    Input g: softened teacher logits (N, C) (a ``soften`` op). Q, K, V = Linear(C -> width) of g
    (one Linear(C, 3 width) with bias, the standard block); A = softmax(Q K^T / sqrt(width)) is
    (N, N): each sample attends to the others of the batch; Delta = Dropout(dropout)(Linear(width
    -> C)(A V)); out = g + Delta (residual=True) or Delta. zero_init_out starts the output Linear
    at zero, so training starts from out == g. C comes from the input port or ``num_classes``.
    Paper settings: width 512 (2048 on ImageNet), dropout 0.5, optimizer lr 3e-5 (node ``optim``).
    Output ``out``: (N, C), kind logits. Train it through the KD edge it feeds (``detach: false``).
    """

    def __init__(
        self,
        width: int = 512,
        dropout: float = 0.5,
        residual: bool = True,
        zero_init_out: bool = False,
        in_info: list[PortInfo] | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        classes = first_info(in_info).channels or num_classes
        if classes is None:
            raise ValueError("simplifier: the class count is unknown (no input channels, no num_classes)")
        self.width, self.residual, self.classes = int(width), bool(residual), int(classes)
        self.qkv = nn.Linear(self.classes, 3 * self.width)
        self.out = nn.Linear(self.width, self.classes)
        self.drop = nn.Dropout(dropout)
        if zero_init_out:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(g).chunk(3, dim=1)
        attn = torch.softmax(q @ k.t() / math.sqrt(self.width), dim=1)  # (N, N): samples attend to samples
        delta = self.drop(self.out(attn @ v))
        return g + delta if self.residual else delta

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": PortInfo("logits", self.classes)}


@register_op("class_temperature", params={"T_target": real(gt=0, schedule=True), "T_other": real(gt=0, schedule=True)})
class ClassTemperature(Op):
    """Per-sample, per-class temperatures (N, C) from labels: T_target on the label's class, T_other elsewhere.

    Input: integer labels (N,) (``data.label``). Output ``out``: float (N, C), for the ``T`` of a
    ``kd`` edge: ATS (asymmetric temperature scaling) softens the teacher with a higher temperature
    on the target class than on the others; give the student its own ``T_student`` on the edge.
    Either value may be a schedule.
    """

    def __init__(
        self, T_target: float | Schedule = 4.0, T_other: float | Schedule = 2.0, num_classes: int | None = None
    ):
        super().__init__()
        if num_classes is None:
            raise ValueError("class_temperature needs num_classes (the engine passes the dataset's)")
        self.T_target, self.T_other, self.num_classes = T_target, T_other, int(num_classes)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        g = F.one_hot(labels.long(), self.num_classes).float()
        t_target, t_other = float(self.scheduled(self.T_target)), float(self.scheduled(self.T_other))
        return t_other + (t_target - t_other) * g

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": PortInfo("logits", self.num_classes)}


@register_op("linear_head", params={"out_features": integer(null=True), "bias": flag()})
class LinearHead(Op):
    """A linear classifier on a vector (maps are globally average-pooled first): IPWD's extra CE head.

    Input: (N, C) (e.g. a net's ``pooled`` port) or (N, C, H, W). Output ``out``: (N, out_features),
    out_features defaulting to the dataset's class count.
    """

    def __init__(
        self,
        out_features: int | None = None,
        bias: bool = True,
        in_info: list[PortInfo] | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        c_in = first_info(in_info).channels
        c_out = out_features or num_classes
        if c_in is None or c_out is None:
            raise ValueError("linear_head: input channels and out_features (or num_classes) must be known")
        self.fc = nn.Linear(int(c_in), int(c_out), bias=bias)
        self._logits = out_features is None or out_features == num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": PortInfo("logits" if self._logits else "vector", self.fc.out_features)}
