"""Charge and spin conditioning in every model family: it changes energies and keeps the physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

import mlip
from mlip.data import atoms_to_batch
from mlip.export import read_model_file

from .conftest import CUTOFF, SPECIES, default_dtype, ethanol, make_model
from .test_physics import energy, predict, random_rotation

E0 = [-1.0, -2.0, -3.0, -4.0]
SHIFT = [0.1, 0.2, 0.3, 0.4]


def make_potential(family: str, charge_spin: bool = True, exact: bool = False) -> mlip.Potential:
    """A tiny float64 potential; ``exact``: polynomial activation on a grid that makes it exact."""
    grid = dict(grid_activation="poly2") if exact else {}  # Facet's default grid for poly2 is exact
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = make_model(family, charge_spin=charge_spin, **grid)
        return mlip.Potential(model, CUTOFF, SPECIES, e0=E0, scale=[1.5] * 4, shift=SHIFT)


def run(potential: mlip.Potential, structures: list[Atoms]) -> dict[str, torch.Tensor]:
    """Detached predictions (energy, node energies, forces) for a batch of ``structures``."""
    out = potential(atoms_to_batch(structures, CUTOFF, dtype=torch.float64))
    return {k: v.detach() for k, v in out.items()}


def methanol(charge: float | None = None, spin: float | None = None, seed: int = 0) -> Atoms:
    """Rattled methanol (6 atoms, no symmetry) with the given total charge and multiplicity."""
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=seed)
    return with_charge(atoms, charge, spin)


def with_charge(atoms: Atoms, charge: float | None = None, spin: float | None = None) -> Atoms:
    atoms = atoms.copy()
    if charge is not None:
        atoms.info["charge"] = charge
    if spin is not None:
        atoms.info["spin"] = spin
    return atoms


STATES = [(0, 1), (1, 1), (0, 3), (1, 3), (-1, 2)]  # (total charge, multiplicity)


def test_charge_and_spin_change_the_energy(family):
    conditioned = make_potential(family)
    states = [methanol(q, s) for q, s in STATES]
    out = run(conditioned, states)
    energies, forces = out["energy"], out["forces"].reshape(len(STATES), -1, 3)
    for a in range(len(STATES)):
        for b in range(a):
            assert abs(float(energies[a] - energies[b])) > 1e-4, (STATES[a], STATES[b])
            assert float((forces[a] - forces[b]).abs().max()) > 1e-5, (STATES[a], STATES[b])
    # without conditioning the keys are ignored: every state has the same energy and forces
    plain = make_potential(family, charge_spin=False)
    assert not any("charge" in name for name, _ in plain.named_parameters())
    out = run(plain, states)
    energies, forces = out["energy"], out["forces"].reshape(len(STATES), -1, 3)
    assert float((energies - energies[0]).abs().max()) < 1e-12
    assert float((forces - forces[:1]).abs().max()) < 1e-12


def test_conditioning_is_added_to_the_plain_model(family):
    """For one seed the conditioned model is the plain model plus the embedding: with the tables
    zeroed it gives the plain model's energies whatever the charge."""
    conditioned, plain = make_potential(family), make_potential(family, charge_spin=False)
    with torch.no_grad():
        for table in conditioned.model.charge_spin_embedding.parameters():
            table.zero_()
    structures = [methanol(-2, 4), with_charge(ethanol(), 3, 2)]
    a, b = run(conditioned, structures), run(plain, structures)
    assert float((a["energy"] - b["energy"]).abs().max()) < 1e-12
    assert float((a["forces"] - b["forces"]).abs().max()) < 1e-12


def test_missing_charge_and_spin_mean_neutral_singlet(family):
    potential = make_potential(family)
    batch = atoms_to_batch([methanol()], CUTOFF, dtype=torch.float64)
    assert float(batch.charge[0]) == 0.0 and float(batch.spin[0]) == 1.0
    ref = float(potential(batch, forces=False)["energy"][0].detach())
    del batch.charge, batch.spin
    assert "charge" not in batch and "spin" not in batch
    assert float(potential(batch, forces=False)["energy"][0].detach()) == pytest.approx(
        ref, abs=1e-12
    )
    assert energy(potential, methanol(1, 2)) != pytest.approx(ref, abs=1e-4)


def test_mixed_batch_equals_single_structures(family):
    """Each structure of a batch gets its own charge and spin, not its neighbour's."""
    potential = make_potential(family)
    structures = [methanol(1, 2), with_charge(ethanol(), -2, 1), Atoms("O", info={"charge": -1})]
    together = run(potential, structures)
    for k, atoms in enumerate(structures):
        alone = predict(potential, atoms)
        assert abs(float(together["energy"][k]) - alone["energy"][0]) < 1e-10


def test_invariance_with_charge_and_spin(family):
    """Rotation with reflection, translation and permutation at once, on the exact grid."""
    potential = make_potential(family, exact=True)
    atoms = methanol(-1, 2, seed=3)
    rotation = -random_rotation(11)  # improper: rotation times inversion
    perm = np.random.default_rng(0).permutation(len(atoms))
    moved = atoms[perm]
    moved.positions = moved.positions @ rotation.T + np.array([0.7, -2.1, 3.3])
    ref, out = predict(potential, atoms), predict(potential, moved)
    e = ref["energy"][0]
    assert abs(e - energy(potential, methanol(0, 1, seed=3))) > 1e-4  # the charge matters here
    assert abs(out["energy"][0] - e) < 1e-9 * max(1.0, abs(e))
    scale = np.abs(ref["forces"]).max()
    assert np.abs(out["forces"] - ref["forces"][perm] @ rotation.T).max() < 1e-9 * scale
    assert np.abs(out["node_energy"] - ref["node_energy"][perm]).max() < 1e-9 * max(1.0, abs(e))


def test_forces_are_minus_energy_gradient_with_charge(family):
    potential = make_potential(family)
    atoms = methanol(1, 2, seed=1)
    forces = predict(potential, atoms)["forces"]
    h = 1e-5
    fd = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            fd[i, k] = -(energy(potential, plus) - energy(potential, minus)) / (2 * h)
    assert np.abs(forces).max() > 1e-2
    assert np.abs(forces - fd).max() / np.abs(fd).max() < 1e-6


def test_lone_neutral_atom_gets_e0_exactly(family):
    potential = make_potential(family)
    for info in ({}, {"charge": 0, "spin": 1}):
        out = predict(potential, Atoms("O", positions=[[0, 0, 0]], info=info))
        assert out["energy"][0] == pytest.approx(-3.0 + 0.3, abs=1e-12)
        assert np.abs(out["forces"]).max() == 0.0
    # a lone ion differs from the neutral atom by a learned amount (an ionisation energy)
    ion = predict(potential, Atoms("O", positions=[[0, 0, 0]], info={"charge": -1, "spin": 2}))
    assert abs(ion["energy"][0] - (-3.0 + 0.3)) > 1e-4


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"charge": 0.5}, r"total charge 0\.5, which is not an integer.*\[-10, 10\]"),
        ({"charge": 11}, r"total charge 11, which is out of range.*\[-10, 10\].*max_abs_charge"),
        ({"charge": -12}, r"total charge -12, which is out of range"),
        ({"spin": 0}, r"spin multiplicity 0, which is out of range.*\[1, 11\].*2S\+1"),
        ({"spin": 1.5}, r"spin multiplicity 1\.5, which is not an integer.*\[1, 11\]"),
        ({"spin": 12}, r"spin multiplicity 12, which is out of range.*max_spin"),
    ],
)
def test_bad_charge_or_spin_is_named(family, info, message):
    potential = make_potential(family)
    structures = [methanol(), with_charge(methanol(), info.get("charge"), info.get("spin"))]
    batch = atoms_to_batch(structures, CUTOFF, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"structure 1 of the batch has " + message):
        potential(batch)
    make_potential(family, charge_spin=False)(batch)  # ignored without conditioning


def test_range_follows_the_model_options(family):
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = make_model(family, charge_spin=True, max_abs_charge=2, max_spin=3)
        potential = mlip.Potential(model, CUTOFF, SPECIES)
    predict(potential, methanol(-2, 3))
    with pytest.raises(ValueError, match=r"total charge 3, .*\[-2, 2\]"):
        predict(potential, methanol(3, 1))
    with pytest.raises(ValueError, match=r"spin multiplicity 4, .*\[1, 3\]"):
        predict(potential, methanol(0, 4))


def test_model_file_round_trip_with_charge(family, tmp_path):
    potential = make_potential(family)
    path = mlip.save_model(potential, tmp_path / "model.pt")
    config = read_model_file(path)["model_config"]
    assert (config["charge_spin"], config["max_abs_charge"], config["max_spin"]) == (True, 10, 11)
    loaded = mlip.load_model(path)
    structures = [methanol(1, 2), with_charge(ethanol(), -3, 4), methanol(0, 1)]
    a, b = run(potential, structures), run(loaded, structures)
    assert float((a["energy"] - b["energy"]).abs().max()) < 1e-10
    assert float((a["forces"] - b["forces"]).abs().max()) < 1e-10
    assert float((a["energy"][0] - a["energy"][2]).abs()) > 1e-4


def test_model_file_without_charge_spin_keys_loads(family, tmp_path):
    """A file written before charge/spin conditioning existed builds an unconditioned model."""
    potential = make_potential(family, charge_spin=False)
    path = mlip.save_model(potential, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    for key in ("charge_spin", "max_abs_charge", "max_spin"):
        del payload["model_config"][key]
    torch.save(payload, path)
    loaded = mlip.load_model(path)
    assert loaded.model.charge_spin_embedding is None
    a, b = run(potential, [methanol(1, 2)]), run(loaded, [methanol(1, 2)])
    assert float((a["energy"] - b["energy"]).abs().max()) < 1e-12


@pytest.mark.parametrize("charge_spin", [True, False])
def test_calculator_reads_charge_from_atoms_info(family, charge_spin):
    potential = make_potential(family, charge_spin=charge_spin)
    atoms = methanol()
    atoms.calc = mlip.MLIPCalculator(potential)
    neutral = atoms.get_potential_energy()
    atoms.info["charge"] = 1  # the same Atoms object: only info changed
    cation = atoms.get_potential_energy()
    assert cation == pytest.approx(energy(potential, atoms), abs=1e-10)
    if charge_spin:
        assert abs(cation - neutral) > 1e-4
    else:
        assert cation == pytest.approx(neutral, abs=1e-12)


def test_trainable_and_frozen_potentials_agree_with_charge(family):
    """Training appends the lone-atom references to the batch (charge 0, multiplicity 1); a frozen
    potential caches them: both give the same energies and forces for charged structures."""
    potential = make_potential(family)
    structures = [methanol(1, 2), with_charge(ethanol(), -2, 1), Atoms("O", info={"charge": -1})]
    trainable = run(potential, structures)
    potential.requires_grad_(False)
    frozen = run(potential, structures)
    for key in ("energy", "node_energy", "forces"):
        torch.testing.assert_close(trainable[key], frozen[key], rtol=0, atol=1e-12)
