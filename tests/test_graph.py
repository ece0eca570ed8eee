"""Neighbour lists and graph batches against ASE's reference neighbour list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlip import keys
from mlip.data import atoms_to_batch, atoms_to_graph, neighbour_list
from mlip.errors import AtomsTooCloseError, GeometryError

from .conftest import rattled_silicon


def _pairs(i, j, shifts) -> set:
    return {(int(a), int(b), *map(int, s)) for a, b, s in zip(i, j, shifts, strict=True)}


@pytest.mark.parametrize(
    "atoms, cutoff",
    [
        (rattled_silicon(), 4.0),
        (bulk("Li", "bcc", a=3.0), 6.0),  # 1-atom cell with edges much shorter than the cutoff
        (molecule("CH3CH2OH"), 3.0),
    ],
)
def test_matches_ase_neighbour_list(atoms, cutoff):
    i, j, shifts = neighbour_list(atoms, cutoff)
    ref = ase_neighbor_list("ijS", atoms, cutoff)
    assert len(i) == len(ref[0]) > 0
    assert _pairs(i, j, shifts) == _pairs(*ref)


def test_mixed_pbc_zero_cell_vector():
    """A slab periodic in x and y with no cell vector along z gets no z images."""
    atoms = rattled_silicon()
    reference = atoms.copy()
    reference.pbc = [True, True, False]
    atoms.pbc = [True, True, False]
    atoms.cell[2] = [0.0, 0.0, 0.0]
    i, j, shifts = neighbour_list(atoms, 4.0)
    assert np.all(shifts[:, 2] == 0)
    assert _pairs(i, j, shifts) == _pairs(*ase_neighbor_list("ijS", reference, 4.0))


def test_edge_vectors_follow_the_contract():
    atoms = rattled_silicon()
    graph = atoms_to_graph(atoms, 4.0, dtype=torch.float64)
    j, i = graph.edge_index
    vec = graph.pos[j] - graph.pos[i] + graph.shifts @ graph.cell[0]
    d = ase_neighbor_list("d", atoms, 4.0)
    assert torch.allclose(vec.norm(dim=1).sort().values, torch.tensor(np.sort(d)), atol=1e-12)
    assert vec.norm(dim=1).max() <= 4.0


def test_batch_fields_and_labels():
    from ase.calculators.singlepoint import SinglePointCalculator

    si = rattled_silicon()
    si.calc = SinglePointCalculator(si, energy=-40.0, forces=np.ones((8, 3)), stress=np.arange(6.0))
    lone = Atoms("O", positions=[[0, 0, 0]])
    batch = atoms_to_batch([si, lone], 4.0, labels=True)
    assert batch[keys.CELL].shape == (2, 3, 3)
    assert batch[keys.PBC].tolist() == [[True] * 3, [False] * 3]
    assert batch[keys.BATCH].tolist() == [0] * 8 + [1]
    assert batch.has_stress.tolist() == [True, False]
    assert batch.has_energy.tolist() == [True, False]
    assert float(batch[keys.STRESS][0, 1, 2]) == 3.0  # Voigt yz
    assert float(batch[keys.STRESS][0, 0, 1]) == 5.0  # Voigt xy
    assert int(batch[keys.EDGE_INDEX].max()) < 8  # the lone atom has no edges


@pytest.mark.parametrize(
    ("cell", "pbc", "message"),
    [
        (np.zeros((3, 3)), True, "periodic along a but its cell vector is zero"),
        ([[3, 0, 0], [6, 0, 0], [0, 0, 3]], True, "periodic cell vectors are linearly dependent"),
        ([[3, 0, 0], [0, 3, 0], [3, 3, 0]], True, "periodic cell vectors are linearly dependent"),
        ([[3, 0, 0], [-3, 0, 0], [0, 0, 0]], [True, True, False], "linearly dependent"),
        ([[3, 0, 0], [0, np.nan, 0], [0, 0, 3]], True, "the cell is not finite"),
    ],
)
def test_a_cell_that_makes_no_lattice_is_one_clear_error(cell, pbc, message):
    atoms = Atoms("Si2", positions=[[0, 0, 0], [1, 1, 1]], cell=cell, pbc=pbc)
    with pytest.raises(GeometryError, match=message):
        neighbour_list(atoms, 4.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_positions_are_one_clear_error(bad):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.positions[3, 1] = bad
    with pytest.raises(GeometryError, match="position of atom 3 is not finite"):
        atoms_to_graph(atoms, 4.0)


def test_atoms_closer_than_the_minimum_distance_are_refused_naming_them():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.positions[5] = atoms.positions[2] + [0.1, 0.0, 0.0]
    with pytest.raises(AtomsTooCloseError, match=r"atoms 2 \(Si\) and 5 \(Si\) are 0\.100 Å"):
        atoms_to_graph(atoms, 4.0, min_distance=0.5)
    assert atoms_to_graph(atoms, 4.0).num_nodes == 8  # 0 (the default here) checks nothing


@pytest.mark.parametrize(
    ("pbc", "offset"),
    [(True, 1e6), (True, -3.7e5), ([True, True, False], 2.5e5), (False, 1e6)],
)
def test_graph_positions_sit_next_to_the_origin_with_the_same_pair_vectors(pbc, offset):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.pbc = pbc
    reference = atoms_to_graph(atoms, 4.0, dtype=torch.float64)
    atoms.positions += offset * np.array([1.0, -0.6, 0.3])
    far = atoms_to_graph(atoms, 4.0, dtype=torch.float64)

    def edges(g):  # [E, 5]: centre, neighbour, pair vector, sorted
        j, i = g.edge_index
        r = g.pos[j] - g.pos[i] + g.shifts @ g.cell[0]
        rows = np.column_stack([i.numpy(), j.numpy(), r.numpy()])
        return rows[np.lexsort(np.round(rows, 6).T[::-1])]

    np.testing.assert_allclose(edges(far), edges(reference), atol=1e-9)
    assert float(far.pos.abs().max()) < 12.0  # inside the cell (periodic) or centred
