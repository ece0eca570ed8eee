"""Relaxation: the library function with EMT, and `mlip relax` with a trained model."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT

from mlip.calculator import MLIPCalculator
from mlip.commands import relax as relax_command
from mlip.sim.io import read_structure
from mlip.sim.relax import relax

from .test_md import copper, trained_copper_model


def largest_force(atoms) -> float:
    return float(np.sqrt((atoms.get_forces() ** 2).sum(axis=1)).max())


def largest_stress_GPa(atoms) -> float:
    return float(np.abs(atoms.get_stress()).max() / 0.006241509074460763)


@pytest.mark.parametrize("optimizer", ["FIRE", "BFGS", "LBFGS"])
def test_relax_with_emt_reaches_the_thresholds(optimizer):
    """The same code path as `mlip relax`, with ASE's EMT as a cheap reference potential."""
    atoms = copper((2, 1, 1), strain=0.03, rattle=0.1, seed=2)
    steps = []
    result = relax(
        atoms, EMT(), fmax=0.02, smax_GPa=0.05, optimizer=optimizer, callback=steps.append
    )
    assert result.converged
    relaxed = result.atoms
    assert largest_force(relaxed) <= 0.02
    assert largest_stress_GPa(relaxed) <= 0.05
    assert [s.step for s in steps] == list(range(len(steps)))
    assert steps[-1].energy < steps[0].energy
    # EMT copper relaxes to an fcc cell of a = 3.59 Å (4 atoms in a^3)
    assert relaxed.get_volume() / len(relaxed) == pytest.approx(3.5898**3 / 4, rel=3e-3)
    assert not np.allclose(atoms.positions, relaxed.positions)  # the input is left alone


def test_fixed_cell_and_trajectory(tmp_path):
    atoms = copper((2, 1, 1), strain=0.03, rattle=0.1, seed=2)
    result = relax(atoms, EMT(), fmax=0.02, relax_cell=False, trajectory=tmp_path / "r.extxyz")
    assert result.converged and result.last.smax_GPa is None
    assert np.array_equal(result.atoms.cell.array, atoms.cell.array)
    frames = ase.io.read(tmp_path / "r.extxyz", ":")
    assert len(frames) == result.last.step + 1
    assert frames[-1].get_potential_energy() == pytest.approx(result.last.energy)
    assert "stress" in frames[-1].calc.results


def test_mlip_relax_reaches_fmax_and_stress(tmp_path, capsys):
    """`mlip relax` on a rattled, strained periodic cell: converged, and the file reloads."""
    model = trained_copper_model()
    source = tmp_path / "strained.cif"
    copper((2, 1, 1), strain=0.04, rattle=0.15, seed=3).write(source)
    output = tmp_path / "relaxed.cif"
    status = relax_command.main(
        [str(source), "--model", str(model), "-o", str(output), "--fmax", "0.02", "--smax", "0.05"]
        + ["--traj", str(tmp_path / "relax.extxyz")]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "converged in" in out and "stress/GPa" in out
    relaxed = read_structure(output)
    assert len(relaxed) == 8
    relaxed.calc = MLIPCalculator(model)
    # the CIF keeps fractional coordinates to 1e-5 or so, slightly perturbing the minimum
    assert largest_force(relaxed) < 0.03
    assert largest_stress_GPa(relaxed) < 0.06
    start = read_structure(source)
    start.calc = MLIPCalculator(model)
    assert largest_force(start) > 0.5 and largest_stress_GPa(start) > 1.0
    frames = ase.io.read(tmp_path / "relax.extxyz", ":")
    assert frames[-1].get_potential_energy() < frames[0].get_potential_energy()


def test_mlip_relax_several_files_and_no_convergence(tmp_path, capsys):
    model = trained_copper_model()
    names = []
    for seed in (4, 5):
        names.append(str(tmp_path / f"cu{seed}.extxyz"))
        copper((1, 1, 1), strain=0.03, rattle=0.1, seed=seed).write(names[-1])
    outdir = tmp_path / "out"
    status = relax_command.main([*names, "--model", str(model), "-o", str(outdir), "--steps", "2"])
    captured = capsys.readouterr()
    assert status == 1
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and all("not converged in 2 steps" in e for e in errors)
    assert sorted(p.name for p in outdir.iterdir()) == ["cu4_relaxed.extxyz", "cu5_relaxed.extxyz"]
