"""Operations on logits: rho-mix of several networks' outputs, temperature softening."""

from __future__ import annotations

import torch

from ..registry import PortInfo, register_op
from .base import Op


@register_op("mix")
class Mix(Op):
    """Weighted sum of n inputs (SLKD's rho-mix); over logits, or over probabilities with space=prob.

    weights: one number per input (default: equal weights). space: "logits" adds the raw inputs;
    "prob" adds softmax(input / T) and returns the log of the mixture, so a KD edge can read it as
    logits (softmax(log p) == p).
    """

    def __init__(
        self,
        weights: list[float] | None = None,
        space: str = "logits",
        T: float = 1.0,
        in_info: list[PortInfo] | None = None,
    ):
        super().__init__()
        if space not in ("logits", "prob"):
            raise ValueError(f"space must be 'logits' or 'prob', not {space!r}")
        n = len(in_info) if in_info else (len(weights) if weights else 2)
        self.weights = [float(w) for w in weights] if weights is not None else [1.0 / n] * n
        if len(self.weights) != n:
            raise ValueError(f"mix has {n} inputs but {len(self.weights)} weights")
        self.space, self.T = space, float(T)
        self._info = in_info[0] if in_info else PortInfo()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.space == "logits":
            out = inputs[0] * self.weights[0]
            for w, z in zip(self.weights[1:], inputs[1:]):
                out = out + w * z
            return out
        prob = sum(w * torch.softmax(z / self.T, dim=1) for w, z in zip(self.weights, inputs))
        return torch.log(prob.clamp_min(1e-12))

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


@register_op("soften")
class Soften(Op):
    """Softened logits: log_softmax(z / T) (SKD's g); port out has the input's shape."""

    def __init__(self, T: float = 4.0, log: bool = True, in_info: list[PortInfo] | None = None):
        super().__init__()
        self.T, self.log = float(T), bool(log)
        self._info = in_info[0] if in_info else PortInfo()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(z / self.T, dim=1) if self.log else torch.softmax(z / self.T, dim=1)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}
