"""Exponential moving average of a module's parameters (used for validation and export)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialMovingAverage(nn.Module):
    """A frozen copy of ``module`` whose parameters follow ``p_ema <- d p_ema + (1 - d) p``.

    The decay ``d`` warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early
    averages are not dominated by the random initial weights. The copy and the update count are
    part of the state dict (and so of checkpoints); buffers are copied, not averaged.
    """

    def __init__(self, module: nn.Module, decay: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(module)
        self.module.requires_grad_(False)
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards the current parameters of ``module``."""
        n = int(self.num_updates)
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        averaged = list(self.module.parameters())
        current = [p.detach() for p in module.parameters()]
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for mine, theirs in zip(self.module.buffers(), module.buffers(), strict=True):
            mine.copy_(theirs)
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


__all__ = ["ExponentialMovingAverage"]
