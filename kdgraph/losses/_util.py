"""Helpers shared by the loss functions (not a registry module: the leading underscore skips autoload)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

LOW_PRECISION = (torch.float16, torch.bfloat16)
Fn = TypeVar("Fn", bound=Callable[..., torch.Tensor])


def _up(x: Any) -> Any:
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in LOW_PRECISION else x


def float32(fn: Fn) -> Fn:
    """Run a loss in float32 with autocast off: softmax, log and sums of small terms need the precision.

    float64 inputs stay float64 (the reference-value tests), float16/bfloat16 inputs are upcast.
    ``functools.wraps`` keeps the signature and docstring the registry reads.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        args = tuple(_up(a) for a in args)
        kwargs = {k: _up(v) for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), "cpu")
        ctx = (
            torch.autocast(device_type=device, enabled=False)
            if torch.amp.is_autocast_available(device)
            else contextlib.nullcontext()
        )
        with ctx:
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def weighted_mean(per_sample: torch.Tensor, sample_weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over the batch of per-sample losses (N,), each multiplied by its weight when given."""
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight.reshape(-1).to(per_sample.dtype)).mean()


def weighted_sum(per_sample: torch.Tensor, sample_weight: torch.Tensor | None) -> torch.Tensor:
    if sample_weight is None:
        return per_sample.sum()
    return (per_sample * sample_weight.reshape(-1).to(per_sample.dtype)).sum()


def temperature(T: float | torch.Tensor, logits: torch.Tensor) -> float | torch.Tensor:
    """A temperature ready to divide logits (N, C): a float, a 0-dim tensor, or a tensor broadcasting to (N, C).

    Accepted: a number; a tensor with one element (a learned global temperature); shape (C,), a
    per-class temperature; shape (N, 1), per-sample; shape (N, C), per sample and class. A 1-D tensor
    is always read as per-class, so give per-sample temperatures as (N, 1).
    """
    if not isinstance(T, torch.Tensor):
        return float(T)
    T = T.to(logits.dtype)
    if T.numel() == 1:
        return T.reshape(())
    n, c = logits.shape
    if T.dim() == 1 and T.shape[0] == c:
        return T.reshape(1, c)
    if T.dim() == 2 and T.shape[0] == n and T.shape[1] in (1, c):
        return T
    raise ValueError(f"temperature of shape {tuple(T.shape)} does not fit logits {tuple(logits.shape)}: "
                     "give a number, a scalar, (C,), (N, 1) or (N, C)")


def t_squared(T: float | torch.Tensor, n: int) -> float | torch.Tensor:
    """The T^2 factor of a KD loss: T^2 for a scalar; per sample, the mean over classes of T^2 otherwise."""
    if not isinstance(T, torch.Tensor) or T.dim() == 0:
        return T * T
    return (T * T).expand(n, -1).mean(dim=1)


def flat(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, D)."""
    return x.reshape(x.shape[0], -1)


def same_shape(pred: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """``target`` in ``pred``'s shape; (N, C) and (N, C, 1, 1) are taken as the same, anything else is an error."""
    if pred.shape == target.shape:
        return target
    squeeze = lambda s: tuple(d for d in s[1:] if d != 1)  # noqa: E731
    if pred.shape[0] == target.shape[0] and squeeze(pred.shape) == squeeze(target.shape):
        return target.reshape(pred.shape)
    hint = "" if pred.dim() == 4 else f"; map one side with a connector op (channels {target.shape[1]})"
    raise ValueError(f"{loss}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ{hint}")


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two maps to the smaller one's size (RepDistiller's AT)."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-2] * a.shape[-1] > b.shape[-2] * b.shape[-1]:
        return F.adaptive_avg_pool2d(a, b.shape[-2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[-2:])
