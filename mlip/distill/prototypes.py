"""Near-equilibrium crystals across the periodic table, for a teacher to label.

:class:`PrototypeSampler` makes, for every element it is given (default: H to Bi, Z = 1-83),

- **elements**: the ASE reference state (``ase.data.reference_states``) where ASE can build it,
  and the fcc, bcc, hcp, sc and diamond polymorphs; a crystal of dimers for H, N, O, F, Cl, Br, I;
  fcc alone for the noble gases (which take part in no compound);
- **ionic compounds**: charge-balanced cation/anion combinations from pymatgen's common oxidation
  states (cations: metals and metalloids; anion: its most negative state, more electronegative
  than the cation) in the rocksalt, CsCl, zincblende, wurtzite, fluorite, antifluorite, rutile,
  ReO3, corundum and cubic perovskite (Goldschmidt tolerance factor in [0.8, 1.1]) structures;
- **intermetallics**: metal pairs in B2 (CsCl), L1_2 (Cu3Au) and L1_0 (CuAu) order.

Every structure is first built with its shortest interatomic distance set to an estimate of the
equilibrium bond: ionic, the sum of the ions' radii (pymatgen's six-fold radii, else covalent
radii) with the bond-valence correction ``0.37 Å ln(CN/6)`` for the cation's coordination CN;
metallic and elemental, the element's own nearest-neighbour distance carried to CN by Pauling's
``0.26 Å ln(CN/CN_ref)`` (alloys: the composition-weighted mean). It is then grown to at most
``max_atoms`` atoms and, for every volume factor, copied ``rattles`` times, each strained and
rattled. ``info["config_type"]`` says how a frame was made, e.g. ``"rocksalt:NaCl:v1.00:r0"``;
ionic compounds also carry ``info["oxidation_states"]`` (``{"Na": 1, "Cl": -1}``). The compounds
are charge-balanced, not necessarily stable: the teacher's labels say how far from it they are.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator
from ase.data import atomic_numbers, chemical_symbols, covalent_radii, reference_states, vdw_radii
from ase.neighborlist import neighbor_list
from ase.spacegroup import crystal
from pymatgen.core import Element, Species

from mlip.distill import perturb

IONIC = {  # family: ((cations per formula, anions per formula), cation coordination)
    "rocksalt": ((1, 1), 6),
    "CsCl": ((1, 1), 8),
    "zincblende": ((1, 1), 4),
    "wurtzite": ((1, 1), 4),
    "fluorite": ((1, 2), 8),
    "antifluorite": ((2, 1), 4),
    "rutile": ((1, 2), 6),
    "ReO3": ((1, 3), 6),
    "corundum": ((2, 3), 6),
}
ALLOYS = {"B2": ((1, 1), 8), "L1_2": ((3, 1), 12), "L1_0": ((1, 1), 12)}
PROTOTYPES = ("elements", *IONIC, "perovskite", *ALLOYS)
"""Every family :class:`PrototypeSampler` knows (all of them by default)."""

NOBLE_GASES = ("He", "Ne", "Ar", "Kr", "Xe")
MOLECULES = {"H": 0.74, "N": 1.10, "O": 1.21, "F": 1.42, "Cl": 1.99, "Br": 2.28, "I": 2.67}
"""Bond lengths of the diatomic elements, Å (their solids are crystals of these molecules)."""
_NEAREST = {  # (nearest-neighbour distance Å, coordination) where ASE has no buildable reference
    "He": (3.57, 12),  # hcp solid He
    "B": (1.77, 6),  # alpha-B12 icosahedra
    "P": (2.22, 3),  # black P
    "S": (2.05, 2),  # alpha-S8 rings
    "Mn": (2.50, 12),  # close-packed (alpha-Mn has 58 atoms)
    "Ga": (2.70, 7),  # alpha-Ga, 1 + 6 neighbours averaged
    "Se": (2.37, 2),  # trigonal chains
    "Te": (2.83, 2),  # trigonal chains
    "Pm": (3.63, 12),  # dhcp, as its neighbours Nd and Sm
}
_EXTRA_RADII = {("H", -1): 1.25}  # Å: the rock-salt alkali hydrides' a/2 less the cation's radius
BOND_VALENCE_B = 0.37  # Å, Brown & Altermatt (1985): d(CN) = d(6) + b ln(CN/6)
PAULING_B = 0.26  # Å, Pauling (1947): d(n) = d(1) - 0.60 log10(n), bond number n = v/CN
CN = {"fcc": 12, "bcc": 8, "hcp": 12, "sc": 6, "diamond": 4}  # the elemental polymorphs


class PrototypeSampler:
    """Near-equilibrium crystals of ``elements`` (module docstring), frame by frame.

    Args:
        elements: chemical symbols; None: every element from H to Bi (Z = 1-83).
        prototypes: the families to make (:data:`PROTOTYPES`).
        volumes: volume scale factors applied to each estimated equilibrium cell.
        rattles: copies per structure and volume, each strained and rattled anew (>= 1).
        rattle_A: standard deviation of the Gaussian position noise, Å, per component.
        max_strain: largest component of a random symmetric strain applied to each copy
            (0.02 = 2 %; 0: the volume factors alone).
        max_atoms: largest cell; smaller cells are repeated along their shortest direction as
            long as they stay within it, larger ones are skipped.
        max_per_prototype: most compounds per compound family (None: all), chosen one at a time
            as the one whose elements have appeared least so far, ties broken by ``seed``.
        seed: seeds the choice of compounds and every strain and rattle.
    """

    def __init__(
        self,
        elements: Sequence[str] | None = None,
        prototypes: Sequence[str] = PROTOTYPES,
        volumes: Sequence[float] = (0.94, 1.0, 1.06),
        rattles: int = 1,
        rattle_A: float = 0.05,
        max_strain: float = 0.02,
        max_atoms: int = 16,
        max_per_prototype: int | None = 300,
        seed: int = 0,
    ) -> None:
        symbols = chemical_symbols[1:84] if elements is None else [str(s) for s in elements]
        unknown = [s for s in symbols if s not in atomic_numbers]
        if unknown or (set(prototypes) - set(PROTOTYPES)):
            raise ValueError(
                f"sampler: unknown elements {unknown} or prototypes "
                f"{sorted(set(prototypes) - set(PROTOTYPES))} (known: {list(PROTOTYPES)})"
            )
        volumes = [float(v) for v in volumes]
        if not (rattles >= 1 and rattle_A >= 0 and max_strain >= 0 and max_atoms >= 1) or any(
            not 0.5 < v < 2.0 for v in volumes
        ):
            raise ValueError(
                "sampler: rattles >= 1, rattle_A >= 0, max_strain >= 0, max_atoms >= 1 and "
                f"volumes in (0.5, 2), got {rattles}, {rattle_A}, {max_strain}, {max_atoms}, {volumes}"
            )
        self.elements = sorted(set(symbols), key=atomic_numbers.get)
        self.prototypes = [str(p) for p in prototypes]
        self.volumes = volumes
        self.rattles = int(rattles)
        self.rattle_A = float(rattle_A)
        self.max_strain = float(max_strain)
        self.max_atoms = int(max_atoms)
        self.max_per_prototype = max_per_prototype
        self.seed = int(seed)

    def structures(self) -> list[tuple[str, Atoms, dict[str, int] | None]]:
        """``(name, cell, oxidation states or None)`` of every structure before volume scaling,
        strain and rattle; ``name`` is ``"<prototype>:<formula>"``, the cell already grown."""
        made: list[tuple[str, Atoms, dict[str, int] | None]] = []
        for family in self.prototypes:
            if family == "elements":
                made += [(name, atoms, None) for name, atoms in _elemental(self.elements)]
                continue
            rng = np.random.default_rng([self.seed, zlib.crc32(family.encode())])
            chosen = _spread(_compounds(family, self.elements), self.max_per_prototype, rng)
            made += [(f"{family}:{f}", _build(family, sites, d), o) for f, sites, d, o in chosen]
        grown = [(name, _grow(atoms, self.max_atoms), oxi) for name, atoms, oxi in made]
        return [(name, atoms, oxi) for name, atoms, oxi in grown if atoms is not None]

    def frames(self, teacher: Calculator | None = None) -> Iterator[Atoms]:
        """Every frame: per structure, per volume factor, ``rattles`` strained and rattled copies
        (``teacher`` is not used). A frame's draws are seeded by ``seed`` and its config_type
        alone: a structure is strained and rattled the same whatever else is sampled."""
        for name, atoms, oxidation in self.structures():
            for volume in self.volumes:
                scaled = perturb.deform(atoms, perturb.isotropic_strain(volume ** (1 / 3) - 1))
                for copy in range(self.rattles):
                    kind = f"{name}:v{volume:.2f}:r{copy}"
                    rng = np.random.default_rng([self.seed, zlib.crc32(kind.encode())])
                    frame = perturb.strain_and_rattle(scaled, rng, self.rattle_A, self.max_strain)
                    frame.info["config_type"] = kind
                    if oxidation is not None:
                        frame.info["oxidation_states"] = dict(oxidation)
                    yield frame


def _elemental(elements: Sequence[str]) -> Iterator[tuple[str, Atoms]]:
    """Each element's reference state and polymorphs (module docstring), scaled by Pauling."""
    for s in elements:
        if s in MOLECULES:
            yield f"dimers:{s}2", _dimer_crystal(s, MOLECULES[s], 2 * vdw_radii[atomic_numbers[s]])
            continue
        reference, symmetry, d_ref, cn_ref = _reference(s)
        if reference is not None:
            yield f"{symmetry}:{s}", reference.copy()
        for kind in ("fcc",) if s in NOBLE_GASES else CN:
            if kind != symmetry:
                d = d_ref + PAULING_B * math.log(CN[kind] / cn_ref)
                yield f"{kind}:{s}", _build(kind, (s,), d)


@functools.cache
def _reference(symbol: str) -> tuple[Atoms | None, str | None, float, float]:
    """ASE's reference crystal of ``symbol`` and its symmetry (None where ASE cannot build it),
    its nearest-neighbour distance (Å) and mean coordination (neighbours within 1.1 times it)."""
    if symbol in _NEAREST:
        return None, None, *_NEAREST[symbol]
    atoms = perturb.unlabelled(bulk(symbol))
    distances = neighbor_list("d", atoms, 8.0)
    d = float(distances.min())
    symmetry = str(reference_states[atomic_numbers[symbol]]["symmetry"])
    return atoms, symmetry, d, float((distances < 1.1 * d).sum() / len(atoms))


def _d12(symbol: str) -> float:
    """Nearest-neighbour distance of ``symbol`` carried to 12-fold coordination, Å."""
    _, _, d, cn = _reference(symbol)
    return d + PAULING_B * math.log(12 / cn)


@functools.cache
def _radius(symbol: str, oxidation: int) -> float | None:
    """The six-fold ionic radius of ``symbol`` in ``oxidation``, Å (pymatgen), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        radius = Species(symbol, oxidation).ionic_radius
    return _EXTRA_RADII.get((symbol, oxidation), None if radius is None else float(radius))


def _bond(cation: str, q: int, anion: str, p: int, cn: int) -> float:
    """Cation-anion bond estimate, Å: ionic radii with the bond-valence correction for the
    cation's coordination ``cn``, else (no radius; hydrogen with a cation of electronegativity
    above 1.5, where H is no hydride ion) the sum of covalent radii."""
    rc, ra = _radius(cation, q), _radius(anion, -p)
    if rc is None or ra is None or (anion == "H" and Element(cation).X > 1.5):
        return float(covalent_radii[atomic_numbers[cation]] + covalent_radii[atomic_numbers[anion]])
    return rc + ra + BOND_VALENCE_B * math.log(cn / 6)


def _ions(elements: Sequence[str]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(cations, anions)`` as ``(symbol, |oxidation state|)``: every positive common state of
    the metals and metalloids; the most negative common state of the elements that have one."""
    cations, anions = [], []
    for s in elements:
        element = Element(s)
        states = element.common_oxidation_states
        if element.is_metal or element.is_metalloid:
            cations += [(s, q) for q in states if q > 0]
        if min(states, default=0) < 0:
            anions.append((s, -min(states)))
    return cations, anions


def _compounds(family: str, elements: Sequence[str]) -> list[tuple[str, tuple, float, dict]]:
    """Every ``(formula, site symbols, shortest distance Å, oxidation states or None)``."""
    cations, anions = _ions(elements)
    if family == "perovskite":
        return _perovskites(cations, anions)
    found = []
    if family in IONIC:
        (n_c, n_a), cn = IONIC[family]
        for (c, q), (a, p) in itertools.product(cations, anions):
            if c != a and n_c * q == n_a * p and Element(c).X < Element(a).X:
                formula = f"{c}{n_c if n_c > 1 else ''}{a}{n_a if n_a > 1 else ''}"
                found.append((formula, (c, a), _bond(c, q, a, p, cn), {c: q, a: -p}))
        return found
    (n_a, n_b), cn = ALLOYS[family]
    metals = [s for s in elements if Element(s).is_metal]
    for a, b in itertools.product(metals, metals):
        if a != b and (n_a != n_b or atomic_numbers[a] < atomic_numbers[b]):
            d = (n_a * _d12(a) + n_b * _d12(b)) / (n_a + n_b) + PAULING_B * math.log(cn / 12)
            found.append((f"{a}{n_a if n_a > 1 else ''}{b}", (a, b), d, None))
    return found


def _perovskites(cations: list, anions: list) -> list[tuple[str, tuple, float, dict]]:
    """Cubic ABX3 of distinct elements, charge-balanced, with ionic radii for all three and
    Goldschmidt's tolerance factor d(A-X) / (sqrt(2) d(B-X)) in [0.8, 1.1]."""
    found = []
    for (a, qa), (b, qb), (x, p) in itertools.product(cations, cations, anions):
        if (
            qa + qb != 3 * p
            or len({a, b, x}) < 3
            or max(Element(a).X, Element(b).X) >= Element(x).X
        ):
            continue
        if None in (_radius(a, qa), _radius(b, qb), _radius(x, -p)):
            continue
        d_bx, d_ax = _bond(b, qb, x, p, 6), _bond(a, qa, x, p, 12)
        if 0.8 <= d_ax / (math.sqrt(2) * d_bx) <= 1.1:
            edge = (2 * d_bx + math.sqrt(2) * d_ax) / 2  # Å, the mean of the two estimates
            found.append((f"{a}{b}{x}3", (a, b, x), edge / 2, {a: qa, b: qb, x: -p}))
    return found


def _spread(found: list, limit: int | None, rng: np.random.Generator) -> list:
    """Up to ``limit`` of ``found`` (tuples whose [1] are symbols), one at a time the one whose
    elements have appeared least so far (ties: in a random order), so every element comes in
    before any comes twice."""
    if limit is None or len(found) <= limit:
        return found
    found = [found[i] for i in rng.permutation(len(found))]
    symbols = sorted({s for item in found for s in item[1]})
    members = np.array([[s in item[1] for s in symbols] for item in found], dtype=float)
    counts, free, chosen = np.zeros(len(symbols)), np.ones(len(found), bool), []
    for _ in range(limit):
        i = int(np.argmin(np.where(free, members @ counts, np.inf)))
        free[i], counts = False, counts + members[i]
        chosen.append(found[i])
    return chosen


_CUBIC = (1.0, 1.0, 1.0, 90, 90, 90)
_HEXAGONAL = (1.0, 1.0, math.sqrt(8 / 3), 90, 90, 120)  # ideal c/a
_CELLS = {  # family: (space group, cell parameters (Å, degrees), one position per site)
    "fcc": (225, _CUBIC, [(0, 0, 0)]),
    "bcc": (229, _CUBIC, [(0, 0, 0)]),
    "hcp": (194, _HEXAGONAL, [(1 / 3, 2 / 3, 1 / 4)]),
    "sc": (221, _CUBIC, [(0, 0, 0)]),
    "diamond": (227, _CUBIC, [(0, 0, 0)]),
    "rocksalt": (225, _CUBIC, [(0, 0, 0), (0.5, 0.5, 0.5)]),
    "CsCl": (221, _CUBIC, [(0, 0, 0), (0.5, 0.5, 0.5)]),
    "zincblende": (216, _CUBIC, [(0, 0, 0), (0.25, 0.25, 0.25)]),
    "wurtzite": (186, _HEXAGONAL, [(1 / 3, 2 / 3, 0), (1 / 3, 2 / 3, 0.375)]),
    "fluorite": (225, _CUBIC, [(0, 0, 0), (0.25, 0.25, 0.25)]),
    "antifluorite": (225, _CUBIC, [(0.25, 0.25, 0.25), (0, 0, 0)]),  # cations in the tetrahedra
    "rutile": (136, (1.0, 1.0, 0.644, 90, 90, 90), [(0, 0, 0), (0.305, 0.305, 0)]),  # TiO2
    "ReO3": (221, _CUBIC, [(0, 0, 0), (0.5, 0, 0)]),
    "corundum": (167, (4.759, 4.759, 12.99, 90, 90, 120), [(0, 0, 0.3523), (0.3064, 0, 0.25)]),
    "perovskite": (221, _CUBIC, [(0.5, 0.5, 0.5), (0, 0, 0), (0.5, 0, 0)]),  # A, B, X
    "B2": (221, _CUBIC, [(0, 0, 0), (0.5, 0.5, 0.5)]),  # CsCl order of two metals
    "L1_2": (221, _CUBIC, [(0, 0.5, 0.5), (0, 0, 0)]),  # A3B: A at the face centres
    "L1_0": (123, (1.0, 1.0, math.sqrt(2), 90, 90, 90), [(0, 0, 0), (0.5, 0.5, 0.5)]),  # AB
}


@functools.cache
def _template(family: str) -> Atoms:
    """The primitive cell of ``family``, site k held by element Z = k + 1, shortest distance 1."""
    spacegroup, cellpar, basis = _CELLS[family]
    placeholders = chemical_symbols[1 : len(basis) + 1]
    atoms = crystal(
        placeholders, basis, spacegroup=spacegroup, cellpar=cellpar, primitive_cell=True
    )
    atoms = perturb.unlabelled(
        atoms
    )  # the shortest distance is at most the shortest lattice vector
    shortest = neighbor_list("d", atoms, 1.01 * float(atoms.cell.lengths().min())).min()
    atoms.set_cell(atoms.cell / shortest, scale_atoms=True)
    return atoms


def _build(family: str, sites: Sequence[str], shortest_A: float) -> Atoms:
    """The ideal cell of ``family`` with ``sites`` on its sites (in :data:`_CELLS` order),
    scaled so that its shortest interatomic distance is ``shortest_A`` Å."""
    atoms = _template(family).copy()
    atoms.numbers = [atomic_numbers[sites[z - 1]] for z in atoms.numbers]
    atoms.set_cell(atoms.cell * shortest_A, scale_atoms=True)
    return atoms


def _dimer_crystal(symbol: str, bond_A: float, contact_A: float) -> Atoms:
    """One ``symbol`` dimer of length ``bond_A`` along [111] of a cubic cell whose edge makes the
    shortest contact between molecules ``contact_A`` Å."""
    edge = bond_A / math.sqrt(3) + math.sqrt(contact_A**2 - 2 * bond_A**2 / 3)
    half = bond_A / 2 * np.ones(3) / math.sqrt(3)
    centre = np.full(3, edge / 2)
    return Atoms(2 * symbol, [centre - half, centre + half], cell=edge * np.eye(3), pbc=True)


def _grow(atoms: Atoms, max_atoms: int) -> Atoms | None:
    """``atoms`` repeated along its shortest direction while it stays within ``max_atoms``
    (None if it holds more already)."""
    if len(atoms) > max_atoms:
        return None
    repeat = np.ones(3, dtype=int)
    while True:
        step = repeat.copy()
        step[int(np.argmin(atoms.cell.lengths() * repeat))] += 1
        if len(atoms) * int(step.prod()) > max_atoms:
            return atoms.repeat(tuple(int(n) for n in repeat))
        repeat = step


__all__ = ["IONIC", "MOLECULES", "NOBLE_GASES", "PROTOTYPES", "PrototypeSampler"]
