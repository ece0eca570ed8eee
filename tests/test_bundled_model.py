"""The bundled models as a user meets them. The universal default (distilled from SevenNet-0):
its file (size, dtype, elements, teacher) and relaxations of rattled, strained rock-salt and
perovskite cells back to the perfect crystal. The Si model (``si``): phonons of the relaxed
crystal, and `mlip relax --model si` on rattled, strained supercells with the default optimiser
and step limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.phonons import Phonons

import mlip
from mlip.calculator import MLIPCalculator
from mlip.commands import relax as relax_command
from mlip.models import model_file
from mlip.sim.io import read_structure
from mlip.sim.relax import relax

# DFT-PBE phonon frequencies of diamond Si, THz: VASP (PAW_PBE Si, 300 eV) forces of phonopy's
# example/Si (a 2x2x2 supercell of the primitive cell at a = 5.466 Å), force constants and
# frequencies by phonopy 4.10. Gamma, X and L are commensurate with that supercell, so these are
# exact finite-displacement values. Modes from low to high.
PBE_THZ = {
    "Gamma": [15.111] * 3,  # LO = TO
    "X": [4.389, 4.389, 12.055, 12.055, 13.426, 13.426],  # TA x2, LA = LO, TO x2
    "L": [3.333, 3.333, 11.142, 12.023, 14.334, 14.334],  # TA x2, LA, LO, TO x2
}
THZ_PER_EV = 1 / (units._hplanck / units._e) / 1e12  # 241.8 THz per eV


UNIVERSAL = pytest.mark.skipif(
    not model_file("si").with_name("universal.pt").is_file(),
    reason="the universal model is not bundled yet (issue 20: it needs more training)",
)


@UNIVERSAL
def test_universal_model_file_knows_the_periodic_table_and_names_its_teacher():
    potential = mlip.load_model("universal")
    assert len(potential.elements) >= 80
    assert {"H", "Li", "C", "O", "Na", "Si", "Ti", "Fe", "Cu", "Sr", "Ba", "Pt", "Bi"} <= set(
        potential.elements
    )
    assert potential.e0.dtype == torch.float32
    assert model_file("universal").stat().st_size <= 5_000_000
    teacher = potential.metadata["distill"]["teacher"]
    assert teacher["name"].startswith("SevenNet-0") and teacher["licence"].startswith("MIT")


def perovskite(a: float) -> Atoms:
    sites = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Atoms("SrTiO3", scaled_positions=sites, cell=[a, a, a], pbc=True)


@UNIVERSAL
@pytest.mark.parametrize(
    "perfect, a_exp",
    [
        (bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2), 5.64),
        (perovskite(3.905) * (2, 2, 2), 3.905),
    ],
    ids=["NaCl rock salt, 64 atoms", "SrTiO3 perovskite, 40 atoms"],
)
def test_universal_model_relaxes_rattled_strained_cells_back_to_the_crystal(perfect, a_exp):
    """The universal model with `mlip relax`'s defaults: converged, still cubic,
    the lattice parameter within 4 % of experiment (the PBE teacher's own is ~1 % large), and
    every atom back on its site (the rattle and strain removed)."""
    atoms = perfect.copy()
    atoms.set_cell(
        atoms.cell.array @ (np.eye(3) + 0.02 * np.eye(3) + 0.3 * SHEAR), scale_atoms=True
    )
    atoms.rattle(0.05, seed=3)
    result = relax(atoms, MLIPCalculator("universal"))
    assert result.converged
    cell = result.atoms.cell.cellpar()
    a = cell[:3].mean() / 2  # the 2 x 2 x 2 supercell
    assert np.ptp(cell[:3]) < 0.01 * a and np.abs(cell[3:] - 90).max() < 0.5, cell
    assert abs(a / a_exp - 1) < 0.04, a
    ideal = perfect.get_scaled_positions()
    off = result.atoms.get_scaled_positions() - ideal
    off -= np.round(off)
    off -= off.mean(axis=0)  # a rigid translation is free
    assert np.linalg.norm(off @ result.atoms.cell.array, axis=1).max() < 0.05


@pytest.fixture(scope="module")
def calculator() -> MLIPCalculator:
    return MLIPCalculator(model_file("si"))


def test_phonons_of_relaxed_silicon_match_pbe(tmp_path):
    """Finite-displacement force constants (ASE's Phonons, 2x2x2 supercell of the primitive cell,
    on which Gamma, X and L are commensurate) of the model's own relaxed diamond Si, in float64
    (float32 rounding of the forces, 0.01 Å displacements, moves the acoustic modes by ~0.05 THz)."""
    calculator = MLIPCalculator(model_file("si"), dtype="float64")
    result = relax(bulk("Si", "diamond", a=5.45), calculator, fmax=1e-4, smax_GPa=1e-4)
    assert result.converged
    phonons = Phonons(
        result.atoms, calculator, supercell=(2, 2, 2), delta=0.01, name=str(tmp_path / "ph")
    )
    phonons.run()
    phonons.read(acoustic=True)
    # Gamma, X, L in units of the primitive reciprocal lattice vectors
    special = bulk("Si", "diamond", a=5.45).cell.bandpath().special_points
    points = [special["G"], special["X"], special["L"]]
    thz = np.sort(phonons.band_structure(points), axis=1) * THZ_PER_EV
    assert np.abs(thz[0, :3]).max() < 0.05  # acoustic modes at Gamma
    for row, name in zip(thz, ("Gamma", "X", "L"), strict=True):
        ours = row[-len(PBE_THZ[name]) :]
        relative = np.abs(ours / np.array(PBE_THZ[name]) - 1)
        assert relative.max() < 0.2, f"{name}: {ours.round(2)} THz against PBE {PBE_THZ[name]}"


def strained_supercell(rattle: float, strain: np.ndarray, seed: int) -> Atoms:
    atoms = bulk("Si", "diamond", a=5.45, cubic=True) * (2, 2, 2)  # 64 atoms
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


SHEAR = np.array([[0.0, 0.015, 0.0], [0.015, 0.0, -0.01], [0.0, -0.01, 0.0]])


@pytest.mark.parametrize(
    "rattle, strain",
    [(0.08, 0.03 * np.eye(3)), (0.1, -0.03 * np.eye(3) + SHEAR), (0.05, 2 * SHEAR)],
    ids=["rattle 0.08 Å, +3%", "rattle 0.1 Å, -3% and shear", "rattle 0.05 Å, 3% shear"],
)
def test_mlip_relax_converges_on_rattled_strained_supercells(rattle, strain, tmp_path, capsys):
    """`mlip relax` with its defaults (FIRE, 500 steps) but for fmax 0.02 eV/Å: converged, to the
    thresholds it reports."""
    source = tmp_path / "si64.extxyz"
    strained_supercell(rattle, strain, seed=1).write(source)
    output = tmp_path / "relaxed.extxyz"
    args = [str(source), "--model", "si", "-o", str(output), "--fmax", "0.02", "-q"]
    status = relax_command.main(args)
    out = capsys.readouterr().out
    assert status == 0, out
    relaxed = read_structure(output)
    relaxed.calc = MLIPCalculator(model_file("si"))
    assert np.linalg.norm(relaxed.get_forces(), axis=1).max() <= 0.02
    assert np.abs(relaxed.get_stress()).max() / units.GPa <= 0.1
