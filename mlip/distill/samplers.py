"""Structures around the user's own: supercells, rattles, isotropic and shear strains, vacancies.

A sampler is a Hydra-built object with ``frames(teacher=None) -> Iterator[ase.Atoms]``,
deterministic given its constructor arguments (``seed`` included); every frame carries
``info["config_type"]`` (how it was made) and no calculator. :class:`StructureSampler` is the one
for ``mlip distill structure.cif``; :class:`~mlip.distill.prototypes.PrototypeSampler` samples
across the periodic table; :class:`~mlip.distill.md.TeacherMD` adds teacher-driven MD snapshots to
either.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from mlip.distill import perturb
from mlip.sim.io import is_bulk, read_structure

ORIGINAL = "original"
RATTLE = "rattle"
STRAIN_ISO = "strain_iso"
SHEAR = "strain_shear"
VACANCY = "vacancy"
CONFIG_TYPES = (ORIGINAL, RATTLE, STRAIN_ISO, SHEAR, VACANCY)
"""``config_type`` of each kind of frame :class:`StructureSampler` makes."""


class StructureSampler:
    """Frames around each of ``structures``: for every structure (its bulk cell grown to a
    supercell of at least ``min_atoms`` atoms), in this order,

    - ``original``: the (super)cell as it is;
    - ``rattle``: ``rattles`` copies, positions rattled by ``rattle_A`` Å (Gaussian, per component);
    - ``strain_iso``: one copy per entry of ``isotropic_strains`` (linear strain, e.g. ``-0.02``:
      lengths 2 % shorter), rattled;
    - ``strain_shear``: ``shears`` copies under a random volume-keeping shear whose components are
      uniform in ``[-shear_strain, shear_strain]``, rattled;
    - ``vacancy``: ``vacancies`` copies with one random atom removed, rattled.

    Strains apply to fully periodic cells only (a molecule gets its rattled copies and vacancies).
    Structure ``k``'s frames come from a generator seeded with ``(seed, k)``: adding a structure at
    the end leaves the frames of the others as they were.

    Args:
        structures: structure files (any format :func:`mlip.sim.io.read_structure` reads; the last
            frame of a multi-frame file).
        min_atoms: smallest supercell size, atoms (1: the cells as given).
        rattles: rattled copies per structure.
        rattle_A: rattle standard deviation, Å (also applied to strained copies and vacancies).
        isotropic_strains: linear strains of the isotropic copies.
        shears: shear-strained copies per structure.
        shear_strain: largest shear component.
        vacancies: copies with one vacancy per structure.
        seed: seed of every random draw.
    """

    def __init__(
        self,
        structures: Sequence[str | os.PathLike] = (),
        min_atoms: int = 64,
        rattles: int = 8,
        rattle_A: float = 0.05,
        isotropic_strains: Sequence[float] = (-0.03, -0.015, 0.015, 0.03),
        shears: int = 4,
        shear_strain: float = 0.03,
        vacancies: int = 2,
        seed: int = 0,
    ) -> None:
        if isinstance(structures, str | os.PathLike):
            structures = [structures]
        if not structures:
            raise ValueError(
                "sampler.structures: no structure files given (`mlip distill structure.cif ...`)"
            )
        for name, value in (("rattles", rattles), ("shears", shears), ("vacancies", vacancies)):
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"sampler.{name}={value!r}: a count >= 0")
        if not (rattle_A >= 0 and shear_strain >= 0):
            raise ValueError(f"sampler.rattle_A={rattle_A}, shear_strain={shear_strain}: >= 0")
        if any(not -0.5 < float(e) < 0.5 for e in isotropic_strains):
            raise ValueError(f"sampler.isotropic_strains={list(isotropic_strains)}: in (-0.5, 0.5)")
        self.structures = [os.fspath(path) for path in structures]
        self.min_atoms = int(min_atoms)
        self.rattles = rattles
        self.rattle_A = float(rattle_A)
        self.isotropic_strains = [float(e) for e in isotropic_strains]
        self.shears = shears
        self.shear_strain = float(shear_strain)
        self.vacancies = vacancies
        self.seed = int(seed)

    def frames(self, teacher: Calculator | None = None) -> Iterator[Atoms]:
        """Every frame, structure by structure in the order above (``teacher`` is not used)."""
        for k, path in enumerate(self.structures):
            base = perturb.supercell(read_structure(path), self.min_atoms)
            base.info["source"] = path
            yield from self._around(base, np.random.default_rng([self.seed, k]))

    def _around(self, base: Atoms, rng: np.random.Generator) -> Iterator[Atoms]:
        source = base.info["source"]
        yield _tagged(base, ORIGINAL, source)
        for _ in range(self.rattles):
            yield _tagged(perturb.rattle(base, rng, self.rattle_A), RATTLE, source)
        if is_bulk(base):
            for linear in self.isotropic_strains:
                strained = perturb.deform(base, perturb.isotropic_strain(linear))
                yield _tagged(perturb.rattle(strained, rng, self.rattle_A), STRAIN_ISO, source)
            for _ in range(self.shears):
                sheared = perturb.deform(base, perturb.shear_strain(rng, self.shear_strain))
                yield _tagged(perturb.rattle(sheared, rng, self.rattle_A), SHEAR, source)
        if len(base) > 1:
            for _ in range(self.vacancies):
                vacant = perturb.vacancies(base, rng, 1)
                yield _tagged(perturb.rattle(vacant, rng, self.rattle_A), VACANCY, source)


def _tagged(atoms: Atoms, config_type: str, source: str) -> Atoms:
    """``atoms`` without labels, ``info["config_type"]`` and ``info["source"]`` set."""
    out = perturb.unlabelled(atoms)
    out.info.update(config_type=config_type, source=source)
    return out


__all__ = ["CONFIG_TYPES", "StructureSampler"]
