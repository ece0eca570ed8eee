"""Potential: wraps an energy model into energies, forces and stress by autograd."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ase.data import chemical_symbols
from torch import Tensor, nn

from mlip import keys
from mlip.errors import UnknownElementError, unknown_elements


class Potential(nn.Module):
    """Energy, forces and stress of a batch from any per-atom energy model.

    ``E = sum_i (scale[s_i] * (model_i - model_iso[s_i]) + shift[s_i] + E0[s_i])``, where
    ``model_iso`` is the model's output for a lone neutral singlet atom of each species (total
    charge 0, multiplicity 1), so an atom without neighbours in a neutral singlet structure has
    energy ``E0 + shift`` exactly; for a charge-conditioned model (``charge_spin``) a lone ion gets
    ``E0 + shift`` plus the learned difference between the charged and the neutral atom. Forces
    ``-dE/dpos`` and stress ``(1/V) dE/d(strain)`` come from one autograd pass over positions and a
    symmetric strain applied to positions and cell. Double backward works (force and stress losses
    in training). In eval mode the models' edge-wise work on a large input runs in chunks that are
    recomputed in the backward pass (:meth:`mlip.nn.layers.ChannelwiseMessages.messages`): a call
    holds the per-edge tensors of one chunk at a time, with the same results.

    Args:
        model: module with ``forward(species, edge_vec, edge_index, batch, charge=None,
            spin=None) -> [N]``; ``charge`` and ``spin`` (``[B]``, see :mod:`mlip.keys`) come
            from the batch when it has them, and a model without charge/spin conditioning
            ignores them.
        cutoff: neighbour cutoff, Å (must equal the model's ``r_max``).
        species: atomic numbers the model knows, in the order of its species indices.
        e0: per-species isolated-atom energies, eV (default zeros).
        scale: per-species (or one) scale of the model output, eV.
        shift: per-species (or one) shift of the per-atom energy, eV (lone atoms included).
    """

    def __init__(
        self,
        model: nn.Module,
        cutoff: float,
        species: Sequence[int],
        e0: Sequence[float] | None = None,
        scale: float | Sequence[float] = 1.0,
        shift: float | Sequence[float] = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.cutoff = float(cutoff)
        species = [int(z) for z in species]
        if len(set(species)) != len(species):
            raise ValueError(f"species has duplicates: {species}")
        n = len(species)
        dtype = torch.get_default_dtype()
        index = torch.full((119,), -1, dtype=torch.long)
        index[torch.tensor(species)] = torch.arange(n)
        self.register_buffer("species", torch.tensor(species, dtype=torch.long))
        self.register_buffer("species_index", index)
        self.register_buffer("e0", _per_species(e0 if e0 is not None else 0.0, n, "e0", dtype))
        self.register_buffer("scale", _per_species(scale, n, "scale", dtype))
        self.register_buffer("shift", _per_species(shift, n, "shift", dtype))

    @property
    def elements(self) -> list[str]:
        """Chemical symbols the model knows."""
        return [chemical_symbols[z] for z in self.species.tolist()]

    def species_of(self, z: Tensor) -> Tensor:
        """Atomic numbers ``[N]`` -> species indices ``[N]``; unknown elements raise."""
        idx = self.species_index[z.clamp(0, 118)]
        if bool((idx < 0).any()) or bool((z > 118).any()):
            unknown = {int(v) for v in z[(idx < 0) | (z > 118)].tolist()}
            raise UnknownElementError(unknown_elements(unknown, self.elements))
        return idx

    def isolated_atom_output(self) -> Tensor:
        """The model's raw output ``[S]`` for one lone neutral singlet atom of each species
        (total charge 0, spin multiplicity 1), each its own structure."""
        device = self.species.device
        no_atoms = torch.zeros(0, dtype=torch.long, device=device)
        _, lone = self._with_lone_atoms(
            no_atoms,
            self.e0.new_zeros(0, 3),
            torch.zeros(2, 0, dtype=torch.long, device=device),
            no_atoms,
            0,
            self.e0.new_zeros(0),
            self.e0.new_ones(0),
        )
        return lone

    def _with_lone_atoms(
        self,
        species: Tensor,
        edge_vec: Tensor,
        edge_index: Tensor,
        graph_of_atom: Tensor,
        num_graphs: int,
        charge: Tensor | None,
        spin: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One model call on the batch with one lone neutral singlet atom of each species appended
        as structures of their own (no edges, so nothing else changes) -> the outputs ``[N]`` of
        the batch's atoms and ``[S]`` of the lone atoms."""
        lone = torch.arange(self.species.shape[0], device=species.device)
        if charge is not None:
            charge = torch.cat([charge, charge.new_zeros(lone.shape[0])])
        if spin is not None:
            spin = torch.cat([spin, spin.new_ones(lone.shape[0])])
        out = self.model(
            torch.cat([species, lone]),
            edge_vec,
            edge_index,
            torch.cat([graph_of_atom, num_graphs + lone]),
            charge=charge,
            spin=spin,
        )
        num_atoms = species.shape[0]
        return out[:num_atoms], out[num_atoms:]

    def _energy_model_output(
        self,
        species: Tensor,
        edge_vec: Tensor,
        edge_index: Tensor,
        graph_of_atom: Tensor,
        num_graphs: int,
        charge: Tensor | None,
        spin: Tensor | None,
    ) -> Tensor:
        """The model's output ``[N]`` minus each atom's lone-atom reference
        (:meth:`isolated_atom_output`) for its species.

        A frozen model (inference: ASE calculator, MD, relaxation) gets the same reference every
        call, so it is computed once and reused until a parameter or buffer is replaced or changed
        in place (``load_state_dict``, ``.to()``, an optimiser step: the key holds every tensor's
        identity, storage, version counter, dtype and device). With trainable parameters one model
        call gives both, inside the autograd graph (:meth:`_with_lone_atoms`).
        """
        tensors = [*self.model.parameters(), *self.model.buffers()]
        if not any(t.requires_grad for t in tensors):
            key = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
            if getattr(self, "_reference_key", None) != key:
                with torch.no_grad():
                    self._reference = self.isolated_atom_output()
                self._reference_key = key
            out = self.model(species, edge_vec, edge_index, graph_of_atom, charge=charge, spin=spin)
            return out - self._reference[species]
        out, lone = self._with_lone_atoms(
            species, edge_vec, edge_index, graph_of_atom, num_graphs, charge, spin
        )
        return out - lone[species]

    def forward(
        self,
        batch,
        forces: bool = True,
        stress: bool = False,
        create_graph: bool | None = None,
    ) -> dict[str, Tensor]:
        """Predictions for a ``torch_geometric`` batch with the fields of :mod:`mlip.keys`
        (``charge`` and ``spin`` optional: neutral singlet when absent).

        Returns ``energy [B]`` eV, ``node_energy [N]`` eV, and when asked ``forces [N, 3]`` eV/Å
        and ``stress [B, 3, 3]`` eV/Å³ (ASE sign; zero for structures without a cell volume).
        ``create_graph`` defaults to ``self.training`` (needed for force losses).
        """
        return self.predictions(
            *self.inputs(batch),
            forces=forces,
            stress=stress,
            create_graph=self.training if create_graph is None else create_graph,
        )

    def inputs(self, batch) -> tuple[Tensor | None, ...]:
        """The tensors :meth:`predictions` takes, from a batch: species indices (unknown
        elements raise), positions, cells and shifts in the potential's dtype, the edges, each
        atom's structure, and charge and spin (None when the batch has none)."""
        dtype = self.e0.dtype
        z = batch[keys.Z]
        return (
            self.species_of(z),
            batch[keys.POS].to(dtype),
            batch[keys.CELL].to(dtype).reshape(-1, 3, 3),
            batch[keys.SHIFTS].to(dtype),
            batch[keys.EDGE_INDEX],
            batch[keys.BATCH] if keys.BATCH in batch else torch.zeros_like(z),
            batch[keys.CHARGE] if keys.CHARGE in batch else None,
            batch[keys.SPIN] if keys.SPIN in batch else None,
        )

    def predictions(
        self,
        species: Tensor,
        pos: Tensor,
        cell: Tensor,
        shifts: Tensor,
        edge_index: Tensor,
        graph_of_atom: Tensor,
        charge: Tensor | None,
        spin: Tensor | None,
        forces: bool,
        stress: bool,
        create_graph: bool,
    ) -> dict[str, Tensor]:
        """:meth:`forward` on the tensors of :meth:`inputs`: ``species [N]`` indices, ``pos
        [N, 3]`` Å, ``cell [B, 3, 3]`` Å, ``shifts [E, 3]`` (cell images), ``edge_index [2, E]``,
        ``graph_of_atom [N]``, ``charge`` / ``spin`` ``[B]`` or None.

        In training mode with ``create_graph`` the derivatives come from
        :func:`torch.func.grad_and_value`, which ``torch.compile`` traces (the training step's
        backward goes through it to the weights); otherwise from :func:`torch.autograd.grad`,
        which the memory-bounded chunks of eval mode need (checkpointing's saved-tensor hooks).
        Both give the same numbers.
        """
        num_graphs = cell.shape[0]
        src, dst = edge_index[0], edge_index[1]

        def energies(pos: Tensor, strain: Tensor | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            """-> (total energy, (energy [B], node_energy [N])) at ``pos`` and ``strain``."""
            box = cell
            if strain is not None:
                sym = 0.5 * (strain + strain.transpose(1, 2))
                pos = pos + torch.einsum("ni,nij->nj", pos, sym[graph_of_atom])
                box = cell + torch.bmm(cell, sym)
            edge_vec = (
                pos[src] - pos[dst] + torch.einsum("ei,eij->ej", shifts, box[graph_of_atom[dst]])
            )
            out = self._energy_model_output(
                species, edge_vec, edge_index, graph_of_atom, num_graphs, charge, spin
            )
            node_energy = out * self.scale[species] + self.shift[species] + self.e0[species]
            energy = node_energy.new_zeros(num_graphs).index_add(0, graph_of_atom, node_energy)
            return energy.sum(), (energy, node_energy)

        strain = pos.new_zeros(num_graphs, 3, 3) if stress else None
        argnums = (0,) * forces + (1,) * stress
        if not argnums:
            _, (energy, node_energy) = energies(pos, strain)
            return {keys.ENERGY: energy, keys.NODE_ENERGY: node_energy}
        if create_graph and self.training:
            grads, (_, (energy, node_energy)) = torch.func.grad_and_value(
                energies, argnums=argnums, has_aux=True
            )(pos, strain)
        else:
            inputs = [pos, strain]
            for i in argnums:  # only what is differentiated takes part in the graph
                inputs[i] = inputs[i].detach().requires_grad_(True)
            total, (energy, node_energy) = energies(*inputs)
            needed = [inputs[i] for i in argnums]
            grads = torch.autograd.grad(total, needed, create_graph=create_graph, allow_unused=True)
            grads = [
                torch.zeros_like(x) if g is None else g for x, g in zip(needed, grads, strict=True)
            ]
        result = {keys.ENERGY: energy, keys.NODE_ENERGY: node_energy}
        if forces:
            result[keys.FORCES] = -grads[0]
        if stress:
            volume = torch.linalg.det(cell).abs()
            safe = torch.where(volume > 0, volume, torch.ones_like(volume))
            result[keys.STRESS] = torch.where(
                (volume > 0)[:, None, None], grads[-1] / safe[:, None, None], 0.0
            )
        return result


def _per_species(value: float | Sequence[float], n: int, name: str, dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype)
    if t.ndim == 0:
        return t.repeat(n)
    if t.shape != (n,):
        raise ValueError(f"{name} has {t.numel()} values for {n} species")
    return t.clone()
