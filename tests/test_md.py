"""Molecular dynamics: NVE energy conservation with a trained model, outputs, seeds, ensembles.

``trained_copper_model`` (also used by the relaxation tests) fits a tiny Facet to EMT copper with a
plain torch loop, once per session.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

import mlip
from mlip.calculator import MLIPCalculator
from mlip.data import atoms_to_batch
from mlip.nn import Facet
from mlip.sim.md import run_md

from .conftest import default_dtype

COPPER_CUTOFF = 4.5


def copper(reps=(2, 1, 1), strain: float = 0.0, rattle: float = 0.0, seed: int = 0) -> Atoms:
    """Cubic fcc Cu (4 atoms per cell, a = 3.61 Å), optionally strained and rattled."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * reps
    if strain:
        deformation = np.eye(3) * (1 + rng.uniform(-strain, strain))
        deformation += 0.5 * strain * rng.normal(size=(3, 3))
        atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def emt_frames(count: int, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        atoms = copper((1, 1, 1), strain=0.04, rattle=rng.uniform(0.02, 0.2), seed=seed * 1000 + k)
        atoms.calc = EMT()
        labels = {
            "energy": atoms.get_potential_energy(),
            "forces": atoms.get_forces(),
            "stress": atoms.get_stress(),
        }
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    return frames


@functools.cache
def trained_copper_model() -> Path:
    """Model file of a tiny float64 Facet fitted to EMT copper (about 10 s on one busy core)."""
    frames = emt_frames(10, seed=0)
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        model = Facet(
            num_species=1,
            r_max=COPPER_CUTOFF,
            channels=[8, 4, 4],
            l_sh=2,
            num_layers=1,
            grid_channels=4,
            grid_hidden=8,
            grid_heads=2,
            avg_num_neighbors=40.0,
            gamma_init=0.5,
        )
        e0 = float(np.mean([a.get_potential_energy() / len(a) for a in frames]))
        potential = mlip.Potential(model, COPPER_CUTOFF, [29], e0=[e0], scale=0.3)
    batch = atoms_to_batch(frames, COPPER_CUTOFF, dtype=torch.float64, labels=True)
    optimizer = torch.optim.Adam(potential.parameters(), lr=0.02)
    steps = 150
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    potential.train()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            out = potential(batch, forces=True, stress=True)
            loss = (
                10 * ((out["energy"] - batch.energy) / 4).pow(2).mean()
                + (out["forces"] - batch.forces).pow(2).mean()
                + 1000 * (out["stress"] - batch.stress).pow(2).mean()
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(old_threads)
    folder = Path(tempfile.mkdtemp(prefix="mlip-test-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return mlip.save_model(potential.eval(), folder / "copper.pt", metadata={"data": "EMT Cu"})


def read_log(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text().splitlines()
    return lines[0].lstrip("# ").split(), np.loadtxt(lines[1:], ndmin=2)


def test_trained_model_is_close_to_emt():
    calc = MLIPCalculator(trained_copper_model())
    error = size = 0.0
    for atoms in emt_frames(4, seed=1):
        ref = atoms.get_forces()
        atoms.calc = calc
        error += np.abs(atoms.get_forces() - ref).sum()
        size += np.abs(ref).sum()
    assert error / size < 0.3  # a tiny model on 10 frames: about 20 % of the EMT forces


def test_nve_conserves_energy(tmp_path):
    """1000 steps of 1 fs at 300 K in float64: drift and fluctuations of the total energy below
    1 meV/atom."""
    atoms = copper((2, 1, 1))
    calc = MLIPCalculator(trained_copper_model(), dtype="float64")
    result = run_md(
        atoms,
        calc,
        ensemble="nve",
        temperature_K=300.0,
        timestep_fs=1.0,
        steps=1000,
        seed=1,
        log=tmp_path / "md.log",
        interval=1,
    )
    columns, log = read_log(tmp_path / "md.log")
    total = log[:, columns.index("Etot_eV")] / len(atoms)
    assert log.shape[0] == 1001
    assert log[:, columns.index("T_K")].mean() > 50  # it moved
    drift = abs(total[-100:].mean() - total[:100].mean())
    fluctuation = total.std()
    assert drift < 1e-3, f"drift {drift * 1e3:.4f} meV/atom"
    assert fluctuation < 1e-3, f"fluctuation {fluctuation * 1e3:.4f} meV/atom"
    assert calc.neighbour_list_builds < 100
    assert result.steps_per_second > 0


def test_outputs_and_seed(tmp_path):
    model = trained_copper_model()
    atoms = copper((1, 1, 1), rattle=0.05)
    finals = []
    for k, seed in enumerate((3, 3, 4)):
        result = run_md(
            atoms,
            MLIPCalculator(model),
            ensemble="nvt",
            temperature_K=500.0,
            steps=12,
            seed=seed,
            trajectory=tmp_path / f"t{k}.extxyz",
            log=tmp_path / f"t{k}.log",
            interval=5,
        )
        finals.append(result.atoms.positions)
    assert np.array_equal(finals[0], finals[1])
    assert not np.allclose(finals[0], finals[2])
    frames = ase.io.read(tmp_path / "t0.extxyz", ":")
    assert len(frames) == 4  # steps 0, 5, 10 and the last, 12
    assert frames[-1].get_forces().shape == (4, 3)
    assert np.isfinite(frames[-1].get_potential_energy())
    assert np.allclose(frames[-1].positions, finals[0])
    columns, log = read_log(tmp_path / "t0.log")
    for name in ("T_K", "Etot_eV", "pressure_GPa", "steps_per_s", "atom_steps_per_s"):
        assert name in columns
    assert log[:, 0].tolist() == [0, 5, 10, 12]
    assert (log[1:, columns.index("steps_per_s")] > 0).all()


@pytest.mark.parametrize(
    "ensemble, options",
    [("nvt", {"thermostat": "bussi"}), ("npt", {"pressure_GPa": 2.0, "tau_p_fs": 50.0})],
)
def test_other_ensembles_run(ensemble, options):
    atoms = copper((1, 1, 1), rattle=0.05)
    result = run_md(
        atoms, MLIPCalculator(trained_copper_model()), ensemble, steps=10, seed=0, **options
    )
    assert np.isfinite(result.atoms.get_potential_energy())
    if ensemble == "npt":
        assert result.atoms.get_volume() != pytest.approx(atoms.get_volume(), rel=1e-9)


def test_nve_with_emt_on_the_same_code_path(tmp_path):
    """The integrator setup, seeding and logging also work with any ASE calculator."""
    atoms = copper((2, 2, 2))
    run_md(
        atoms, EMT(), "nve", temperature_K=300.0, steps=200, log=tmp_path / "emt.log", interval=1
    )
    columns, log = read_log(tmp_path / "emt.log")
    total = log[:, columns.index("Etot_eV")] / len(atoms)
    assert np.ptp(total) < 1e-3
