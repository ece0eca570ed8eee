"""Training-set statistics: E0s (least squares, isolated atoms, mixed), neighbour count, force RMS."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data.graph import neighbour_list
from mlip.data.readers import read_frames
from mlip.data.records import LabelKeys
from mlip.data.stats import (
    average_num_neighbors,
    compute_statistics,
    element_counts,
    fit_e0,
    force_rms,
    is_isolated_atom,
)

E0 = {1: -13.6, 8: -432.1, 14: -158.5}


def labelled(atoms: Atoms, energy: float, forces: np.ndarray | None = None) -> Atoms:
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def random_frames(n: int, seed: int = 0) -> list[Atoms]:
    """Frames of random H/O/Si composition whose energies are exactly sum of E0s."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        numbers = rng.choice(list(E0), size=rng.integers(2, 7))
        atoms = Atoms(numbers=numbers, positions=rng.normal(size=(len(numbers), 3)) * 3)
        frames.append(labelled(atoms, sum(E0[z] for z in numbers)))
    return frames


def test_least_squares_recovers_reference_energies():
    frames = random_frames(30)
    e0, source = fit_e0(frames, sorted(E0))
    assert source == "least_squares"
    np.testing.assert_allclose(e0, [E0[z] for z in sorted(E0)], atol=1e-8)


def test_isolated_atoms_fix_their_elements_and_least_squares_fits_the_rest():
    frames = random_frames(30, seed=1)
    # the isolated-atom energy of H is off on purpose: the fit of O and Si must absorb nothing of it
    e0, source = fit_e0(frames, [1, 8, 14], isolated={1: -13.6})
    assert source == "mixed"
    np.testing.assert_allclose(e0, [-13.6, E0[8], E0[14]], atol=1e-8)
    e0, source = fit_e0(frames, [1, 8, 14], isolated={1: 0.0, 8: 1.0, 14: 2.0})
    assert source == "isolated" and e0 == [0.0, 1.0, 2.0]


def test_element_counts():
    frames = [Atoms("H2O"), Atoms("SiO2")]
    np.testing.assert_array_equal(element_counts(frames, [1, 8, 14]), [[2, 1, 0], [0, 2, 1]])


def test_isolated_atom_detection():
    lone = Atoms("Si", positions=[[0, 0, 0]])
    assert is_isolated_atom(lone, 5.0)  # non-periodic single atom
    boxed = Atoms("Si", cell=[20, 20, 20], pbc=True)
    assert is_isolated_atom(boxed, 5.0)  # images beyond the cutoff
    tagged = Atoms("Si", cell=[3, 3, 3], pbc=True, info={"config_type": "isolated_atom"})
    assert is_isolated_atom(tagged, 5.0)
    primitive = bulk("Cu", "fcc", a=3.6)  # one atom, but a crystal
    assert not is_isolated_atom(primitive, 5.0)
    assert not is_isolated_atom(Atoms("H2", positions=[[0, 0, 0], [0, 0, 9]]), 5.0)


def test_neighbour_count_and_force_rms():
    si = bulk("Si", "diamond", a=5.43)
    i, _, _ = neighbour_list(si, 2.5)
    assert average_num_neighbors([len(i)], [len(si)]) == pytest.approx(4.0)
    forces = np.array([[3.0, 0.0, 0.0], [0.0, -3.0, 0.0]])
    frames = [labelled(si.copy(), -10.0, forces), labelled(Atoms("H"), -1.0)]
    assert force_rms(frames) == pytest.approx(np.sqrt(18 / 6))
    assert force_rms([labelled(Atoms("H"), -1.0)]) == 1.0


def test_statistics_of_gap18_use_its_isolated_atom(repo_root):
    keys = LabelKeys(energy="dft_energy", forces="dft_force", virial="dft_virial")
    frames = read_frames(repo_root / "data/si_gap18_tiny/Si_tiny.xyz", keys=keys)
    isolated = [a for a in frames if is_isolated_atom(a, 5.0)]
    rest = [a for a in frames if not is_isolated_atom(a, 5.0)]
    assert len(isolated) == 1
    edges = [len(neighbour_list(a, 5.0)[0]) for a in rest]
    stats = compute_statistics(rest, edges, isolated=isolated)
    assert stats.species == [14]
    assert stats.e0 == [pytest.approx(-158.54496821)]
    assert stats.e0_source == "isolated"
    assert stats.avg_num_neighbors > 4
    assert stats.as_dict()["e0_by_element"] == {"Si": pytest.approx(-158.54496821)}


@pytest.fixture
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent
