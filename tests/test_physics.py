"""Physics of every model family through the Potential: gradients, symmetries, extensivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import make_supercell
from e3nn import o3

import mlip
from mlip.data import atoms_to_batch
from mlip.errors import UnknownElementError

from .conftest import CUTOFF, SPECIES, default_dtype, ethanol, make_model, rattled_silicon


def predict(potential: mlip.Potential, atoms: Atoms, stress: bool | None = None) -> dict:
    if stress is None:
        stress = bool(atoms.pbc.all())
    batch = atoms_to_batch([atoms], CUTOFF, dtype=torch.float64)
    out = potential(batch, forces=True, stress=stress)
    return {k: v.detach().numpy() for k, v in out.items()}


def energy(potential: mlip.Potential, atoms: Atoms) -> float:
    batch = atoms_to_batch([atoms], CUTOFF, dtype=torch.float64)
    return float(potential(batch, forces=False)["energy"][0])


@pytest.mark.parametrize("structure", [rattled_silicon, ethanol])
def test_forces_are_minus_energy_gradient(potential, structure):
    atoms = structure()
    forces = predict(potential, atoms)["forces"]
    h = 1e-5
    fd = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            fd[i, k] = -(energy(potential, plus) - energy(potential, minus)) / (2 * h)
    assert np.abs(forces).max() > 1e-2  # the model is not trivially flat
    assert np.abs(forces - fd).max() / np.abs(fd).max() < 1e-6


def test_stress_is_strain_derivative_over_volume(potential):
    atoms = rattled_silicon(seed=3)
    stress = predict(potential, atoms)["stress"][0]
    volume = atoms.get_volume()
    h = 1e-5
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            values = []
            for sign in (1, -1):
                strain = np.zeros((3, 3))
                strain[a, b] += sign * h / 2
                strain[b, a] += sign * h / 2
                deformed = atoms.copy()
                deformed.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
                values.append(energy(potential, deformed))
            fd[a, b] = (values[0] - values[1]) / (2 * h) / volume
    assert np.abs(stress).max() > 1e-4
    assert np.abs(stress - stress.T).max() < 1e-12
    assert np.abs(stress - fd).max() / np.abs(fd).max() < 1e-6


def random_rotation(seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    return o3.rand_matrix(dtype=torch.float64).numpy()


def _rotated(atoms: Atoms, rotation: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.positions = atoms.positions @ rotation.T
    if atoms.pbc.any():
        out.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    return out


def assert_symmetric_with_exact_forces(
    potential: mlip.Potential, atoms: Atoms, atom: int = 4, axis: int = 1
) -> float:
    """Rotation with reflection and a permutation leave the energy alone and turn the forces (1e-9,
    exact grids only); one force component equals the central finite difference. Returns the
    energy (eV) of ``atoms``."""
    rotation = -random_rotation(5)
    perm = np.random.default_rng(1).permutation(len(atoms))
    ref, out = predict(potential, atoms), predict(potential, _rotated(atoms, rotation)[perm])
    scale = np.abs(ref["forces"]).max()
    assert abs(out["energy"][0] - ref["energy"][0]) < 1e-9 * max(1.0, abs(ref["energy"][0]))
    assert np.abs(out["forces"] - ref["forces"][perm] @ rotation.T).max() < 1e-9 * scale
    h = 1e-5
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[atom, axis] += h
    minus.positions[atom, axis] -= h
    fd = -(energy(potential, plus) - energy(potential, minus)) / (2 * h)
    assert abs(ref["forces"][atom, axis] - fd) < 1e-6 * scale
    return float(ref["energy"][0])


def _exact_potential(family: str) -> mlip.Potential:
    """The same tiny model with a polynomial grid activation on a grid that makes it exact."""
    torch.manual_seed(1)
    with default_dtype(torch.float64):
        model = make_model(family, grid_activation="poly2")  # Facet's default grid for poly2
        return mlip.Potential(model, CUTOFF, SPECIES)


@pytest.mark.parametrize("structure", [rattled_silicon, ethanol])
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_and_reflection_exact_grid(family, structure, reflect):
    potential = _exact_potential(family)
    atoms = structure()
    rotation = random_rotation(7)
    if reflect:
        rotation = -rotation
    ref = predict(potential, atoms)
    rot = predict(potential, _rotated(atoms, rotation))
    scale = np.abs(ref["forces"]).max()
    assert abs(rot["energy"][0] - ref["energy"][0]) < 1e-9 * max(1.0, abs(ref["energy"][0]))
    assert np.abs(rot["forces"] - ref["forces"] @ rotation.T).max() < 1e-9 * scale
    if atoms.pbc.all():
        expected = rotation @ ref["stress"][0] @ rotation.T
        assert np.abs(rot["stress"][0] - expected).max() < 1e-9 * np.abs(expected).max()


def test_rotation_error_bound_at_default_grid(potential):
    """SiLU on the default grid is equivariant only up to aliasing: measure and bound it."""
    atoms = rattled_silicon(seed=5)
    ref = predict(potential, atoms)
    errors = []
    for seed in range(4):
        rotation = random_rotation(seed)
        rot = predict(potential, _rotated(atoms, rotation))
        errors.append(
            np.abs(rot["forces"] - ref["forces"] @ rotation.T).max() / np.abs(ref["forces"]).max()
        )
    assert max(errors) < 1e-8  # measured: 2e-11 for this model (see facet.md for one layer)


def test_translation_and_wrapping(potential):
    atoms = rattled_silicon()
    ref = predict(potential, atoms)
    moved = atoms.copy()
    moved.positions += np.array([0.31, -1.7, 2.2])
    moved.positions[3] += atoms.cell[1] - 2 * atoms.cell[2]  # another periodic image of atom 3
    out = predict(potential, moved)
    assert abs(out["energy"][0] - ref["energy"][0]) < 1e-10
    assert np.abs(out["forces"] - ref["forces"]).max() < 1e-10
    assert np.abs(out["stress"] - ref["stress"]).max() < 1e-10


@pytest.mark.parametrize("structure", [rattled_silicon, ethanol])
def test_permutation(potential, structure):
    atoms = structure()
    perm = np.random.default_rng(0).permutation(len(atoms))
    ref = predict(potential, atoms)
    out = predict(potential, atoms[perm])
    assert abs(out["energy"][0] - ref["energy"][0]) < 1e-10
    assert np.abs(out["forces"] - ref["forces"][perm]).max() < 1e-10
    assert np.abs(out["node_energy"] - ref["node_energy"][perm]).max() < 1e-10


def test_supercell_two_ways_and_extensivity(potential):
    prim = rattled_silicon(seed=2)[:2]  # a 2-atom triclinic cell; edges shorter than the cutoff
    prim.set_cell(prim.cell.array[[0, 1, 2]] * 0.55, scale_atoms=True)
    e_prim = predict(potential, prim)
    diag = make_supercell(prim, np.diag([2, 2, 2]))
    other = make_supercell(prim, np.array([[1, 1, 0], [1, -1, 0], [0, 1, 2]]) @ np.diag([1, 1, 1]))
    other = make_supercell(prim, np.array([[2, 1, 0], [0, 2, 1], [0, 0, 2]]))  # det 8 too
    e_diag, e_other = predict(potential, diag), predict(potential, other)
    assert len(diag) == len(other) == 16
    assert abs(e_diag["energy"][0] - 8 * e_prim["energy"][0]) < 1e-9 * abs(e_diag["energy"][0])
    assert abs(e_other["energy"][0] - e_diag["energy"][0]) < 1e-9 * abs(e_diag["energy"][0])
    # intensive stress and per-atom energies agree across cell choices
    assert (
        np.abs(e_other["stress"] - e_prim["stress"]).max() < 1e-9 * np.abs(e_prim["stress"]).max()
    )
    assert (
        np.abs(np.sort(e_other["node_energy"]) - np.sort(np.tile(e_prim["node_energy"], 8))).max()
        < 1e-9
    )


def test_lone_atom_gets_e0(potential):
    lone = Atoms("O", positions=[[0, 0, 0]])
    out = predict(potential, lone)
    assert out["energy"][0] == pytest.approx(-3.0, abs=1e-12)
    assert np.abs(out["forces"]).max() == 0.0
    # far apart in one batch: each still its E0, and the dimer just beyond the cutoff too
    dimer = Atoms("CO", positions=[[0, 0, 0], [0, 0, CUTOFF + 1e-3]])
    assert predict(potential, dimer)["energy"][0] == pytest.approx(-5.0, abs=1e-12)


def test_energy_smooth_at_cutoff(potential):
    """Energy and force go continuously to the lone-atom values as a pair crosses the cutoff."""

    def dimer(r: float) -> dict:
        return predict(potential, Atoms("CO", positions=[[0, 0, 0], [0, 0, r]]))

    inside = dimer(CUTOFF - 1e-3)
    assert abs(inside["energy"][0] - (-5.0)) < 1e-6
    assert np.abs(inside["forces"]).max() < 1e-5
    assert abs(dimer(CUTOFF - 1.0)["energy"][0] - (-5.0)) > 1e-4


def test_unknown_element_is_named(potential):
    atoms = Atoms("CuO", positions=[[0, 0, 0], [0, 0, 1.8]])
    with pytest.raises(
        UnknownElementError, match=r"element Cu is not known to this model, which knows H, C, O, Si"
    ):
        predict(potential, atoms)


def test_batch_equals_single_structures(potential):
    structures = [rattled_silicon(), ethanol(), Atoms("H", positions=[[0, 0, 0]])]
    batch = atoms_to_batch(structures, CUTOFF, dtype=torch.float64)
    together = potential(batch, forces=True)
    for k, atoms in enumerate(structures):
        alone = predict(potential, atoms, stress=False)
        assert abs(float(together["energy"][k]) - alone["energy"][0]) < 1e-10


def test_double_backward_gives_force_loss_gradient(family):
    """d(sum F^2)/d(theta) from double backward equals a finite difference in theta."""
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        potential = mlip.Potential(make_model(family), CUTOFF, SPECIES)
    batch = atoms_to_batch([rattled_silicon()], CUTOFF, dtype=torch.float64)
    param = next(p for name, p in potential.named_parameters() if "radial" in name)

    def loss() -> torch.Tensor:
        out = potential(batch, forces=True, stress=True, create_graph=True)
        return out["forces"].pow(2).sum() + out["stress"].pow(2).sum()

    (grad,) = torch.autograd.grad(loss(), [param])
    index = tuple(int(i) for i in torch.nonzero(grad.abs() == grad.abs().max())[0])
    h = 1e-6
    with torch.no_grad():
        param[index] += h
    up = loss().item()
    with torch.no_grad():
        param[index] -= 2 * h
    down = loss().item()
    assert abs(grad[index].item()) > 1e-6
    assert grad[index].item() == pytest.approx((up - down) / (2 * h), rel=1e-5)


def test_training_and_inference_derivatives_agree(family):
    """Training mode takes forces and stress from torch.func (what torch.compile traces), eval
    mode from autograd.grad: the same predictions and weight gradients of a force loss."""
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        potential = mlip.Potential(make_model(family), CUTOFF, SPECIES)
    batch = atoms_to_batch([rattled_silicon(), ethanol()], CUTOFF, dtype=torch.float64)
    results = []
    for training in (True, False):
        potential.train(training)
        out = potential(batch, forces=True, stress=True, create_graph=True)
        loss = out["forces"].pow(2).sum() + out["stress"].pow(2).sum() + out["energy"].sum()
        grads = torch.autograd.grad(loss, list(potential.parameters()), allow_unused=True)
        results.append((out, [g for g in grads if g is not None]))
    (train_out, train_grads), (eval_out, eval_grads) = results
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(train_out[key], eval_out[key], rtol=1e-12, atol=1e-14)
    assert len(train_grads) == len(eval_grads) > 5
    for a, b in zip(train_grads, eval_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_mixed_pbc_slab(potential):
    """A slab periodic in x, y only: forces are still the energy gradient and images in z absent."""
    atoms = rattled_silicon(seed=4)
    atoms.pbc = [True, True, False]
    atoms.cell[2] = [0.0, 0.0, 0.0]
    out = predict(potential, atoms, stress=False)
    h = 1e-5
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[2, 2] += h
    minus.positions[2, 2] -= h
    fd = -(energy(potential, plus) - energy(potential, minus)) / (2 * h)
    assert out["forces"][2, 2] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    periodic = predict(potential, rattled_silicon(seed=4))
    assert abs(periodic["energy"][0] - out["energy"][0]) > 1e-3


def test_frozen_reference_cache_follows_weight_changes(potential):
    """A frozen potential caches the lone-atom output; changing weights in place, loading a state
    dict or converting the dtype must give what an uncached (trainable) potential gives."""
    potential.requires_grad_(False)
    batch = atoms_to_batch([ethanol()], CUTOFF, dtype=torch.float64)
    first = potential(batch, forces=False)["energy"]
    assert torch.equal(first, potential(batch, forces=False)["energy"])

    def uncached() -> torch.Tensor:
        potential.requires_grad_(True)
        try:
            return potential(batch, forces=False, create_graph=False)["energy"].detach()
        finally:
            potential.requires_grad_(False)

    with torch.no_grad():
        potential.model.embedding.weight.mul_(1.5)  # in place, as an optimiser step
    changed = potential(batch, forces=False)["energy"]
    assert not torch.allclose(changed, first)
    torch.testing.assert_close(changed, uncached(), rtol=0, atol=1e-12)

    state = {k: v.clone() for k, v in potential.state_dict().items()}
    state["model.embedding.weight"] /= 1.5
    potential.load_state_dict(state)
    torch.testing.assert_close(potential(batch, forces=False)["energy"], first, rtol=0, atol=1e-12)

    potential.to(torch.float32)
    single = potential(atoms_to_batch([ethanol()], CUTOFF, dtype=torch.float32), forces=False)
    assert single["energy"].dtype == torch.float32
    torch.testing.assert_close(single["energy"].double(), first, rtol=1e-5, atol=1e-4)
