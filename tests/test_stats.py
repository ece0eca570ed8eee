"""Training-set statistics: E0s (least squares, isolated atoms, mixed), neighbour count, force RMS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data.graph import atoms_to_graph
from mlip.data.readers import read_frames
from mlip.data.records import LabelKeys
from mlip.data.stats import DatasetStatistics, StatisticsPass, is_isolated
from mlip.errors import DataError

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


def graph(atoms: Atoms, cutoff: float = 5.0):
    return atoms_to_graph(atoms, cutoff, torch.float64, labels=True)


def statistics(frames: list[Atoms], cutoff: float = 5.0, **kwargs) -> DatasetStatistics:
    accumulator = StatisticsPass()
    for k, atoms in enumerate(frames):
        accumulator.add(graph(atoms, cutoff), f"frame {k}")
    return accumulator.result(**kwargs)


def test_least_squares_recovers_reference_energies():
    stats = statistics(random_frames(30))
    assert stats.e0_source == "least_squares" and stats.species == sorted(E0)
    np.testing.assert_allclose(stats.e0, [E0[z] for z in sorted(E0)], atol=1e-8)
    assert stats.e0_residual_rms == pytest.approx(0.0, abs=1e-6)


def test_isolated_atoms_fix_their_elements_and_least_squares_fits_the_rest():
    frames = random_frames(30, seed=1)
    # the isolated-atom energy of H is off on purpose: the fit of O and Si must absorb nothing of it
    stats = statistics(frames, species=[1, 8, 14], isolated={1: -13.6})
    assert stats.e0_source == "mixed"
    np.testing.assert_allclose(stats.e0, [-13.6, E0[8], E0[14]], atol=1e-8)
    stats = statistics(frames, species=[1, 8, 14], isolated={1: 0.0, 8: 1.0, 14: 2.0})
    assert stats.e0_source == "isolated" and stats.e0 == [0.0, 1.0, 2.0]


def test_element_counts():
    assert statistics([Atoms("H2O"), Atoms("SiO2")]).element_counts == {1: 2, 8: 3, 14: 1}


def test_isolated_atom_detection():
    lone = Atoms("Si", positions=[[0, 0, 0]])
    assert is_isolated(graph(lone))  # non-periodic single atom
    boxed = Atoms("Si", cell=[20, 20, 20], pbc=True)
    assert is_isolated(graph(boxed))  # images beyond the cutoff
    # a tag does not make a crystal an isolated atom: its images are within the cutoff, so the
    # model sees neighbours, and its energy is not E0
    tagged = Atoms("Si", cell=[3, 3, 3], pbc=True, info={"config_type": "isolated_atom"})
    assert not is_isolated(graph(tagged))
    primitive = bulk("Cu", "fcc", a=3.6)  # one atom, but a crystal
    assert not is_isolated(graph(primitive))
    assert not is_isolated(graph(Atoms("H2", positions=[[0, 0, 0], [0, 0, 9]])))


def test_neighbour_count_and_force_rms():
    si = bulk("Si", "diamond", a=5.43)
    forces = np.array([[3.0, 0.0, 0.0], [0.0, -3.0, 0.0]])
    frames = [labelled(si.copy(), -10.0, forces), labelled(Atoms("H"), -1.0)]
    stats = statistics(frames, cutoff=2.5)
    assert stats.avg_num_neighbors == pytest.approx(4.0)  # the isolated H does not count
    assert stats.scale == pytest.approx(np.sqrt(18 / 6))
    assert statistics([labelled(Atoms("H"), -1.0)]).scale == 1.0


def test_two_isolated_atoms_of_one_element_must_agree():
    frames = [labelled(Atoms("H"), -13.6), labelled(Atoms("H"), -13.0)]
    with pytest.raises(DataError, match="frame 1: isolated H atom with energy -13.0 eV"):
        statistics(frames)


def test_statistics_of_gap18_use_its_isolated_atom(repo_root):
    keys = LabelKeys(energy="dft_energy", forces="dft_force", virial="dft_virial")
    frames = read_frames(repo_root / "data/si_gap18_tiny/Si_tiny.xyz", keys=keys)
    stats = statistics(frames)
    assert stats.num_isolated == 1
    assert stats.species == [14]
    assert stats.e0 == [pytest.approx(-158.54496821)]
    assert stats.e0_source == "isolated"
    assert stats.avg_num_neighbors > 4
    assert stats.as_dict()["e0_by_element"] == {"Si": pytest.approx(-158.54496821)}


@pytest.fixture
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent
