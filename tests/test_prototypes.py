"""PrototypeSampler: coverage, reproducibility, chemistry (charge balance) and geometry (no
overlapping atoms, the intended nearest neighbours, lattice constants near experiment)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list
from pymatgen.core import Element

from mlip.distill.prototypes import IONIC, NOBLE_GASES, PROTOTYPES, PrototypeSampler


@pytest.fixture(scope="module")
def frames():
    """Frames of every element H-Bi and every prototype (100 compounds each, for speed)."""
    return list(PrototypeSampler(max_per_prototype=100).frames())


@pytest.fixture(scope="module")
def structures():
    """Every unstrained structure of every prototype, without the per-prototype limit:
    ``{name: (atoms, oxidation states or None)}``."""
    made = PrototypeSampler(max_per_prototype=None).structures()
    return {name: (atoms, states) for name, atoms, states in made}


def _same(a, b) -> bool:
    return (
        a.info["config_type"] == b.info["config_type"]
        and np.array_equal(a.numbers, b.numbers)
        and np.allclose(a.positions, b.positions)
        and np.allclose(a.cell.array, b.cell.array)
    )


def test_default_covers_the_periodic_table_within_bounds(frames):
    symbols = {s for atoms in frames for s in atoms.get_chemical_symbols()}
    assert len(symbols) == 83 and {"H", "He", "Tc", "Pm", "Bi"} <= symbols
    assert 2000 < len(frames) < 20000
    assert max(len(atoms) for atoms in frames) <= 16
    families = {atoms.info["config_type"].split(":")[0] for atoms in frames}
    assert set(PROTOTYPES) - {"elements"} <= families
    # compounds too reach most elements, not only the elemental crystals
    in_compounds = {
        s for atoms in frames if len(set(atoms.numbers)) > 1 for s in atoms.get_chemical_symbols()
    }
    assert len(in_compounds) >= 70


def test_config_type_says_how_a_frame_was_made(frames):
    kinds = [atoms.info["config_type"] for atoms in frames]
    assert len(set(kinds)) == len(kinds)
    assert "rocksalt:NaCl:v1.00:r0" in kinds or "rocksalt:MgO:v1.00:r0" in kinds
    for atoms, kind in zip(frames, kinds, strict=True):
        family, formula, volume, copy = kind.split(":")
        assert volume in ("v0.94", "v1.00", "v1.06") and copy == "r0"
        assert atoms.calc is None and atoms.pbc.all()
    assert "fcc:Cu:v1.00:r0" in kinds and "dimers:O2:v0.94:r0" in kinds


def test_reproducible_for_a_seed_and_different_for_another():
    kwargs = dict(elements=["Li", "Mg", "Al", "Ti", "Fe", "Cu", "O", "F", "S"], max_per_prototype=3)
    first = list(PrototypeSampler(**kwargs, seed=1).frames())
    again = list(PrototypeSampler(**kwargs, seed=1).frames())
    other = list(PrototypeSampler(**kwargs, seed=2).frames())
    assert len(first) == len(again) and all(map(_same, first, again))
    assert {a.info["config_type"] for a in first} != {a.info["config_type"] for a in other}
    shared = {a.info["config_type"]: a for a in other}
    common = [a for a in first if a.info["config_type"] in shared]
    assert common and not any(_same(a, shared[a.info["config_type"]]) for a in common)


def test_ionic_compounds_are_charge_balanced_in_common_oxidation_states(frames):
    ionic = [a for a in frames if a.info["config_type"].split(":")[0] in (*IONIC, "perovskite")]
    assert len(ionic) > 1000
    for atoms in ionic:
        states = atoms.info["oxidation_states"]
        assert sum(states[s] for s in atoms.get_chemical_symbols()) == 0
        for symbol, state in states.items():
            assert state in Element(symbol).common_oxidation_states
        anion = min(states, key=states.get)
        assert all(Element(s).X < Element(anion).X for s in states if s != anion)


def test_no_atoms_overlap_and_every_atom_is_bonded(frames):
    """After strain, volume and rattle: no pair closer than half its covalent bond length, and
    (noble gases aside) every atom has a neighbour within 1.6 covalent bond lengths (every 7th
    frame: each prototype and volume is there)."""
    radii = covalent_radii
    for atoms in frames[::7]:
        i, j, d = neighbor_list("ijd", atoms, max(5.0, 1.6 * 2 * radii[atoms.numbers].max()))
        ratio = d / (radii[atoms.numbers[i]] + radii[atoms.numbers[j]])
        assert ratio.min() > 0.5, atoms.info["config_type"]
        if not set(atoms.get_chemical_symbols()) & set(NOBLE_GASES):
            nearest = np.full(len(atoms), np.inf)
            np.minimum.at(nearest, i, ratio)
            assert nearest.max() < 1.6, atoms.info["config_type"]


def test_ionic_nearest_neighbours_are_cation_anion(structures):
    """The shortest distance of every ionic prototype joins a cation and an anion: the sites are
    where the prototype puts them (the first 10 compounds of each family)."""
    seen = {}
    for name, (atoms, states) in structures.items():
        family = name.split(":")[0]
        if states is None or seen.setdefault(family, 0) >= 10:
            continue
        seen[family] += 1
        # the shortest distance is at most the shortest lattice vector (an atom and its image)
        i, j, d = neighbor_list("ijd", atoms, 1.01 * atoms.cell.lengths().min())
        k = np.argmin(d)
        pair = sorted(states[atoms[n].symbol] for n in (i[k], j[k]))
        assert pair[0] < 0 < pair[1], name
    assert set(seen) == {*IONIC, "perovskite"}


@pytest.mark.parametrize(
    "name, volume_per_atom",  # experimental, Å³
    [
        ("fcc:Cu", 3.615**3 / 4),
        ("diamond:Si", 5.431**3 / 8),
        ("hcp:Mg", 3.209**2 * 3**0.5 / 2 * 5.211 / 2),
        ("rocksalt:NaCl", 5.64**3 / 8),
        ("rocksalt:MgO", 4.212**3 / 8),
        ("CsCl:CsCl", 4.123**3 / 2),
        ("zincblende:GaAs", 5.653**3 / 8),
        ("wurtzite:ZnO", 3.25**2 * 3**0.5 / 2 * 5.207 / 4),
        ("fluorite:CaF2", 5.463**3 / 12),
        ("antifluorite:Li2O", 4.61**3 / 12),
        ("rutile:TiO2", 4.594**2 * 2.959 / 6),
        ("corundum:Al2O3", 254.8 / 30),
        ("perovskite:SrTiO3", 3.905**3 / 5),
        ("B2:AlNi", 2.887**3 / 2),
        ("L1_2:Cu3Au", 3.75**3 / 4),
        ("L1_0:FePt", 3.86**2 * 3.71 / 4),
    ],
)
def test_cells_are_near_experiment(structures, name, volume_per_atom):
    """The estimated equilibrium volume is within 15 % of the measured one (lattice constant
    within 5 %), so the teacher labels near-equilibrium structures."""
    atoms, _ = structures[name]
    assert atoms.get_volume() / len(atoms) == pytest.approx(volume_per_atom, rel=0.15)


def test_max_atoms_elements_and_limits_are_respected():
    sampler = PrototypeSampler(elements=["Al", "O", "Cu", "Au"], max_atoms=8, max_per_prototype=1)
    frames = list(sampler.frames())
    kinds = {a.info["config_type"].rsplit(":", 2)[0] for a in frames}
    assert {s for a in frames for s in a.get_chemical_symbols()} == {"Al", "O", "Cu", "Au"}
    assert max(len(a) for a in frames) <= 8
    assert not any(k.startswith("corundum") for k in kinds)  # Al2O3: 10 atoms > 8
    for family in ("B2", "L1_2", "L1_0"):
        assert sum(k.startswith(f"{family}:") for k in kinds) == 1
    assert len(frames) == 3 * len(kinds)  # three volumes, one copy each


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="Xx"):
        PrototypeSampler(elements=["Cu", "Xx"])
    with pytest.raises(ValueError, match="spinel"):
        PrototypeSampler(prototypes=["spinel"])
    with pytest.raises(ValueError, match="volumes in"):
        PrototypeSampler(volumes=[0.1])
