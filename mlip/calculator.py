"""ASE calculator: energies, forces and stress of a :class:`~mlip.nn.potential.Potential`.

The calculator keeps a Verlet neighbour list: pairs within ``cutoff + skin`` are found once (by
:func:`mlip.data.graph.neighbour_list`) and reused while no pair can have moved from beyond
``cutoff + skin`` to within ``cutoff``, so MD and relaxations pay a neighbour search only every few
steps. Each step the pairs beyond the cutoff are dropped before the model sees them (they would
contribute exactly zero, since the radial envelope vanishes there, but cost time).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlip import keys
from mlip.data.graph import MIN_DISTANCE, charge_spin, neighbour_list, pairs_to_graph, too_close
from mlip.errors import NonFiniteOutputError, UnknownElementError, unknown_elements
from mlip.nn.potential import Potential


class MLIPCalculator(Calculator):
    """ASE calculator for an mlip model file or a loaded :class:`~mlip.nn.potential.Potential`.

    Results: ``energy`` and ``free_energy`` (eV), ``energies`` (per atom, ``[N]`` eV), ``forces``
    (``[N, 3]`` eV/Å) and, for structures with a three-dimensional cell, ``stress`` (Voigt
    ``[6]`` eV/Å³, ASE sign: positive = tensile).

    Args:
        model: path of a model file, a loaded ``Potential``, or None for the bundled default model.
            A ``Potential`` given here is moved to ``device`` / ``dtype`` in place and used in
            eval mode.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: ``"float32"``, ``"float64"`` or a ``torch.dtype``; default: the model's own.
        skin: Verlet skin, Å: pairs are listed up to ``cutoff + skin`` and the list is rebuilt only
            when some pair may have crossed that margin (about when an atom moved by ``skin / 2``).
            0 rebuilds it every step.
        min_distance: smallest allowed interatomic distance, Å; closer atoms raise
            :class:`~mlip.errors.AtomsTooCloseError` naming them (0 disables the check).
        stress: compute stress with every calculation on periodic cells (default), or only when
            asked for (``False``; saves a little time in NVE/NVT MD).

    The total charge ``atoms.info["charge"]`` (e, default 0) and spin multiplicity
    ``atoms.info["spin"]`` (``2S + 1``, default 1) reach the model, which uses them if it was built
    with ``charge_spin``; changing either makes the next call recompute.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model: str | os.PathLike | Potential | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        skin: float = 0.5,
        min_distance: float = MIN_DISTANCE,
        stress: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if isinstance(model, Potential):
            potential = model.to(device=device, dtype=dtype) if dtype else model.to(device)
        else:
            from mlip.export import load_model

            potential = load_model(
                "default" if model is None else model, device=device, dtype=dtype
            )
            potential.requires_grad_(False)
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.potential = potential.eval()
        self.device = torch.device(device)
        self.dtype = potential.e0.dtype
        self.cutoff = potential.cutoff
        self.skin = float(skin)
        self.min_distance = float(min_distance)
        self.always_stress = bool(stress)
        self.known_numbers = set(potential.species.tolist())
        self.neighbour_list_builds = 0
        self._verlet: _VerletList | None = None

    @property
    def elements(self) -> list[str]:
        """Chemical symbols the model knows."""
        return self.potential.elements

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self.check_elements(atoms)
        periodic_cell = bool(atoms.pbc.any()) and atoms.cell.rank == 3
        if "stress" in properties and not periodic_cell:
            raise PropertyNotImplementedError(
                "stress needs a periodic structure with a three-dimensional cell"
            )
        want_stress = periodic_cell and (self.always_stress or "stress" in properties)

        i, j, shifts = self._pairs(atoms)
        graph = pairs_to_graph(atoms, i, j, shifts, self.dtype).to(self.device)
        out = self.potential(graph, forces=True, stress=want_stress, create_graph=False)
        energy = float(out[keys.ENERGY].detach().sum())
        finite = [bool(out[k].isfinite().all()) for k in (keys.ENERGY, keys.FORCES)]
        if want_stress:
            finite.append(bool(out[keys.STRESS].isfinite().all()))
        if not all(finite):
            raise NonFiniteOutputError(
                f"the model's energy, forces or stress are not finite (NaN or inf) for this "
                f"{len(atoms)}-atom {atoms.get_chemical_formula()}: the model file is broken, or "
                "the structure is far outside what it was trained on"
            )
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out[keys.NODE_ENERGY].detach().cpu().double().numpy(),
            "forces": out[keys.FORCES].detach().cpu().double().numpy(),
        }
        if want_stress:
            stress = out[keys.STRESS].detach().cpu().double().numpy()[0]
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's system changes, plus ``"info"`` when the total charge or spin changed (ASE does
        not compare ``atoms.info``, and a cached energy for another charge would be wrong)."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and charge_spin(atoms) != charge_spin(self.atoms):
            changes.append("info")
        return changes

    def check_elements(self, atoms: Atoms) -> None:
        """Raise :class:`UnknownElementError` naming any element of ``atoms`` the model lacks."""
        unknown = sorted(set(atoms.numbers.tolist()) - self.known_numbers)
        if unknown:
            raise UnknownElementError(unknown_elements(unknown, self.elements))

    def _pairs(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs ``(i, j, shifts)`` within the cutoff, from the Verlet list (rebuilt if stale),
        after the minimum-distance check on their distances."""
        if self._verlet is None or not self._verlet.valid_for(atoms):
            self._verlet = _VerletList(atoms, self.cutoff, self.skin)
            self.neighbour_list_builds += 1
        i, j, shifts, distances = self._verlet.within(atoms, self.cutoff)
        error = too_close(atoms.numbers, i, j, distances, self.min_distance)
        if error is not None:
            raise error
        return i, j, shifts


class _VerletList:
    """Pairs within ``cutoff + skin`` of a reference structure, and when they may be reused.

    Positions are compared after removing the affine deformation of the cell: with
    ``D = C_ref^-1 C - I`` and ``d_a = pos_a - pos_ref_a (I + D)``, every pair vector of the new
    structure is ``r_ref (I + D) + d_j - d_i``, so a pair that was at least ``cutoff + skin`` apart
    is still beyond ``cutoff`` while ``(cutoff + skin) * ||D||_2 + 2 max |d| <= skin``. Without a
    cell change this is the usual ``max |d| <= skin / 2``. A change of atoms, numbers or
    periodicity, or of the cell of a structure that is not periodic in all directions, rebuilds.
    """

    def __init__(self, atoms: Atoms, cutoff: float, skin: float) -> None:
        self.skin = skin
        self.outer = cutoff + skin
        self.numbers = atoms.numbers.copy()
        self.pbc = atoms.pbc.copy()
        self.positions = atoms.positions.copy()
        self.cell = atoms.cell.array.copy()
        self.i, self.j, self.shifts = neighbour_list(atoms, self.outer)
        self.float_shifts = self.shifts.astype(np.float64)
        self.inverse_cell = np.linalg.inv(self.cell) if atoms.pbc.all() else None

    def valid_for(self, atoms: Atoms) -> bool:
        if (
            self.skin == 0
            or len(atoms) != len(self.numbers)
            or not np.array_equal(atoms.numbers, self.numbers)
            or not np.array_equal(atoms.pbc, self.pbc)
        ):
            return False
        cell = atoms.cell.array
        if np.array_equal(cell, self.cell):
            displacement = atoms.positions - self.positions
            return 2.0 * np.sqrt((displacement**2).sum(axis=1).max(initial=0.0)) <= self.skin
        if self.inverse_cell is None:
            return False
        deformation = self.inverse_cell @ cell  # I + D
        strain = np.linalg.norm(deformation - np.eye(3), ord=2)
        displacement = atoms.positions - self.positions @ deformation
        largest = np.sqrt((displacement**2).sum(axis=1).max(initial=0.0))
        return self.outer * strain + 2.0 * largest <= self.skin

    def within(
        self, atoms: Atoms, cutoff: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The listed pairs closer than ``cutoff`` in ``atoms`` now, with their distances (Å)."""
        positions = atoms.positions
        vectors = positions[self.j] - positions[self.i] + self.float_shifts @ atoms.cell.array
        distances = np.sqrt((vectors**2).sum(axis=1))
        keep = distances < cutoff
        return self.i[keep], self.j[keep], self.shifts[keep], distances[keep]
