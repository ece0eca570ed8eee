"""Total charge and spin multiplicity as learned embeddings of the initial node features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

INIT_STD = 0.1  # species embeddings start at N(0, 1): charge and spin start as a small perturbation


class ChargeSpinEmbedding(nn.Module):
    """One learned vector per integer total charge and one per spin multiplicity, per structure.

    Every atom gets ``charge_table[Q] + spin_table[2S+1]`` of its structure, which the energy
    models add to the species embedding (the initial scalar features). Both are invariant
    under rotations, reflections, translations and permutations, so the model keeps its symmetries.
    Tables start at ``N(0, INIT_STD^2)``: different charges give different energies from the start,
    without swamping the ``N(0, 1)`` species embedding.

    Follows the OMol25 convention: ``atoms.info["charge"]`` is the total charge in e and
    ``atoms.info["spin"]`` the multiplicity ``2S + 1`` (1 for a singlet, 2 for a doublet).

    Args:
        num_features: width of the embedding (the model's scalar channels).
        max_abs_charge: total charges ``-max_abs_charge .. max_abs_charge`` (e) are embedded.
        max_spin: multiplicities ``1 .. max_spin`` are embedded.
    """

    def __init__(self, num_features: int, max_abs_charge: int = 10, max_spin: int = 11) -> None:
        super().__init__()
        if max_abs_charge < 0 or max_spin < 1:
            raise ValueError(
                f"need max_abs_charge >= 0 and max_spin >= 1, got {max_abs_charge} and {max_spin}"
            )
        self.max_abs_charge = int(max_abs_charge)
        self.max_spin = int(max_spin)
        self.charge = nn.Embedding(2 * self.max_abs_charge + 1, num_features)
        self.spin = nn.Embedding(self.max_spin, num_features)
        nn.init.normal_(self.charge.weight, std=INIT_STD)
        nn.init.normal_(self.spin.weight, std=INIT_STD)

    def forward(self, charge: Tensor | None, spin: Tensor | None, batch: Tensor) -> Tensor:
        """Per-atom embeddings ``[N, num_features]``.

        ``charge [B]`` total charge per structure (e) and ``spin [B]`` multiplicity ``2S + 1``,
        integer-valued in any dtype; None means neutral (0) and singlet (1) for every structure.
        ``batch [N]`` is the structure index of every atom. Values that are not integers or lie
        outside ``[-max_abs_charge, max_abs_charge]`` / ``[1, max_spin]`` raise ``ValueError``.
        """
        q = _integer_per_atom(
            charge,
            batch,
            default=0,
            name="total charge",
            low=-self.max_abs_charge,
            high=self.max_abs_charge,
            option="max_abs_charge",
            hint="atoms.info['charge'] is the total charge in e",
        )
        s = _integer_per_atom(
            spin,
            batch,
            default=1,
            name="spin multiplicity",
            low=1,
            high=self.max_spin,
            option="max_spin",
            hint="atoms.info['spin'] is the multiplicity 2S+1 (1 = singlet), not S",
        )
        return self.charge(q + self.max_abs_charge) + self.spin(s - 1)


def _integer_per_atom(
    values: Tensor | None,
    batch: Tensor,
    *,
    default: int,
    name: str,
    low: int,
    high: int,
    option: str,
    hint: str,
) -> Tensor:
    """The integer ``values [B]`` of every atom's structure ``[N]`` (``default`` where None);
    a value that is not an integer in ``[low, high]`` raises ``ValueError`` naming it."""
    if values is None:
        return torch.full_like(batch, default)
    values = values.reshape(-1)
    bad = (values < low) | (values > high)
    if values.is_floating_point():
        bad = bad | (values != values.round())
    if bool(bad.any()):
        index = int(torch.nonzero(bad)[0, 0])
        value = float(values[index])
        problem = "is out of range" if value.is_integer() else "is not an integer"
        text = str(int(value)) if value.is_integer() else str(value)
        raise ValueError(
            f"structure {index} of the batch has {name} {text}, which {problem}: this model embeds "
            f"integer {name}s in [{low}, {high}] (model option {option}); {hint}"
        )
    return values.long()[batch]


__all__ = ["ChargeSpinEmbedding"]
