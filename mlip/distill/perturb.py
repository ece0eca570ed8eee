"""Perturbations of a structure, each a pure function of the structure and a seeded generator.

Every function returns a new ``ase.Atoms`` without a calculator and leaves its input alone; the
samplers (:mod:`mlip.distill.samplers`, :mod:`mlip.distill.prototypes`) and the pseudo-labels of
fine-tuning replay (:mod:`mlip.train.replay`) build their frames from these. Strains act on fully
periodic cells only (a molecule or slab is returned rattled or as it is). Lengths are in Å,
strains dimensionless (0.02 = 2 %).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from mlip import keys
from mlip.sim.io import is_bulk


def unlabelled(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` without labels, calculator, velocities or constraints: numbers,
    positions, cell, pbc, and the total charge and spin (``info``) a model reads."""
    info = {name: atoms.info[name] for name in (keys.CHARGE, keys.SPIN) if name in atoms.info}
    return Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc, info=info)


def rattle(atoms: Atoms, rng: np.random.Generator, std_A: float) -> Atoms:
    """``atoms`` with every Cartesian position component shifted by Gaussian noise of standard
    deviation ``std_A`` Å."""
    out = unlabelled(atoms)
    out.positions += rng.normal(0.0, std_A, out.positions.shape)
    return out


def deform(atoms: Atoms, strain: np.ndarray) -> Atoms:
    """``atoms`` with cell ``cell @ (I + strain)`` and positions carried along (bulk only; other
    structures come back unchanged). ``strain``: ``[3, 3]``, symmetric."""
    out = unlabelled(atoms)
    if is_bulk(out):
        out.set_cell(out.cell.array @ (np.eye(3) + np.asarray(strain)), scale_atoms=True)
    return out


def random_strain(rng: np.random.Generator, max_strain: float) -> np.ndarray:
    """A symmetric ``[3, 3]`` strain whose six independent components are uniform in
    ``[-max_strain, max_strain]`` (diagonal first in row-major upper-triangle order)."""
    upper = np.zeros((3, 3))
    upper[np.triu_indices(3)] = rng.uniform(-max_strain, max_strain, 6)
    return upper + np.triu(upper, 1).T


def shear_strain(rng: np.random.Generator, max_strain: float) -> np.ndarray:
    """A symmetric ``[3, 3]`` strain with zero diagonal (volume kept to first order) whose three
    off-diagonal components are uniform in ``[-max_strain, max_strain]``."""
    upper = np.zeros((3, 3))
    upper[np.triu_indices(3, 1)] = rng.uniform(-max_strain, max_strain, 3)
    return upper + upper.T


def isotropic_strain(linear: float) -> np.ndarray:
    """``linear * I``: every length scaled by ``1 + linear`` (volume by ``(1 + linear)**3``)."""
    return linear * np.eye(3)


def strain_and_rattle(
    atoms: Atoms, rng: np.random.Generator, std_A: float, max_strain: float
) -> Atoms:
    """``atoms`` strained by :func:`random_strain` (bulk only, ``max_strain > 0``), then rattled by
    :func:`rattle`; the generator is drawn in that order (strain first)."""
    if is_bulk(atoms) and max_strain > 0:
        atoms = deform(atoms, random_strain(rng, max_strain))
    return rattle(atoms, rng, std_A)


def vacancies(atoms: Atoms, rng: np.random.Generator, count: int = 1) -> Atoms:
    """``atoms`` with ``count`` distinct atoms chosen uniformly removed (at least one atom stays)."""
    if not 0 < count < len(atoms):
        raise ValueError(f"cannot remove {count} of {len(atoms)} atoms")
    out = unlabelled(atoms)
    del out[sorted(rng.choice(len(out), size=count, replace=False).tolist())]
    return out


def supercell(atoms: Atoms, min_atoms: int) -> Atoms:
    """The smallest diagonal repetition of a bulk cell holding at least ``min_atoms`` atoms,
    grown one repetition at a time along the currently shortest lattice direction (so the result
    is as near cubic as diagonal repetitions allow); other structures come back as they are."""
    out = unlabelled(atoms)
    if not is_bulk(out):
        return out
    lengths = out.cell.lengths()
    repeat = np.ones(3, dtype=int)
    while len(out) * int(repeat.prod()) < min_atoms:
        repeat[int(np.argmin(lengths * repeat))] += 1
    return out.repeat(tuple(int(n) for n in repeat))


__all__ = [
    "deform",
    "isotropic_strain",
    "random_strain",
    "rattle",
    "shear_strain",
    "strain_and_rattle",
    "supercell",
    "unlabelled",
    "vacancies",
]
