"""KCD's channel matching: align teacher channels to student channels by their consistency over the data."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..params import EPS, choice
from ..registry import PortInfo, register_op
from .base import Op, channels_of, first_info

METRICS = ("correlation", "cosine", "l1", "l2", "kl")
METHODS = ("bipartite", "greedy")


def pooled(x: torch.Tensor) -> torch.Tensor:
    """(N, c, H, W) -> (N, c) by global average pooling; vectors pass through."""
    return x.flatten(2).mean(dim=2) if x.dim() > 2 else x


@register_op("channel_match", params={"metric": choice(*METRICS), "method": choice(*METHODS), "eps": EPS})
class ChannelMatch(Op):
    """KCD channel matching: fit over the data, then output teacher features permuted to the student's channels.

    Inputs (teacher, student): maps (N, c, H, W) or vectors (N, c); maps are globally
    average-pooled for the statistics. ``fit_begin`` / ``fit_step(teacher, student)`` /
    ``fit_end`` (the engine runs them for the nodes a stage lists under ``fit:``, without
    gradient) accumulate sufficient statistics over the training set in float64 (summed over
    processes when torch.distributed is initialised), build the consistency matrix M (c_t x c_s)
    and solve:

    * metric "correlation": Pearson correlation over samples of teacher channel i and student
      channel j (KCD's best); "cosine": cosine over samples; "l1" / "l2": 1 / (||t_i - s_j|| + eps)
      with the L1 / L2 norm over samples; "kl": 1 / (KL(p_i || q_j) + eps), where p_i and q_j are teacher
      channel i's and student channel j's activation mass over the samples (p_i[n] = t_ni / sum_n t_ni,
      activations clamped at 0; KCD names the KL consistency, its Table 2's second best, without a
      formula: this is the inverse-divergence reading of its L_p consistency, eq. 3).
    * method "bipartite": a one-to-one assignment maximising trace (``linear_sum_assignment(M,
      maximize=True)``; needs c_t >= c_s); "greedy": each student channel takes its best teacher
      channel (repeats allowed).

    The result is the buffer ``perm`` (c_s,): student channel j <- teacher channel perm[j], saved in
    the state_dict. ``forward(teacher, student=None)`` returns ``teacher[:, perm]``: (N, c_s, ...),
    the teacher's map aligned with the student's channels (compare with an ``mse`` edge). Before
    fitting, forward raises RuntimeError. Matrix M of the last fit: ``self.consistency``.
    """

    def __init__(
        self,
        metric: str = "correlation",
        method: str = "bipartite",
        eps: float = 1e-8,
        in_info: list[PortInfo] | None = None,
    ):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"channel_match: metric must be one of {', '.join(METRICS)}, not {metric!r}")
        if method not in METHODS:
            raise ValueError(f"channel_match: method must be one of {', '.join(METHODS)}, not {method!r}")
        self.metric, self.method, self.eps = metric, method, float(eps)
        self.c_t, self.c_s = channels_of(in_info, 0, "channel_match"), channels_of(in_info, 1, "channel_match")
        if method == "bipartite" and self.c_t < self.c_s:
            raise ValueError(
                f"channel_match: bipartite matching needs at least as many teacher channels "
                f"({self.c_t}) as student channels ({self.c_s}); use method: greedy"
            )
        self.register_buffer("perm", torch.arange(self.c_s) % self.c_t)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._is_fitted = False  # mirrors `fitted` on the host: no device sync per forward
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_fitted())
        self.consistency: torch.Tensor | None = None
        self._stats: dict[str, Any] | None = None
        self._info = PortInfo(first_info(in_info).kind, self.c_s, first_info(in_info).stride)

    # --- fit protocol -------------------------------------------------------------------------
    def fit_begin(self) -> None:
        self._stats = None

    @torch.no_grad()
    def fit_step(self, teacher: torch.Tensor, student: torch.Tensor, *_: Any) -> None:
        t, s = pooled(teacher).double(), pooled(student).double()
        if t.shape[1] != self.c_t or s.shape[1] != self.c_s:
            raise ValueError(
                f"channel_match was built for {self.c_t} teacher / {self.c_s} student channels, "
                f"got {t.shape[1]} / {s.shape[1]}"
            )
        batch = {
            "n": torch.tensor(float(t.shape[0]), dtype=torch.float64, device=t.device),
            "t": t.sum(0),
            "s": s.sum(0),
            "tt": t.pow(2).sum(0),
            "ss": s.pow(2).sum(0),
            "ts": t.t() @ s,
        }
        if self.metric == "l1":  # not expressible by moments: accumulate sum_n |t_ni - s_nj| directly
            batch["l1"] = torch.cdist(t.t().contiguous(), s.t().contiguous(), p=1)
        if self.metric == "kl":  # KL's moments: sum_n t, sum_n t log t, sum_n t log s (masses clamped at 0)
            tp, sp = t.clamp_min(0), s.clamp_min(0)
            batch.update(
                kt=tp.sum(0),
                ks=sp.sum(0),
                ktlogt=torch.xlogy(tp, tp).sum(0),
                ktlogs=tp.t() @ sp.clamp_min(self.eps).log(),
            )
        if self._stats is None:
            self._stats = batch
        else:
            for k, v in batch.items():
                self._stats[k] += v

    @torch.no_grad()
    def fit_end(self) -> None:
        if self._stats is None:
            raise RuntimeError("channel_match.fit_end: fit_step was never called (no data seen)")
        stats = self._stats
        if dist.is_available() and dist.is_initialized():
            for v in stats.values():
                dist.all_reduce(v)
        m = self._consistency(stats)
        self.consistency = m.float()
        self.perm.copy_(torch.as_tensor(self.solve(m.cpu()), device=self.perm.device))
        self.fitted.fill_(True)
        self._is_fitted = True
        self._stats = None

    def _sync_fitted(self) -> None:
        self._is_fitted = bool(self.fitted)

    def _consistency(self, st: dict[str, torch.Tensor]) -> torch.Tensor:
        n, eps = st["n"], self.eps
        if self.metric == "correlation":
            cov = st["ts"] - st["t"][:, None] * st["s"][None, :] / n
            var_t = (st["tt"] - st["t"].pow(2) / n).clamp_min(0)
            var_s = (st["ss"] - st["s"].pow(2) / n).clamp_min(0)
            return cov / ((var_t[:, None] * var_s[None, :]).sqrt() + eps)
        if self.metric == "cosine":
            return st["ts"] / ((st["tt"][:, None] * st["ss"][None, :]).sqrt() + eps)
        if self.metric == "l2":
            d2 = (st["tt"][:, None] + st["ss"][None, :] - 2 * st["ts"]).clamp_min(0)
            return 1.0 / (d2.sqrt() + eps)
        if self.metric == "kl":  # KL(p_i || q_j) = (sum t log t - sum t log s) / A_i - log A_i + log B_j
            a, b = st["kt"].clamp_min(eps), st["ks"].clamp_min(eps)
            kl = (st["ktlogt"][:, None] - st["ktlogs"]) / a[:, None] - a.log()[:, None] + b.log()[None, :]
            return 1.0 / (kl.clamp_min(0) + eps)
        return 1.0 / (st["l1"] + eps)

    def solve(self, m: torch.Tensor) -> torch.Tensor:
        """Student channel j <- teacher channel perm[j], from the consistency matrix m (c_t x c_s)."""
        if self.method == "greedy":
            return m.argmax(dim=0)
        from scipy.optimize import linear_sum_assignment  # here: scipy costs a second to import

        rows, cols = linear_sum_assignment(m.numpy(), maximize=True)
        perm = torch.empty(self.c_s, dtype=torch.long)
        perm[torch.as_tensor(cols)] = torch.as_tensor(rows)
        return perm

    # --- use ----------------------------------------------------------------------------------
    def forward(self, teacher: torch.Tensor, student: torch.Tensor | None = None) -> torch.Tensor:
        if not self._is_fitted:
            raise RuntimeError(
                "channel_match has not been fitted: list this node under `fit:` in a stage "
                "that runs before the one that uses it (or load a fitted checkpoint)"
            )
        return teacher.index_select(1, self.perm)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}

    def extra_repr(self) -> str:
        return f"metric={self.metric!r}, method={self.method!r}, teacher={self.c_t}, student={self.c_s}"
