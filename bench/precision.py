"""Numeric precision of the losses: computed in float32 at least, whatever autocast chose."""

from __future__ import annotations

import torch


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 when it is in a lower precision (bf16/fp16 under autocast);
    float32 and float64 tensors unchanged (float64 lets tests compare two summation orders
    without float32 noise)."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.float()
