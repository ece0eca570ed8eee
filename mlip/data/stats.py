"""Statistics of a training set that the model stores: E0s, mean neighbour count, force scale.

These are computed once at fit time from the training frames (never typed into a config) and end up
in the model: E0s and the scale in :class:`~mlip.nn.potential.Potential`, the mean neighbour count in
the model's ``avg_num_neighbors``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from mlip.data.graph import neighbour_list

ISOLATED_CONFIG_TYPES = ("isolated_atom", "IsolatedAtom", "isolated")
"""``atoms.info["config_type"]`` values that mark an isolated-atom reference frame."""


@dataclass(frozen=True)
class DatasetStatistics:
    """What a potential takes from its training data.

    Attributes:
        species: atomic numbers, sorted; the model's species order.
        e0: isolated-atom energy of each species, eV (same order as ``species``).
        e0_source: ``"isolated"``, ``"least_squares"`` or ``"mixed"`` (isolated atoms for some
            elements, least squares for the rest).
        avg_num_neighbors: mean number of neighbours within the cutoff per atom.
        scale: RMS of the force components, eV/Å (1.0 without forces); the model output scale.
        shift: per-atom energy shift, eV (0: the E0s take the mean).
    """

    species: list[int]
    e0: list[float]
    e0_source: str
    avg_num_neighbors: float
    scale: float
    shift: float = 0.0

    def as_dict(self) -> dict:
        """Plain JSON-able dict (with ``e0`` also keyed by element symbol, for humans)."""
        out = asdict(self)
        out["e0_by_element"] = {
            chemical_symbols[z]: e for z, e in zip(self.species, self.e0, strict=True)
        }
        return out


def is_isolated_atom(atoms: Atoms, cutoff: float) -> bool:
    """True for a single-atom reference frame: one atom, and ``config_type`` says so, or the
    structure is non-periodic, or its periodic images are all farther than ``cutoff`` Å."""
    if len(atoms) != 1:
        return False
    if atoms.info.get("config_type") in ISOLATED_CONFIG_TYPES or not atoms.pbc.any():
        return True
    return len(neighbour_list(atoms, cutoff)[0]) == 0


def element_counts(frames: Sequence[Atoms], species: Sequence[int]) -> np.ndarray:
    """Number of atoms of each species in each frame, ``[len(frames), len(species)]``."""
    column = {z: k for k, z in enumerate(species)}
    counts = np.zeros((len(frames), len(species)))
    for row, atoms in enumerate(frames):
        for z, n in zip(*np.unique(atoms.numbers, return_counts=True), strict=True):
            counts[row, column[int(z)]] = n
    return counts


def isolated_atom_energies(frames: Sequence[Atoms]) -> dict[int, float]:
    """``{Z: energy}`` of single-atom frames (eV); an element given twice must agree to 1 meV."""
    energies: dict[int, float] = {}
    for atoms in frames:
        if len(atoms) != 1 or atoms.calc is None or "energy" not in atoms.calc.results:
            raise ValueError(f"isolated-atom frame {atoms.get_chemical_formula()} has no energy")
        z, energy = int(atoms.numbers[0]), float(atoms.calc.results["energy"])
        if z in energies and abs(energies[z] - energy) > 1e-3:
            raise ValueError(
                f"two isolated-atom energies for {chemical_symbols[z]}: {energies[z]} and {energy} eV"
            )
        energies[z] = energy
    return energies


def fit_e0(
    frames: Sequence[Atoms],
    species: Sequence[int],
    isolated: Mapping[int, float] | None = None,
) -> tuple[list[float], str]:
    """Per-species reference energies (eV) and how they were obtained.

    Elements in ``isolated`` take those energies; the others are fitted by least squares of the
    frames' total energies (minus the fixed elements' share) on their element counts, which puts
    the mean energy per atom into the E0s. Frames without an energy are ignored.
    """
    isolated = dict(isolated or {})
    fixed = [k for k, z in enumerate(species) if z in isolated]
    free = [k for k, z in enumerate(species) if z not in isolated]
    e0 = np.array([isolated.get(z, 0.0) for z in species], dtype=np.float64)
    if free:
        labelled = [a for a in frames if a.calc is not None and "energy" in a.calc.results]
        if not labelled:
            raise ValueError("no frame has an energy: cannot fit E0s")
        counts = element_counts(labelled, species)
        energies = np.array([a.calc.results["energy"] for a in labelled], dtype=np.float64)
        energies -= counts[:, fixed] @ e0[fixed]
        solution, *_ = np.linalg.lstsq(counts[:, free], energies, rcond=None)
        e0[free] = solution
    source = "least_squares" if not fixed else ("isolated" if not free else "mixed")
    return e0.tolist(), source


def average_num_neighbors(num_edges: Sequence[int], num_atoms: Sequence[int]) -> float:
    """Mean neighbour count: total directed edges over total atoms (1.0 for an empty set)."""
    atoms = float(np.sum(num_atoms))
    return float(np.sum(num_edges)) / atoms if atoms > 0 else 1.0


def force_rms(frames: Sequence[Atoms]) -> float:
    """RMS of all force components of the frames that have forces, eV/Å (1.0 if none do)."""
    squares, count = 0.0, 0
    for atoms in frames:
        if atoms.calc is not None and "forces" in atoms.calc.results:
            forces = np.asarray(atoms.calc.results["forces"], dtype=np.float64)
            squares += float(np.sum(forces**2))
            count += forces.size
    rms = float(np.sqrt(squares / count)) if count else 0.0
    return rms if rms > 0 else 1.0


def compute_statistics(
    frames: Sequence[Atoms],
    num_edges: Sequence[int],
    isolated: Sequence[Atoms] = (),
    species: Sequence[int] | None = None,
) -> DatasetStatistics:
    """All statistics of a training set.

    Args:
        frames: training frames (isolated-atom frames excluded).
        num_edges: number of directed edges of each frame's graph (same order as ``frames``).
        isolated: isolated-atom frames giving E0s of their elements.
        species: atomic numbers the model must know (default: all elements in ``frames`` and
            ``isolated``).
    """
    present = {int(z) for atoms in [*frames, *isolated] for z in atoms.numbers}
    species = sorted(present if species is None else {int(z) for z in species} | present)
    e0, source = fit_e0(frames, species, isolated_atom_energies(isolated))
    return DatasetStatistics(
        species=species,
        e0=e0,
        e0_source=source,
        avg_num_neighbors=average_num_neighbors(num_edges, [len(a) for a in frames]),
        scale=force_rms(frames),
    )


__all__ = [
    "DatasetStatistics",
    "average_num_neighbors",
    "compute_statistics",
    "element_counts",
    "fit_e0",
    "force_rms",
    "is_isolated_atom",
    "isolated_atom_energies",
]
