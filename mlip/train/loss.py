"""Weighted training loss on energy per atom, forces and stress (MSE or Huber).

The loss is a sum over quantities ``k`` of ``weight_k * sum_i w_i rho(r_i) / sum_i m_i``: residuals
``r`` are energy per atom (eV/atom), force components (eV/Å) and stress components (eV/Å³);
``w_i`` is the structure's loss weight (``atoms.info["weight"]``, default 1; fine-tuning's replay
frames carry ``finetune.replay_weight``) and ``m_i`` 1 on labelled entries, both 0 where a structure
has no such label. The normaliser counts labelled entries, not weights, so a structure of weight 2
counts twice as much as one of weight 1 whatever else its batch holds. Sums and normalisers are
kept apart so that a data-parallel run can normalise by the global batch (see
:meth:`WeightedLoss.combine`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from mlip import keys

QUANTITIES = (keys.ENERGY, keys.FORCES, keys.STRESS)


def residuals(pred: dict[str, Tensor], batch) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """``{quantity: (residual, label_mask, loss_weight)}``, flat tensors of one length each.

    Energy residuals are per atom (``[B]``, eV/atom), forces per component (``[3N]``, eV/Å), stress
    per component (``[9B]``, eV/Å³); quantities absent from ``pred`` are left out. Entries without
    a label have mask 0 and weight 0 (shapes stay static: no boolean indexing).
    """
    graph_of_atom = batch[keys.BATCH]
    num_graphs = batch[keys.ENERGY].shape[0]
    weight = batch[keys.WEIGHT]
    out = {}
    num_atoms = torch.bincount(graph_of_atom, minlength=num_graphs).to(weight.dtype)
    mask = batch[keys.HAS_ENERGY].to(weight.dtype)
    residual = (pred[keys.ENERGY] - batch[keys.ENERGY]) / num_atoms.clamp(min=1)
    out[keys.ENERGY] = (residual, mask, mask * weight)
    if keys.FORCES in pred:
        mask = batch[keys.HAS_FORCES].to(weight.dtype)[graph_of_atom, None].expand(-1, 3)
        residual = pred[keys.FORCES] - batch[keys.FORCES]
        atom_weight = weight[graph_of_atom, None] * mask
        out[keys.FORCES] = (residual.reshape(-1), mask.reshape(-1), atom_weight.reshape(-1))
    if keys.STRESS in pred:
        mask = batch[keys.HAS_STRESS].to(weight.dtype)[:, None].expand(-1, 9)
        residual = (pred[keys.STRESS] - batch[keys.STRESS]).reshape(num_graphs, 9)
        out[keys.STRESS] = (
            residual.reshape(-1),
            mask.reshape(-1),
            (weight[:, None] * mask).reshape(-1),
        )
    return out


class WeightedLoss(nn.Module):
    """Weighted sum of energy-per-atom, force and stress losses.

    Args:
        energy_weight: weight of the energy-per-atom term ((eV/atom)^-2 for MSE).
        forces_weight: weight of the force term ((eV/Å)^-2 for MSE).
        stress_weight: weight of the stress term ((eV/Å³)^-2 for MSE).
        kind: ``"mse"`` or ``"huber"``.
        huber_delta: transition point of the Huber loss, in each quantity's unit.
    """

    def __init__(
        self,
        energy_weight: float = 1.0,
        forces_weight: float = 10.0,
        stress_weight: float = 1.0,
        kind: str = "mse",
        huber_delta: float = 0.01,
    ) -> None:
        super().__init__()
        if kind not in ("mse", "huber"):
            raise ValueError(f"loss kind must be 'mse' or 'huber', got {kind!r}")
        self.weights = {
            keys.ENERGY: float(energy_weight),
            keys.FORCES: float(forces_weight),
            keys.STRESS: float(stress_weight),
        }
        self.kind = kind
        self.huber_delta = float(huber_delta)

    def wants_stress(self) -> bool:
        return self.weights[keys.STRESS] > 0

    def penalty(self, residual: Tensor) -> Tensor:
        """Elementwise ``rho(r)``."""
        if self.kind == "mse":
            return residual.square()
        zero = torch.zeros_like(residual)
        return functional.huber_loss(residual, zero, reduction="none", delta=self.huber_delta)

    def terms(self, pred: dict[str, Tensor], batch) -> dict[str, tuple[Tensor, Tensor]]:
        """``{quantity: (sum_i w_i rho(r_i), sum_i m_i)}`` (scalars) for the quantities in ``pred``:
        the weighted penalty and the number of labelled entries."""
        return {
            name: ((self.penalty(residual) * weight).sum(), mask.sum())
            for name, (residual, mask, weight) in residuals(pred, batch).items()
        }

    def combine(
        self, terms: dict[str, tuple[Tensor, Tensor]], normalisers: dict[str, Tensor] | None = None
    ) -> Tensor:
        """``sum_k weight_k * sum_k / normaliser_k``; normalisers default to the local label counts
        (a data-parallel run passes global counts divided by the number of processes)."""
        total = None
        for name, (value, count) in terms.items():
            norm = count if normalisers is None else normalisers[name]
            term = self.weights[name] * value / norm.clamp(min=torch.finfo(value.dtype).tiny)
            total = term if total is None else total + term
        return total

    def forward(self, pred: dict[str, Tensor], batch) -> Tensor:
        """The loss of one batch, normalised by its own label counts."""
        return self.combine(self.terms(pred, batch))


__all__ = ["QUANTITIES", "WeightedLoss", "residuals"]
