"""Epoch-level errors: MAE and RMSE of energy per atom, force and stress components, and the loss.

Sums are accumulated batch by batch and reduced over processes once per epoch, so the numbers are
exact over the whole validation or test set, not averages of batch averages.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mlip import keys
from mlip.train.loss import QUANTITIES, WeightedLoss, residuals

"""Unit suffix of each quantity's metric names (values are reported in meV, meV/Å, meV/Å³)."""


class ErrorSums:
    """Running sums ``[quantity, (sum|r|, sum r^2, count, sum w rho(r))]`` (count: labelled
    entries, the loss's normaliser as in training)."""

    def __init__(self) -> None:
        self.total: Tensor | None = None

    def reset(self) -> None:
        self.total = None

    @torch.no_grad()
    def update(self, pred: dict[str, Tensor], batch, loss: WeightedLoss) -> None:
        found = residuals(pred, batch)
        rows = []
        for name in QUANTITIES:
            if name in found:
                r, mask, weight = (t.detach() for t in found[name])
                rows.append(
                    torch.stack(
                        [
                            (r.abs() * mask).sum(),
                            (r.square() * mask).sum(),
                            mask.sum(),
                            (loss.penalty(r) * weight).sum(),
                        ]
                    )
                )
            else:
                rows.append(pred["energy"].new_zeros(4))
        sums = torch.stack(rows).to(torch.float64)
        self.total = sums if self.total is None else self.total + sums

    def compute(
        self, loss: WeightedLoss, reduce: Callable[[Tensor], Tensor] = lambda t: t
    ) -> dict[str, float]:
        """Metrics over everything seen since :meth:`reset`; ``reduce`` sums over processes.

        Keys: ``loss`` and ``<quantity>_<mae|rmse>_<unit>`` for quantities with labels.
        """
        if self.total is None:
            return {}
        total = reduce(self.total.clone())
        out: dict[str, float] = {}
        value = 0.0
        for k, name in enumerate(QUANTITIES):
            abs_sum, sq_sum, count, loss_sum = total[k].tolist()
            if count > 0:
                value += loss.weights[name] * loss_sum / count
                out[f"{name}_mae_{keys.metric_unit(name)}"] = 1000.0 * abs_sum / count
                out[f"{name}_rmse_{keys.metric_unit(name)}"] = 1000.0 * (sq_sum / count) ** 0.5
        out["loss"] = value
        return out


__all__ = ["ErrorSums"]
