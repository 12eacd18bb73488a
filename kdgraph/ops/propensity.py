"""IPWD's per-sample distillation weights: inverse propensity of each sample in the teacher's domain."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import EPS, flag, real
from ..registry import PortInfo, register_op
from ..schedule import Schedule
from .base import Op


def inverse_propensity(
    machine: torch.Tensor,
    human: torch.Tensor,
    labels: torch.Tensor,
    T: float = 1.0,
    clip: float | None = 10.0,
    normalize: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Weights (N,) = p_human(y|x) / p_machine(y|x), clipped at ``clip``, scaled to batch mean 1 when normalize."""
    idx = labels.long().reshape(-1, 1)
    p_machine = F.softmax(machine.float() / T, dim=1).gather(1, idx).squeeze(1)
    p_human = F.softmax(human.float(), dim=1).gather(1, idx).squeeze(1)
    # propensity of the sample in the machine domain: how much more the teacher backs its label than
    # the label-only head does; its inverse up-weights what the teacher under-represents
    weight = p_human / p_machine.clamp_min(eps)
    if clip is not None:
        weight = weight.clamp(max=float(clip))
    if normalize:
        weight = weight / weight.mean().clamp_min(eps)
    return weight


@register_op(
    "propensity",
    params={
        "T": real(gt=0, schedule=True),
        "clip": real(gt=0, schedule=True, null=True),
        "normalize": flag(),
        "eps": EPS,
    },
)
class Propensity(Op):
    """IPWD's per-sample KD weights: the inverse propensity p_head(y|x) / p_machine(y|x), batch mean 1.

    Inputs: machine logits (N, C) (IPWD's "machine domain": the KD-trained student's classifier, as
    graphs/ipwd.yaml by default, or the teacher's), human logits (N, C)
    (an extra head trained with cross-entropy only, e.g. a ``linear_head`` on the student's pooled
    features: the "human domain"), labels (N,) (``data.label``). With p_m = softmax(machine / T)[y]
    and p_h = softmax(human)[y], the propensity of a sample in the machine domain is p_m / p_h and
    its weight the inverse, p_h / p_m: samples the teacher backs less than the labels alone would
    (its under-represented, "tail" knowledge) weigh more. Ratios are clipped at ``clip`` (None: no
    clip) and, with normalize (default), divided by their batch mean so the KD term keeps its scale.
    IPWD publishes no code; this is kdgraph's reading of Niu et al., NeurIPS 2022 (documented in
    graphs/ipwd.yaml). Output ``out``: (N,) float32, detached (feed it to an edge's
    ``sample_weight``). T and clip may be schedules.
    """

    stops_gradient = True  # weights, not a learning signal: no gradient flows back through them

    def __init__(
        self,
        T: float | Schedule = 1.0,
        clip: float | Schedule | None = 10.0,
        normalize: bool = True,
        eps: float = 1e-8,
    ):
        super().__init__()
        self.T, self.clip, self.normalize, self.eps = T, clip, bool(normalize), float(eps)

    @torch.no_grad()
    def forward(self, machine: torch.Tensor, human: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if machine.shape != human.shape or machine.dim() != 2:
            raise ValueError(
                f"propensity: machine {tuple(machine.shape)} and human {tuple(human.shape)} logits must both be (N, C)"
            )
        clip = None if self.clip is None else float(self.scheduled(self.clip))
        return inverse_propensity(machine, human, labels, float(self.scheduled(self.T)), clip, self.normalize, self.eps)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": PortInfo("any")}  # (N,): one weight per sample
