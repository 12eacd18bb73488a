"""A plugin loss that forgets to reduce over the batch (case 110)."""

from kdgraph import register_loss


@register_loss("safety_vector_l1")
def vector_l1(pred, target):
    """Per-sample L1 distance: a vector, not a scalar."""
    return (pred - target).abs().sum(dim=1)
