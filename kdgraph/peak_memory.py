"""Peak memory of this process: the accelerator's allocator on CUDA, the resident set size on CPU.

    peak_memory_mb(device)   # CUDA: torch.cuda.max_memory_allocated; CPU: max RSS (getrusage)

The CPU figure is the whole process's high-water mark (Python, torch, the data), which is what a
machine must provide; the CUDA figure is the tensors' peak, as papers' memory tables report it.
"""

from __future__ import annotations

import resource
import sys

import torch

MB = 2**20


def peak_memory_mb(device: torch.device | str) -> float:
    """The peak memory so far, in MiB (no synchronisation: a host-side counter read)."""
    device = torch.device(device)
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / MB, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (MB if sys.platform == "darwin" else 1024), 1)
