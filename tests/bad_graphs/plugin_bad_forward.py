"""A plugin op whose forward raises an exception type kdgraph does not special-case (case 109)."""

from torch import nn

from kdgraph import register_op


class LookupFailed(Exception):
    """Not a RuntimeError, ValueError, TypeError or IndexError."""


@register_op("safety_raising_op")
class RaisingOp(nn.Module):
    """Raises on every call."""

    def forward(self, x):
        raise LookupFailed("the table has no row for this batch")
