"""Facet with one grid MLP per element (``grid_species``): routing, symmetry and the model file."""

from __future__ import annotations

import torch

import mlip

from .conftest import CUTOFF, SPECIES, default_dtype, ethanol, make_model, rattled_silicon
from .test_physics import assert_symmetric_with_exact_forces, energy

SILICON = SPECIES.index(14)


def make_potential(grid_species: bool, seed: int = 0) -> mlip.Potential:
    """Tiny float64 Facet, polynomial activation on its exact grid."""
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        model = make_model("facet", grid_activation="poly2", grid_species=grid_species)
        return mlip.Potential(model, CUTOFF, SPECIES, e0=[-1.0, -2.0, -3.0, -4.0])


def perturb(potential: mlip.Potential, species: int, seed: int = 0) -> None:
    """Move one element's grid MLPs (every layer) away from the others'."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mixing in potential.model.mixings:
            for p in mixing.species_mlp:
                noise = torch.randn(p[species].shape, generator=generator, dtype=p.dtype)
                p[species] += 0.3 * noise


def test_starts_as_the_shared_mlp_and_survives_the_model_file(tmp_path):
    shared, per_species = make_potential(False), make_potential(True)
    atoms = ethanol()
    assert abs(energy(per_species, atoms) - energy(shared, atoms)) < 1e-12
    perturb(per_species, SPECIES.index(8))
    path = mlip.save_model(per_species, tmp_path / "species.pt")
    loaded = mlip.load_model(path)
    assert loaded.model.config["grid_species"] is True
    assert abs(energy(loaded, atoms) - energy(per_species, atoms)) < 1e-12
    assert abs(energy(loaded, atoms) - energy(shared, atoms)) > 1e-6


def test_each_atom_uses_its_own_elements_mlp():
    """Changing silicon's MLP changes silicon's energy and leaves a molecule without Si alone."""
    potential = make_potential(True)
    silicon, molecule = rattled_silicon(), ethanol()
    before = energy(potential, silicon), energy(potential, molecule)
    perturb(potential, SILICON)
    assert abs(energy(potential, silicon) - before[0]) > 1e-6
    assert abs(energy(potential, molecule) - before[1]) < 1e-12


def test_symmetries_and_forces_with_distinct_mlps():
    """Rotation with reflection and permutation on the exact grid; forces are -dE/dx."""
    potential = make_potential(True, seed=2)
    for species in range(len(SPECIES)):
        perturb(potential, species, seed=species)
    assert_symmetric_with_exact_forces(potential, ethanol(seed=3))
