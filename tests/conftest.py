"""Shared fixtures: tiny float64 models of every family and small periodic/molecular structures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

import mlip
from mlip.nn import Facet
from mlip.nn.config import default_dtype

# tiny models run fastest on one thread, and a busy 2-core machine slows several threads ~10x
torch.set_num_threads(1)

SPECIES = [1, 6, 8, 14]  # H, C, O, Si
CUTOFF = 4.0


def make_model(family: str, **overrides) -> torch.nn.Module:
    """A tiny float64 model of ``family`` whose outputs depend on every layer."""
    if family == "facet":
        kwargs = dict(
            num_species=len(SPECIES),
            r_max=CUTOFF,
            channels=[8, 4, 4],
            l_sh=2,
            num_layers=2,
            grid_channels=4,
            grid_hidden=8,
            grid_heads=2,
            avg_num_neighbors=8.0,
            gamma_init=0.7,
        )
        kwargs.update(overrides)
        return Facet(**kwargs)
    if family == "mace":
        from mlip.nn.mace import MACE

        # the grid product is exact by construction: Facet's grid options do not apply
        overrides = {k: v for k, v in overrides.items() if not k.startswith("grid_")}
        kwargs = dict(
            num_species=len(SPECIES),
            r_max=CUTOFF,
            channels=[8, 4],
            l_sh=2,
            num_layers=2,
            correlation=3,
            radial_mlp=[8, 8],
            avg_num_neighbors=8.0,
        )
        kwargs.update(overrides)
        return MACE(**kwargs)
    raise ValueError(family)


MODEL_FAMILIES = ["facet", "mace"]

# `mlip train` overrides for a tiny run: a one-layer Facet of a few hundred weights, one epoch,
# no progress bar
TINY_RUN = [
    "cutoff=3.0",
    "model.channels=[8,4,4]",
    "model.num_layers=1",
    "model.grid_channels=4",
    "model.grid_hidden=8",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Every test on one thread, also after code under test changed it (``--threads``)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny float64 Facet model file (H, C, O, Si; E0 of Si -5 eV) with training metadata."""
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        potential = mlip.Potential(make_model("facet"), CUTOFF, SPECIES, e0=[0, 0, 0, -5.0])
    path = tmp_path_factory.mktemp("model") / "si.pt"
    return mlip.save_model(potential, path, metadata={"data": {"train": "tiny.xyz"}})


@pytest.fixture(params=MODEL_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def potential(family) -> mlip.Potential:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = make_model(family)
        return mlip.Potential(model, CUTOFF, SPECIES, e0=[-1.0, -2.0, -3.0, -4.0], scale=[1.5] * 4)


def rattled_silicon(seed: int = 0) -> Atoms:
    """Diamond Si conventional cell (8 atoms), rattled and sheared so nothing is symmetric."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    cell = atoms.cell.array @ (np.eye(3) + 0.03 * np.random.default_rng(seed).normal(size=(3, 3)))
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.15, seed=seed)
    return atoms


def ethanol(seed: int = 0) -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms
