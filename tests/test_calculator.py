"""MLIPCalculator against the Potential it wraps; Verlet-list reuse; input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.verlet import VelocityVerlet
from ase.stress import voigt_6_to_full_3x3_stress

import mlip
from mlip.calculator import MLIPCalculator
from mlip.data import atoms_to_batch
from mlip.errors import AtomsTooCloseError, UnknownElementError
from mlip.sim.md import thermalize

from .conftest import CUTOFF, ethanol, rattled_silicon


def reference(potential: mlip.Potential, atoms: Atoms) -> dict[str, np.ndarray]:
    """The potential's own predictions, through a fresh neighbour list."""
    batch = atoms_to_batch([atoms], CUTOFF, dtype=torch.float64)
    out = potential(batch, forces=True, stress=bool(atoms.pbc.all()), create_graph=False)
    return {k: v.detach().numpy() for k, v in out.items()}


@pytest.mark.parametrize("structure", [rattled_silicon, ethanol])
def test_results_equal_the_potential(potential, structure):
    atoms = structure()
    atoms.calc = MLIPCalculator(potential)
    ref = reference(potential, atoms)
    assert abs(atoms.get_potential_energy() - ref["energy"][0]) < 1e-10
    assert atoms.get_potential_energy() == atoms.calc.results["free_energy"]
    assert np.abs(atoms.get_forces() - ref["forces"]).max() < 1e-10
    assert np.abs(atoms.get_potential_energies() - ref["node_energy"]).max() < 1e-10
    if atoms.pbc.all():
        assert np.abs(atoms.get_stress(voigt=False) - ref["stress"][0]).max() < 1e-10
        assert np.abs(ref["stress"]).max() > 1e-4  # not trivially zero
    else:
        with pytest.raises(PropertyNotImplementedError, match="periodic"):
            atoms.get_stress()


def test_stress_is_the_strain_derivative_of_the_energy(potential):
    atoms = rattled_silicon(seed=5)
    calc = MLIPCalculator(potential, skin=0.0)
    atoms.calc = calc
    stress = atoms.get_stress(voigt=False)
    cell, volume, h = atoms.cell.array.copy(), atoms.get_volume(), 1e-5
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h / 2
                strain[b, a] += sign * h / 2
                strained = atoms.copy()
                strained.set_cell(cell @ strain, scale_atoms=True)
                strained.calc = calc
                energies.append(strained.get_potential_energy())
            fd[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    assert np.abs(fd).max() > 1e-4  # not trivially zero
    assert np.abs(stress - fd).max() < 1e-6 * np.abs(fd).max()


def test_reused_neighbour_list_equals_a_fresh_one_along_md(potential):
    atoms = rattled_silicon(seed=1)
    calc = MLIPCalculator(potential, skin=0.3)
    fresh = MLIPCalculator(potential, skin=0.0)
    atoms.calc = calc
    thermalize(atoms, 3000.0, np.random.default_rng(0))  # hot, so that the list goes stale
    dynamics = VelocityVerlet(atoms, 2.0 * units.fs)
    steps = 25
    for _ in range(steps):
        dynamics.run(1)
        probe = atoms.copy()
        probe.calc = fresh
        assert abs(atoms.get_potential_energy() - probe.get_potential_energy()) < 1e-10
        assert np.abs(atoms.get_forces() - probe.get_forces()).max() < 1e-10
        assert np.abs(atoms.get_stress() - probe.get_stress()).max() < 1e-10
    assert 1 < calc.neighbour_list_builds < steps // 2
    assert fresh.neighbour_list_builds == steps


def test_reused_neighbour_list_under_cell_changes(potential):
    """Small strains reuse the list, large ones rebuild it; results always match a fresh list."""
    atoms = rattled_silicon(seed=2)
    calc = MLIPCalculator(potential, skin=0.5)
    fresh = MLIPCalculator(potential, skin=0.0)
    cell = atoms.cell.array.copy()
    rng = np.random.default_rng(0)
    for scale in [0.0, 0.01, 0.02, 0.15, 0.16, -0.1]:  # rebuilds at 0.15 and -0.1
        strained = atoms.copy()
        strain = np.eye(3) * (1 + scale) + 0.002 * rng.normal(size=(3, 3))
        strained.set_cell(cell @ strain, scale_atoms=True)
        strained.positions += 0.02 * rng.normal(size=strained.positions.shape)
        strained.calc = calc
        probe = strained.copy()
        probe.calc = fresh
        assert abs(strained.get_potential_energy() - probe.get_potential_energy()) < 1e-10
        assert np.abs(strained.get_forces() - probe.get_forces()).max() < 1e-10
        assert np.abs(strained.get_stress() - probe.get_stress()).max() < 1e-10
    assert calc.neighbour_list_builds == 3


def test_float32_and_model_file(potential, tmp_path):
    path = mlip.save_model(potential, tmp_path / "model.pt")
    atoms = rattled_silicon()
    ref = reference(potential, atoms)
    atoms.calc = MLIPCalculator(str(path), dtype="float32")
    assert atoms.calc.dtype == torch.float32
    energy = atoms.get_potential_energy()
    assert abs(energy - ref["energy"][0]) < 1e-5 * abs(ref["energy"][0])
    assert np.abs(atoms.get_forces() - ref["forces"]).max() < 1e-4
    full = voigt_6_to_full_3x3_stress(atoms.get_stress())
    assert np.abs(full - ref["stress"][0]).max() < 1e-5
    assert mlip.MLIPCalculator is MLIPCalculator


def test_unknown_element_is_named(potential):
    atoms = bulk("Cu", "fcc", a=3.6) * 2
    atoms.calc = MLIPCalculator(potential)
    with pytest.raises(UnknownElementError, match=r"Cu .*knows H, C, O, Si"):
        atoms.get_potential_energy()


def test_atoms_too_close(potential):
    atoms = rattled_silicon()
    atoms.positions[3] = atoms.positions[5] + [0.2, 0.1, 0.0]
    atoms.calc = MLIPCalculator(potential)
    with pytest.raises(AtomsTooCloseError, match=r"atoms 3 \(Si\) and 5 \(Si\) are 0\.224 Å apart"):
        atoms.get_potential_energy()
    atoms.calc = MLIPCalculator(potential, min_distance=0.1)
    assert np.isfinite(atoms.get_potential_energy())
    atoms.positions[3] = atoms.positions[5]
    atoms.calc = MLIPCalculator(potential, min_distance=0.1)
    with pytest.raises(AtomsTooCloseError, match="0.000 Å apart"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("offset", [1e3, 1e6])
@pytest.mark.parametrize("pbc", [True, False])
def test_float32_results_do_not_depend_on_where_the_structure_sits(offset, pbc):
    """The bundled model in float32 on perfect diamond Si (periodic) or a cluster cut from it:
    translated far from the origin, the energy and forces are those at the origin."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.pbc = pbc
    atoms.calc = MLIPCalculator(dtype="float32")
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.positions += offset * np.array([1.0, 0.7, -0.4])
    assert abs(atoms.get_potential_energy() - energy) < 1e-4  # eV; was 0.05 at 1e6 Å
    assert np.abs(atoms.get_forces() - forces).max() < 1e-4  # eV/Å; was 5e-4 at 1e3, 0.5 at 1e6
