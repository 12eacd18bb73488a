"""Fused peers (train.fuse): nets of one architecture on one input, run as one call with stacked channels.

k nets of one architecture reading one tensor (SLKD's two self-learning teachers, DML's peers, an ensemble of
like teachers) compute k independent functions of it. Stacking the k nets' channels, peer after peer, makes
the k passes one: the first convolution concatenates the k weight tensors along its output channels (its
input is shared), every later convolution is a grouped convolution with k times the groups, batch norm runs
over the k C channels at once (its statistics are per channel, so per peer), a linear layer on stacked
features is one batched matrix product (``bmm``), and what acts per channel (activations, pooling, residual
sums, flattening of peer-major channels) needs no change. One kernel launch per layer instead of k, on a
k-times wider tensor: what that buys depends on the device, so ``train.fuse: auto`` times both at the
stage's first step and keeps the faster.

The peers keep their parameters, buffers, optimizer groups and checkpoints: the fused layers read the
peers' weights at every call (``torch.cat``, whose backward hands each peer its own gradient), and each
peer's batch-norm statistics become views into one stacked buffer that the fused call updates in place.

Legal (``fuse_peers``) when the planner grouped the nodes (``plan.fusable_peers``: same net and
parameters, same input, same mode) and every module that holds parameters or buffers is a ``Conv2d`` with
zero padding, a ``BatchNorm2d`` with running statistics and a fixed momentum, or a ``Linear``, with no
dropout; and proven (``FusedPeers.prove``) on the first batch's shape: the fused call equals each peer's own
forward to 1e-5, on a random batch, with every peer's statistics and the RNG put back afterwards.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .nets.base import PortNet

_TOL = 1e-5  # the bound between fused and unfused values (fp32)


class _FusedConv2d(nn.Module):
    """k peers' Conv2d as one: out channels concatenated (shared input) or groups x k (stacked input)."""

    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        self._peers = tuple(convs)  # a tuple, not submodules: the peers own their parameters
        self.k = len(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, peers = self._peers[0], self._peers
        groups = c.groups
        if x.shape[1] == self.k * c.in_channels:
            groups *= self.k  # stacked input: peer i's channels meet only peer i's filters
        elif x.shape[1] != c.in_channels:
            raise RuntimeError(f"expected {c.in_channels} or {self.k} x {c.in_channels} channels, got {x.shape[1]}")
        elif groups > 1:  # a shared input into a grouped conv: give each peer its own copy
            x, groups = x.repeat(1, self.k, 1, 1), groups * self.k
        weight = torch.cat([p.weight for p in peers])
        bias = None if c.bias is None else torch.cat([p.bias for p in peers])
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, groups)


class _FusedBatchNorm2d(nn.Module):
    """k peers' BatchNorm2d over k C channels; the peers' statistics are views of the stacked buffers."""

    def __init__(self, norms: list[nn.BatchNorm2d]):
        super().__init__()
        self._peers = tuple(norms)
        self._views: tuple = ()  # bound at the first call: building a FusedPeers changes no peer

    def _bind(self) -> None:
        """Stack the peers' statistics and hand each peer its slice (again after ``.to()`` replaced them)."""
        norms, c = self._peers, self._peers[0].num_features
        self._mean = torch.cat([n.running_mean for n in norms])
        self._var = torch.cat([n.running_var for n in norms])
        self._count = torch.stack([n.num_batches_tracked for n in norms])
        for i, n in enumerate(norms):
            n.running_mean = self._mean[i * c : (i + 1) * c]
            n.running_var = self._var[i * c : (i + 1) * c]
            n.num_batches_tracked = self._count[i]
        self._views = tuple((n.running_mean, n.running_var, n.num_batches_tracked) for n in norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norms = self._peers
        if not self._views or any(
            n.running_mean is not mean or n.running_var is not var or n.num_batches_tracked is not count
            for n, (mean, var, count) in zip(norms, self._views)
        ):
            self._bind()
        first = norms[0]
        if first.training:
            self._count.add_(1)  # as nn.BatchNorm2d counts its batches
        weight = torch.cat([n.weight for n in norms])
        bias = torch.cat([n.bias for n in norms])
        return F.batch_norm(x, self._mean, self._var, weight, bias, first.training, first.momentum, first.eps)


class _FusedLinear(nn.Module):
    """k peers' Linear: one matrix with stacked outputs (shared input) or one bmm (stacked input)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self._peers = tuple(linears)
        self.k = len(linears)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, peers, k = self._peers[0], self._peers, self.k
        if x.shape[-1] not in (first.in_features, k * first.in_features):
            raise RuntimeError(f"expected {first.in_features} or {k} x {first.in_features} features, got {x.shape[-1]}")
        if x.shape[-1] == first.in_features:
            bias = None if first.bias is None else torch.cat([p.bias for p in peers])
            return F.linear(x, torch.cat([p.weight for p in peers]), bias)
        lead = x.shape[:-1]
        xs = x.reshape(-1, k, first.in_features).transpose(0, 1)  # (k, N, in): peer i's features
        weight_t = torch.stack([p.weight for p in peers]).transpose(1, 2)  # (k, in, out)
        if first.bias is None:
            y = torch.bmm(xs, weight_t)
        else:
            y = torch.baddbmm(torch.stack([p.bias for p in peers]).unsqueeze(1), xs, weight_t)
        return y.transpose(0, 1).reshape(*lead, k * first.out_features)


def _why_not(name: str, module: nn.Module) -> str | None:
    """Why one module (of the first peer) cannot be stacked, or None."""
    if isinstance(module, nn.Conv2d):
        return None if module.padding_mode == "zeros" else f"{name}: a Conv2d with padding_mode {module.padding_mode!r}"
    if isinstance(module, nn.BatchNorm2d):
        if not (module.affine and module.track_running_stats) or module.momentum is None:
            return f"{name}: a BatchNorm2d without affine parameters, running statistics or a fixed momentum"
        return None
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
        return f"{name}: dropout draws random numbers per net"
    if any(True for _ in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))):
        return f"{name}: a {type(module).__name__} holds parameters or buffers that fusion cannot stack"
    if module._forward_hooks or module._forward_pre_hooks:
        return f"{name}: a forward hook watches it"
    return None


_FUSED = {nn.Conv2d: _FusedConv2d, nn.BatchNorm2d: _FusedBatchNorm2d, nn.Linear: _FusedLinear}


class FusedPeers:
    """k built peer nets as one callable: ``ports(x, wanted)`` gives each peer's ports, in peer order."""

    def __init__(self, names: tuple[str, ...], peers: list[nn.Module], template: nn.Module):
        self.names, self.peers, self.template = names, peers, template
        self.k = len(peers)
        self.enabled = True  # False once `auto` timed it slower, or the proof failed: the peers run alone
        self.decided = False
        self.note = ""

    def _stacked(self, x: torch.Tensor, wanted: frozenset[str]) -> dict[str, torch.Tensor]:
        net = self.template
        if net.training != self.peers[0].training:
            net.train(self.peers[0].training)
        return net.forward_ports(x, wanted) if isinstance(net, PortNet) else {"logits": net(x)}

    def ports(self, x: torch.Tensor, wanted: frozenset[str]) -> list[dict[str, torch.Tensor]]:
        """Each peer's `wanted` ports from one stacked call (channels split peer by peer, made contiguous)."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in self.peers]
        for port, y in self._stacked(x, wanted).items():
            for i, part in enumerate(y.chunk(self.k, dim=1)):
                out[i][port] = part.contiguous()
        return out

    def separate(self, x: torch.Tensor, wanted: frozenset[str]) -> list[dict[str, torch.Tensor]]:
        """The same ports from each peer's own forward (the unfused reference)."""
        return [p.forward_ports(x, wanted) if isinstance(p, PortNet) else {"logits": p(x)} for p in self.peers]

    def _state(self) -> list[torch.Tensor]:
        return [b for p in self.peers for b in p.buffers()]

    def prove(self, x: torch.Tensor, wanted: frozenset[str]) -> str | None:
        """None when the fused call equals the peers' own on a random batch shaped like `x`; else why not."""
        probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device, x.dtype)
        probe = probe.contiguous(memory_format=_memory_format(x))
        saved = [b.clone() for b in self._state()]
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=_devices(x)):
                want = self.separate(probe, wanted)
                _restore(self._state(), saved)
                got = self.ports(probe, wanted)
        except RuntimeError as e:
            return f"the stacked call fails: {str(e).splitlines()[0]}"
        finally:
            _restore(self._state(), saved)
        for i, (w, g) in enumerate(zip(want, got)):
            for port in w:
                a, b = w[port].float(), g.get(port)
                if b is None or a.shape != b.shape:
                    return f"port {port} of {self.names[i]} has another shape when stacked"
                err = float((a - b.float()).abs().max()) / max(1.0, float(a.abs().max()))
                if err > _TOL:
                    return f"port {port} of {self.names[i]} differs by {err:.1e} when stacked"
        return None

    def time_both(self, x: torch.Tensor, wanted: frozenset[str], grad: bool, repeat: int = 3) -> tuple[float, float]:
        """Median seconds of one fused and one unfused call (forward, and backward when `grad`), alternated."""
        params = [p for peer in self.peers for p in peer.parameters() if p.requires_grad] if grad else []
        saved = [b.clone() for b in self._state()]

        def once(call: Callable) -> float:
            _sync(x)
            t = time.perf_counter()
            with torch.set_grad_enabled(bool(params)):
                outs = call(x, wanted)
                if params:
                    total = sum(v.float().square().mean() for o in outs for v in o.values())
                    torch.autograd.grad(total, params, allow_unused=True)
            _sync(x)
            return time.perf_counter() - t

        fused, alone = [], []
        try:
            with torch.random.fork_rng(devices=_devices(x)):
                once(self.ports), once(self.separate)  # warm-up: kernels chosen, memory pooled
                for _ in range(repeat):
                    fused.append(once(self.ports))
                    alone.append(once(self.separate))
        finally:
            _restore(self._state(), saved)
        return statistics.median(fused), statistics.median(alone)


def stack_problem(names: tuple[str, ...], peers: list[nn.Module]) -> str | None:
    """Why the built peers' modules cannot be stacked, or None."""
    first = peers[0]
    layout = [(n, type(m)) for n, m in first.named_modules()]
    shapes = [(n, t.shape) for n, t in itertools.chain(first.named_parameters(), first.named_buffers())]
    for name, peer in zip(names[1:], peers[1:]):
        if [(n, type(m)) for n, m in peer.named_modules()] != layout or shapes != [
            (n, t.shape) for n, t in itertools.chain(peer.named_parameters(), peer.named_buffers())
        ]:
            return f"{name} is built unlike {names[0]}"
        if peer.training != first.training:
            return f"{name} and {names[0]} are in different modes"
    for name, module in first.named_modules():
        why = _why_not(name or type(first).__name__, module)
        if why:
            return why
    return None


def fuse_peers(names: tuple[str, ...], peers: list[nn.Module]) -> FusedPeers | str:
    """The peers as one FusedPeers, or why their modules cannot be stacked; the peers are left as they are."""
    why = stack_problem(names, peers)
    if why:
        return why
    first = peers[0]
    # a copy of the first peer's structure that shares its tensors, whose stackable leaves become fused ones
    memo = {id(t): t for t in itertools.chain(first.parameters(), first.buffers())}
    template = copy.deepcopy(first, memo)
    by_name = [dict(p.named_modules()) for p in peers]
    for name, module in list(template.named_modules()):
        fused = _FUSED.get(type(module)) or next((f for t, f in _FUSED.items() if isinstance(module, t)), None)
        if fused is None or not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = template.get_submodule(parent_name) if parent_name else template
        setattr(parent, child, fused([modules[name] for modules in by_name]))
    return FusedPeers(names, peers, template)


def _restore(buffers: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, s in zip(buffers, saved):
            b.copy_(s)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _devices(x: torch.Tensor) -> list:
    return [x.device] if x.device.type == "cuda" else []


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
