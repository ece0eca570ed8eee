"""Smoothness at high-symmetry structures, where the l > 0 features vanish by symmetry.

Random structures never visit these points. At a perfect crystal or a Td molecule one atom is
displaced along x by 1e-4, 1e-3 and 1e-2 Å: in a C2-smooth energy the restoring force is linear
in the displacement, so the force constant ``k = -(F_x(d) - F_x(0)) / d`` is the same for all
three. A norm that divides the vanishing features by their own RMS gives thousands of eV/Å² at
1e-4 Å and collapses at 1e-2 Å (the regression test at the bottom shows this probe catches it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

import mlip
import mlip.models
from mlip.data import atoms_to_batch
from mlip.nn.config import default_dtype

from .conftest import make_model

DISPLACEMENTS = (1e-4, 1e-3, 1e-2)  # Å
STIFFEST = 300.0  # eV/Å², stiffer than any chemical bond (C≡O is about 118 eV/Å²)


def reference_structures() -> dict[str, Atoms]:
    """Perfect crystals of every common lattice and a tetrahedral molecule (atom 0 is displaced)."""
    methane = molecule("CH4")
    methane.center(vacuum=4.0)
    return {
        "Si diamond": bulk("Si", "diamond", a=5.45, cubic=True),
        "C diamond": bulk("C", "diamond", a=3.57, cubic=True),
        "Cu fcc": bulk("Cu", "fcc", a=3.63, cubic=True),
        "Fe bcc": bulk("Fe", "bcc", a=2.83, cubic=True),
        "NaCl rocksalt": bulk("NaCl", "rocksalt", a=5.64, cubic=True),
        "Mg hcp": bulk("Mg", "hcp", a=3.21, c=5.21),
        "CH4 Td": methane,
    }


SPECIES = sorted({int(z) for a in reference_structures().values() for z in a.numbers})
CUTOFF = 4.0

# each family with 2+ layers and the option sets the shipped configs and benchmarks use
MODELS = {
    "facet": dict(num_layers=3),
    "facet poly2, degree-3 messages, grid MLP per element": dict(
        num_layers=3,
        l_sh=3,
        message_degree=3,
        grid_activation="poly2",
        grid_species=True,
        grid_heads=1,
    ),
    "facet charge/spin": dict(num_layers=2, charge_spin=True),
    "mace": dict(num_layers=2),
}


def force_constants(potential: mlip.Potential, atoms: Atoms, dtype: torch.dtype) -> np.ndarray:
    """``k(d) = -(F_x(d) - F_x(0)) / d`` of atom 0 for every ``d`` of :data:`DISPLACEMENTS`, eV/Å²."""

    def force(d: float) -> float:
        moved = atoms.copy()
        moved.positions[0, 0] += d
        batch = atoms_to_batch([moved], potential.cutoff, dtype=dtype)
        return float(potential(batch, forces=True)["forces"][0, 0].detach())

    f0 = force(0.0)
    return np.array([-(force(d) - f0) / d for d in DISPLACEMENTS])


def random_potential(name: str, dtype: torch.dtype, **extra) -> mlip.Potential:
    """The model ``name`` of :data:`MODELS` (its family is the name's first word), seed 0."""
    family = name.split()[0]
    torch.manual_seed(0)
    with default_dtype(dtype):
        options = {**MODELS[name], **extra}
        model = make_model(family, num_species=len(SPECIES), r_max=CUTOFF, **options)
        # a force scale of a real solid, so float32 rounding is judged at realistic magnitudes
        return mlip.Potential(model, CUTOFF, SPECIES, scale=[10.0] * len(SPECIES)).eval()


def assert_linear(ks: np.ndarray, dtype: torch.dtype, name: str, rtol: float = 0.03) -> None:
    """Below a bond's stiffness, and equal at every displacement to ``rtol`` plus the force's
    rounding in ``dtype`` (1e-5 eV/Å in float32, which is 0.1 eV/Å² in ``k`` at 1e-4 Å)."""
    rounding = 1e-5 if dtype == torch.float32 else 1e-10  # eV/Å
    allowed = rtol * np.abs(ks).max() + rounding / np.array(DISPLACEMENTS)
    message = f"{name}: k(1e-4, 1e-3, 1e-2 Å) = {ks} eV/Å²"
    assert np.abs(ks).max() < STIFFEST, message
    assert (np.abs(ks - ks[-1]) <= allowed).all(), message


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_force_is_linear_in_displacement_at_symmetric_structures(model, dtype):
    """Every family and option set, randomly initialised with open residual gates (so every
    layer's l > 0 features reach the energy): a force constant below a bond's, independent of the
    displacement, at every reference structure."""
    potential = random_potential(model, dtype)
    stiffness = []
    for name, atoms in reference_structures().items():
        ks = force_constants(potential, atoms, dtype)
        assert_linear(ks, dtype, f"{model}, {name}, {dtype}")
        stiffness.append(np.abs(ks).max())
    assert max(stiffness) > 0.1  # the probe sees a real restoring force somewhere


def test_the_probe_catches_a_norm_that_divides_vanishing_features_by_their_own_rms():
    """The norm of model files of format <= 2 (``vector_floor=0``): a step at the perfect
    crystal, thousands of eV/Å² at 1e-4 Å that collapse by 1e-2 Å."""
    potential = random_potential("facet", torch.float64, vector_floor=0.0)
    ks = force_constants(potential, reference_structures()["Si diamond"], torch.float64)
    assert np.abs(ks[0]) > 10 * STIFFEST and np.abs(ks[0]) > 10 * np.abs(ks[2])


SILICON_LATTICES = {
    "Si diamond": bulk("Si", "diamond", a=5.45, cubic=True),
    "Si fcc": bulk("Si", "fcc", a=3.85, cubic=True),
    "Si bcc": bulk("Si", "bcc", a=3.08, cubic=True),
    "Si simple cubic": bulk("Si", "sc", a=2.53) * (2, 2, 2),
    "Si hcp": bulk("Si", "hcp", a=2.72, c=4.44),
}


UNIVERSAL_FILE = mlip.models.MODELS_DIR / "universal.pt"


@pytest.mark.parametrize(
    "name",
    [
        "si",
        pytest.param(
            "universal",
            marks=pytest.mark.skipif(
                not UNIVERSAL_FILE.is_file(), reason="the universal model is not bundled yet"
            ),
        ),
    ],
)
def test_bundled_models_are_smooth_at_perfect_crystals(name):
    """Each bundled model (trained, float32 as shipped and float64): the Si model at every common
    Si lattice, the universal one at crystals of several chemistries and at methane."""
    zincblende = {"GaAs zincblende": bulk("GaAs", "zincblende", a=5.65, cubic=True)}
    structures = SILICON_LATTICES if name == "si" else {**reference_structures(), **zincblende}
    for dtype in (torch.float64, torch.float32):
        potential = mlip.load_model(name, dtype=dtype)
        for label, atoms in structures.items():
            ks = force_constants(potential, atoms, dtype)
            assert_linear(ks, dtype, f"bundled model {name}, {label}, {dtype}", rtol=0.05)
