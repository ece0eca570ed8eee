"""Batched relaxation and MD through torch-sim (mlip.sim.batch): the same results as the ASE path,
in-flight batching, the step limit, errors that name the structure, and `mlip relax` / `mlip md`
with several structures."""

from __future__ import annotations

import importlib.util
import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mlip.calculator import MLIPCalculator
from mlip.commands import md as md_command
from mlip.commands import relax as relax_command
from mlip.errors import AtomsTooCloseError
from mlip.sim.md import run_md
from mlip.sim.relax import relax

with warnings.catch_warnings():  # torch-sim 0.3.0 uses torch.jit.script, deprecated in torch 2.13
    warnings.simplefilter("ignore", DeprecationWarning)
    pytest.importorskip("torch_sim")  # in the `test` extra (Python >= 3.11)

from mlip.sim.batch import MLIPTorchSimModel, md_batch, relax_batch  # noqa: E402


def silicon_cells(count: int, seed: int = 0, strain: float = 0.02) -> list[Atoms]:
    """Strained, rattled 8-atom diamond Si cells (the bundled si model's element)."""
    rng = np.random.default_rng(seed)
    cells = []
    for k in range(count):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(0, strain, (3, 3))), True)
        atoms.rattle(0.05, seed=seed * 100 + k)
        cells.append(atoms)
    return cells


def silicon_cluster() -> Atoms:
    """Five Si atoms, not periodic: relaxed with a fixed (absent) cell."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)[:5]
    atoms.pbc, atoms.cell = False, None
    atoms.rattle(0.05, seed=7)
    return atoms


@pytest.fixture(scope="module", params=["float32", "float64"])
def dtype(request) -> str:
    return request.param


def assert_same_relaxation(batched, alone, energy_tol: float, position_tol: float):
    assert batched.converged == alone.converged
    n = len(alone.atoms)
    assert batched.last.energy / n == pytest.approx(alone.last.energy / n, abs=energy_tol)
    assert np.abs(batched.atoms.positions - alone.atoms.positions).max() < position_tol
    assert np.abs(batched.atoms.cell.array - alone.atoms.cell.array).max() < position_tol
    assert batched.atoms.get_potential_energy() == pytest.approx(batched.last.energy)
    assert batched.initial_volume == pytest.approx(alone.initial_volume)


def test_batched_relaxation_gives_the_ase_loops_structures(dtype):
    structures = [*silicon_cells(2, strain=0.01), silicon_cluster()]
    model = MLIPTorchSimModel("si", device="cpu", dtype=dtype)
    criteria = dict(fmax=0.1, smax_GPa=0.2, steps=200)
    batched = relax_batch(structures, model, **criteria)
    calc = MLIPCalculator(model.potential)
    for atoms, result in zip(structures, batched, strict=True):
        alone = relax(atoms, calc, **criteria)
        assert result.converged and result.last.fmax <= 0.1
        # one algorithm (ASE's FIRE and Frechet cell filter): the same path step for step
        assert abs(result.last.step - alone.last.step) <= 2
        assert_same_relaxation(result, alone, energy_tol=2e-5, position_tol=2e-3)
        assert not np.allclose(result.atoms.positions, atoms.positions)  # the input is left alone
    cells, cluster = batched[:2], batched[2]
    assert all(r.last.smax_GPa <= 0.2 for r in cells)
    assert all(abs(r.atoms.get_volume() / r.initial_volume - 1) > 0.01 for r in cells)
    assert cluster.last.smax_GPa is None and cluster.initial_volume == 0


def test_in_flight_batches_fixed_cells_and_the_step_limit(tmp_path):
    structures = silicon_cells(4, seed=1)
    model = MLIPTorchSimModel("si", device="cpu")
    calc = MLIPCalculator(model.potential)
    # 16 atoms: two structures at a time, the others join as those finish
    fixed = relax_batch(structures, model, relax_cell=False, max_atoms=16, steps=300)
    for atoms, result in zip(structures, fixed, strict=True):
        alone = relax(atoms, calc, relax_cell=False, steps=300)
        assert np.array_equal(result.atoms.cell.array, atoms.cell.array)
        assert result.last.smax_GPa is None
        assert_same_relaxation(result, alone, energy_tol=1e-4, position_tol=2e-2)
    trajectories = [tmp_path / f"{k}.extxyz" for k in range(4)]
    limited = relax_batch(structures, model, steps=3, max_atoms=16, trajectories=trajectories)
    assert [(r.converged, r.last.step) for r in limited] == [(False, 3)] * 4
    frames = ase.io.read(trajectories[2], ":")
    assert len(frames) == 4  # steps 0 to 3
    assert frames[-1].get_potential_energy() == pytest.approx(limited[2].last.energy)
    assert np.allclose(frames[0].positions, structures[2].positions, atol=1e-5)
    assert "stress" in frames[-1].calc.results


def test_a_structure_the_model_cannot_take_is_named():
    crowded = silicon_cells(1)[0]
    crowded.positions[1] = crowded.positions[0] + [0.2, 0.0, 0.0]
    model = MLIPTorchSimModel("si", device="cpu")
    with pytest.raises(AtomsTooCloseError, match=r"^b\.cif: atoms 0 \(Si\) and 1 \(Si\)"):
        relax_batch([*silicon_cells(1), crowded], model, names=["a.cif", "b.cif"])
    slab = silicon_cells(1)[0]
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match="structure 1 cannot be batched"):
        relax_batch([*silicon_cells(1), slab], model)


def test_batched_md_starts_as_run_md_and_conserves_energy(tmp_path):
    cell = silicon_cells(1)[0]
    model = MLIPTorchSimModel("si", device="cpu", dtype="float64")
    logs = [tmp_path / f"r{k}.log" for k in range(2)]
    trajectories = [tmp_path / f"r{k}.extxyz" for k in range(2)]
    results = md_batch(
        [cell, cell],
        model,
        ensemble="nve",
        temperature_K=300,
        steps=20,
        seeds=[3, 4],
        logs=logs,
        trajectories=trajectories,
        interval=5,
    )
    run_md(
        cell,
        MLIPCalculator(model.potential),
        ensemble="nve",
        temperature_K=300,
        steps=5,
        seed=3,
        trajectory=tmp_path / "alone.extxyz",
        interval=5,
    )
    first, reference = (
        ase.io.read(trajectories[0], ":"),
        ase.io.read(tmp_path / "alone.extxyz", ":"),
    )
    assert len(first) == 5  # steps 0, 5, ..., 20
    assert np.allclose(first[0].get_momenta(), reference[0].get_momenta(), atol=1e-12)
    # the same velocity Verlet step (torch-sim wraps positions into the cell)
    assert (
        np.abs(first[1].get_scaled_positions() - reference[1].get_scaled_positions()).max() < 1e-8
    )
    assert first[1].get_potential_energy() == pytest.approx(reference[1].get_potential_energy())
    other = ase.io.read(trajectories[1], "0")
    assert not np.allclose(other.get_momenta(), first[0].get_momenta())  # another seed
    for log, result in zip(logs, results, strict=True):
        rows = np.loadtxt(log.read_text().splitlines()[1:])
        assert rows.shape == (5, 10)
        total = rows[:, 4]
        assert np.ptp(total) < 2e-3 * len(cell)  # NVE: Etot drifts little
        assert np.ptp(rows[:, 2]) > 10 * np.ptp(total)  # while Epot moves
        assert result.temperature_K == pytest.approx(rows[-1, 5], abs=0.01)


def test_batched_langevin_is_seeded_and_leaves_torchs_generator_alone():
    cell = silicon_cells(1)[0]
    model = MLIPTorchSimModel("si", device="cpu")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    runs = [
        md_batch([cell, cell], model, ensemble="nvt", steps=10, seeds=[1, 2], friction_per_fs=0.05)
        for _ in range(2)
    ]
    assert torch.equal(torch.get_rng_state(), before)
    again = [r.atoms.positions for r in runs[1]]
    assert np.array_equal(runs[0][0].atoms.positions, again[0])  # the same seeds, the same run
    assert not np.allclose(again[0], again[1], atol=1e-3)  # replicas differ
    momentum = runs[0][0].atoms.get_momenta().sum(axis=0)
    assert np.abs(momentum).max() < 1e-4  # the centre of mass is held, as under ASE's FixCom


def test_mlip_relax_batches_several_files_as_the_ase_path_does(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    cells = silicon_cells(2, seed=2)
    cells[0].write(folder / "si0.cif")
    cells[1].write("si1.extxyz")
    args = [str(folder), "si1.extxyz", "--fmax", "0.1", "--smax", "0.2", "--steps", "200", "-q"]
    args += ["--model", "si"]
    assert relax_command.main([*args, "-o", "batched"]) == 0
    out = capsys.readouterr().out
    assert "2 structures (16 atoms) together: torch-sim batched FIRE" in out
    assert out.count("converged in") == 2 and "in/si0.cif: converged in" in out
    assert relax_command.main([*args, "-o", "alone", "--no-batch"]) == 0
    out = capsys.readouterr().out
    assert "together" not in out and out.count("converged in") == 2
    for name in ("si0_relaxed.cif", "si1_relaxed.extxyz"):
        batched = ase.io.read(tmp_path / "batched" / name)
        alone = ase.io.read(tmp_path / "alone" / name)
        # both stop once below fmax 0.1 eV/Å, a few steps apart: within about 0.01 Å
        assert np.abs(batched.positions - alone.positions).max() < 1e-2
        assert np.abs(batched.cell.array - alone.cell.array).max() < 1e-2


def test_mlip_relax_all_frames_and_the_exit_status(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("frames.extxyz", silicon_cells(3, seed=3))
    args = ["frames.extxyz", "--model", "si", "--steps", "2"]
    status = relax_command.main([*args, "--all-frames", "--traj", "t"])
    captured = capsys.readouterr()
    assert status == 1
    errors = captured.err.strip().splitlines()
    assert [e.split(": not converged in 2 steps")[0] for e in errors] == [
        f"mlip relax: error: frames.extxyz@{k}" for k in range(3)
    ]
    assert len(ase.io.read("frames_relaxed.extxyz", ":")) == 3
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        f"frames_{k}_relax.extxyz" for k in range(3)
    ]
    # without --all-frames: the last frame only, as before
    assert relax_command.main([*args, "-q"]) == 1
    assert len(ase.io.read("frames_relaxed.extxyz", ":")) == 1


def test_without_torch_sim_the_ase_loop_runs_with_a_note(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for k, atoms in enumerate(silicon_cells(2)):
        atoms.write(f"si{k}.extxyz")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch_sim" else find_spec(name, *a),
    )
    args = ["si0.extxyz", "si1.extxyz", "--model", "si", "--steps", "1", "-q", "-o", "out"]
    assert relax_command.main(args) == 1
    captured = capsys.readouterr()
    assert 'batched relaxation needs torch-sim (pip install "mlip[torchsim]")' in captured.err
    assert "together" not in captured.out and captured.out.count("FIRE, cell relaxed") == 2


def test_mlip_md_replicas_run_together(tmp_path, capsys):
    structure = tmp_path / "si.cif"
    silicon_cells(1)[0].write(structure)
    args = [str(structure), "--model", "si", "--replicas", "2", "--steps", "4", "--interval", "2"]
    args.append("--no-progress")
    assert md_command.main([*args, "-o", str(tmp_path / "md")]) == 0
    out = capsys.readouterr().out
    assert "2 runs (16 atoms) together: torch-sim Langevin NVT" in out
    assert "(seed 0)" in out and "(seed 1)" in out
    for k in range(2):
        assert (tmp_path / "md" / f"si_r{k}_md.extxyz").read_text().count("Lattice=") == 3
        assert len((tmp_path / "md" / f"si_r{k}_md.log").read_text().splitlines()) == 4
