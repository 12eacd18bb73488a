"""CRD's embedding heads and momentum memory bank: scores of each sample against K contrastive negatives."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..params import PROBABILITY, choice, integer, real
from ..registry import PortInfo, register_op
from .base import Op, channels_of

NEGATIVES = ("other_class", "uniform")
MODES = ("exact", "relax")


class Embed(nn.Module):
    """CRD's head: flatten, Linear(c, feat_dim) with bias, divide by the L2 norm (no epsilon, as the reference)."""

    def __init__(self, c_in: int, feat_dim: int):
        super().__init__()
        self.linear = nn.Linear(c_in, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x.reshape(x.shape[0], -1))
        return z / z.pow(2).sum(1, keepdim=True).sqrt()


def momentum_update(bank: torch.Tensor, index: torch.Tensor, v: torch.Tensor, momentum: float) -> None:
    """bank[i] <- normalise(momentum * bank[i] + (1 - momentum) * v), in place (CRD's memory update)."""
    mixed = bank.index_select(0, index) * momentum + v * (1 - momentum)
    bank.index_copy_(0, index, mixed / mixed.pow(2).sum(1, keepdim=True).sqrt())


def _gather(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every process's rows of each tensor (batches may differ in size): the banks stay identical everywhere."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    n = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]  # one host sync per step, multi-process runs only
    out = []
    for t in tensors:
        padded = F.pad(t, (0, 0) * (t.dim() - 1) + (0, max(counts) - t.shape[0]))
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)]))
    return tuple(out)


@register_op(
    "crd",
    params={
        "feat_dim": integer(),
        "nce_k": integer(),
        "nce_t": real(gt=0),
        "nce_m": PROBABILITY,
        "negatives": choice(*NEGATIVES),
        "mode": choice(*MODES),
        "n_data": integer(null=True),
    },
)
class CRDMemory(Op):
    """CRD: embedding heads, a momentum memory bank over the training set, and NCE scores against K negatives.

    Inputs (student, teacher, data.index, data.label): features (N, C_s[, H, W]) and (N, C_t[, H, W])
    (the pooled features, as RepDistiller and mdistiller), each sample's index in the training set and
    its label. Heads ``embed_s``, ``embed_t``: Linear(C, feat_dim) with bias, then v / ||v||_2.

    Two banks of n_data x feat_dim (buffers, so they checkpoint and resume exactly), drawn
    U(-s, s) with s = 1/sqrt(feat_dim/3): ``memory_s`` holds the student embeddings,
    ``memory_t`` the teacher's. For each sample i the contrast set is idx = [i, j_1..j_K]:
    the positive i and K = nce_k negatives, ``other_class`` (RepDistiller's and mdistiller's
    CIFAR loaders, mode 'exact': drawn uniformly, with replacement, among the samples of other
    classes; the labels of the bank's rows are learnt as they are seen, so before a row was seen
    it counts as another class) or ``uniform`` (over the whole bank: the reference's own sampler
    when the loader gives none). mode ``exact`` (default): the positive is the sample's own row;
    ``relax``: a random seen row of its class (the loaders' mode 'relax'). Scores, with T = nce_t:

        student[i, k] = exp(<memory_t[idx_ik], v_s,i> / T) / Z_s
        teacher[i, k] = exp(<memory_s[idx_ik], v_t,i> / T) / Z_t

    Z_s, Z_t (buffer ``Z``) are fixed on the first training batch, as the reference does:
    Z = mean over the batch's N x (K+1) exponentiated scores x n_data (detached); before it is
    set (evaluation, dry runs) the batch's own estimate is used and not kept. After scoring, in
    training mode, the bank rows of the batch move: memory[i] <- normalise(m memory[i] + (1 - m) v_i)
    with m = nce_m (0.5), gathered over processes when torch.distributed is initialised.

    Outputs: ``student``, ``teacher``: (N, K+1), column 0 the positive; ``n_data``: the bank size
    (0-dim), for the ``crd`` loss. n_data: default the training set's size (from the data).
    Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020, arXiv:1910.10699 (Eq. 18).
    """

    outputs = ("student", "teacher", "n_data")

    def __init__(
        self,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        negatives: str = "other_class",
        mode: str = "exact",
        n_data: int | None = None,
        num_train: int | None = None,
        in_info: list[PortInfo] | None = None,
    ):
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"crd: negatives must be one of {', '.join(NEGATIVES)}, not {negatives!r}")
        if mode not in MODES:
            raise ValueError(f"crd: mode must be one of {', '.join(MODES)}, not {mode!r}")
        size = n_data or num_train
        if not size:
            raise ValueError("crd: the training set's size is unknown for this dataset: give n_data")
        self.k, self.t, self.m, self.negatives, self.mode = int(nce_k), float(nce_t), float(nce_m), negatives, mode
        self.embed_s = Embed(channels_of(in_info, 0, "crd"), int(feat_dim))
        self.embed_t = Embed(channels_of(in_info, 1, "crd"), int(feat_dim))
        s = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(size, feat_dim).mul_(2 * s).add_(-s))
        self.register_buffer("memory_t", torch.rand(size, feat_dim).mul_(2 * s).add_(-s))
        self.register_buffer("Z", torch.full((2,), -1.0))  # (Z_s, Z_t); negative: not set yet
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))  # -1: row not seen yet
        self.register_buffer("n_data", torch.tensor(float(size)), persistent=False)

    def contrast_index(self, index: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(N, K+1) bank rows: the positive (the sample itself; relax: a seen row of its class), then K negatives."""
        n, shape = self.memory_s.shape[0], (index.shape[0], self.k)
        if self.negatives == "uniform" and self.mode == "exact":
            return torch.cat([index[:, None], torch.randint(0, n, shape, device=index.device)], dim=1)
        # rows sorted by label: each class is one block [start, start + count)
        sorted_labels, order = torch.sort(self.labels, stable=True)
        start = torch.searchsorted(sorted_labels, label, right=False)
        count = torch.searchsorted(sorted_labels, label, right=True) - start
        positive = index
        if self.mode == "relax":  # a random row of the same class, the sample itself while none was seen
            u = (torch.rand(index.shape, device=index.device) * count).long().clamp_max((count - 1).clamp_min(0))
            positive = torch.where(count > 0, order[(start + u).clamp_max(n - 1)], index)
        if self.negatives == "uniform":
            return torch.cat([positive[:, None], torch.randint(0, n, shape, device=index.device)], dim=1)
        # uniform over the rows of other classes: the own class's block skipped
        others = (n - count).clamp_min(1)
        u = (torch.rand(shape, device=index.device) * others[:, None]).long().clamp_max(others[:, None] - 1)
        skip = torch.where(u >= start[:, None], u + count[:, None], u).clamp_max(n - 1)
        return torch.cat([positive[:, None], order[skip]], dim=1)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, index: torch.Tensor, label: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if index is None:
            raise ValueError("crd needs data.index (the samples' positions in the training set)")
        index, label = index.long(), label.long()
        with torch.autocast(student.device.type, enabled=False):
            v_s, v_t = self.embed_s(student.float()), self.embed_t(teacher.float())
            idx = self.contrast_index(index, label)
            bank_t = self.memory_t[idx].detach()  # (N, K+1, d)
            bank_s = self.memory_s[idx].detach()
            out_s = torch.exp(torch.bmm(bank_t, v_s[:, :, None]).squeeze(2) / self.t)  # (N, K+1)
            out_t = torch.exp(torch.bmm(bank_s, v_t[:, :, None]).squeeze(2) / self.t)
            estimate = torch.stack([out_s.mean(), out_t.mean()]).detach() * self.n_data
            z = torch.where(self.Z < 0, estimate, self.Z)
            if self.training:
                self.Z.copy_(z)
                self._update(index, label, v_s.detach(), v_t.detach())
        return {"student": out_s / z[0], "teacher": out_t / z[1], "n_data": self.n_data}

    @torch.no_grad()
    def _update(self, index: torch.Tensor, label: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        index, label, v_s, v_t = _gather(index, label, v_s, v_t)
        momentum_update(self.memory_s, index, v_s, self.m)
        momentum_update(self.memory_t, index, v_t, self.m)
        self.labels.index_copy_(0, index, label)

    def port_info(self) -> dict[str, PortInfo]:
        return {
            "student": PortInfo("vector", self.k + 1),
            "teacher": PortInfo("vector", self.k + 1),
            "n_data": PortInfo("any"),
        }

    def extra_repr(self) -> str:
        return (
            f"n_data={self.memory_s.shape[0]}, feat_dim={self.memory_s.shape[1]}, nce_k={self.k}, "
            f"nce_t={self.t}, nce_m={self.m}, negatives={self.negatives!r}, mode={self.mode!r}"
        )
