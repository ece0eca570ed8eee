"""MLIPTorchSimModel: torch-sim's own interface check, agreement with MLIPCalculator, the state
conventions of torch-sim 0.3 and of other versions, and input errors."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

import mlip
from mlip.calculator import MLIPCalculator
from mlip.errors import AtomsTooCloseError, NonFiniteOutputError, UnknownElementError
from mlip.nn.config import default_dtype

from .conftest import CUTOFF, SPECIES, ethanol, make_model, rattled_silicon

with warnings.catch_warnings():  # torch-sim 0.3.0 uses torch.jit.script, deprecated in torch 2.13
    warnings.simplefilter("ignore", DeprecationWarning)
    ts = pytest.importorskip("torch_sim")  # in the `test` extra (Python >= 3.11)
    from torch_sim.models.interface import validate_model_outputs

from mlip.integrations.torchsim import MLIPTorchSimModel  # noqa: E402

CPU = torch.device("cpu")
SPECIES_FE = [*SPECIES, 26]  # torch-sim's validate_model_outputs runs Si and Fe


def tiny_potential(family: str, species=SPECIES_FE, **overrides) -> mlip.Potential:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = make_model(family, num_species=len(species), **overrides)
        e0 = -np.arange(1.0, len(species) + 1.0)
        return mlip.Potential(model, CUTOFF, species, e0=e0, scale=[1.5] * len(species))


@pytest.fixture(scope="module", params=["facet", "mace"])
def potential(request) -> mlip.Potential:
    return tiny_potential(request.param)


def periodic_structures() -> list[Atoms]:
    """Three periodic cells of 8, 4 and 7 atoms, all of low symmetry."""
    silicon = rattled_silicon(seed=0)
    sic = bulk("SiC", "zincblende", a=4.36).repeat((2, 1, 1))
    sic.set_cell(
        sic.cell.array @ np.array([[1.0, 0.02, 0], [0, 0.97, 0.03], [0.01, 0, 1.02]]), True
    )
    sic.rattle(0.1, seed=1)
    cho = bulk("C", "diamond", a=3.8, cubic=True)
    del cho[7]
    cho.symbols[0], cho.symbols[3] = "O", "H"
    cho.rattle(0.1, seed=2)
    return [silicon, sic, cho]


def calculator_results(calc: MLIPCalculator, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    stress = atoms.get_stress(voigt=False) if atoms.pbc.any() else np.zeros((3, 3))
    return atoms.get_potential_energy(), atoms.get_forces(), stress


def assert_matches_calculator(out: dict, structures: list[Atoms], calc: MLIPCalculator, tol: float):
    assert out["energy"].shape == (len(structures),)
    assert out["forces"].shape == (sum(len(a) for a in structures), 3)
    assert out["stress"].shape == (len(structures), 3, 3)
    assert not any(v.requires_grad for v in out.values())
    start = 0
    for b, atoms in enumerate(structures):
        energy, forces, stress = calculator_results(calc, atoms)
        assert abs(out["energy"][b].item() - energy) < tol
        assert np.abs(out["forces"][start : start + len(atoms)].numpy() - forces).max() < tol
        assert np.abs(out["stress"][b].numpy() - stress).max() < tol
        start += len(atoms)


def test_passes_torch_sims_validate_model_outputs(potential):
    model = MLIPTorchSimModel(potential, device="cpu")
    assert (model.device, model.dtype) == (CPU, torch.float64)
    assert model.compute_forces and model.compute_stress
    assert model.memory_scales_with == "n_atoms_x_density"
    validate_model_outputs(model, CPU, torch.float64)


def test_batch_of_three_equals_the_calculator_on_each(potential):
    structures = periodic_structures()
    state = ts.io.atoms_to_state(structures, CPU, torch.float64)
    out = MLIPTorchSimModel(potential, device="cpu")(state)
    assert_matches_calculator(out, structures, MLIPCalculator(potential), tol=1e-6)
    assert out["stress"].abs().amax(dim=(1, 2)).min() > 1e-4  # not trivially zero
    assert out["forces"].abs().max() > 1e-3


def test_molecule_gets_zero_stress_and_the_calculators_forces(potential):
    molecule = ethanol()
    state = ts.io.atoms_to_state(molecule, CPU, torch.float64)
    assert not state.pbc
    out = MLIPTorchSimModel(potential, device="cpu")(state)
    assert_matches_calculator(out, [molecule], MLIPCalculator(potential), tol=1e-6)
    assert torch.equal(out["stress"], torch.zeros(1, 3, 3, dtype=torch.float64))


def test_model_file_and_default_model_load(model_file):
    silicon = rattled_silicon(seed=3)
    state = ts.io.atoms_to_state(silicon, CPU, torch.float64)
    from_file = MLIPTorchSimModel(model_file, device="cpu", dtype="float64")
    assert from_file.dtype == torch.float64
    energy, forces, _ = calculator_results(MLIPCalculator(model_file, dtype="float64"), silicon)
    out = from_file(state)
    assert abs(out["energy"].item() - energy) < 1e-6
    assert np.abs(out["forces"].numpy() - forces).max() < 1e-6

    bundled = MLIPTorchSimModel("si", device="cpu")
    assert bundled.elements == ["Si"]
    out = bundled(state.to(dtype=bundled.dtype))
    assert out["energy"].dtype == bundled.dtype
    energy, _, _ = calculator_results(MLIPCalculator("si"), silicon)
    assert abs(out["energy"].item() - energy) < 1e-4 * len(silicon)  # float32

    with pytest.raises(TypeError, match="model file, 'default' or an mlip.Potential"):
        MLIPTorchSimModel(torch.nn.Linear(1, 1), device="cpu")


def test_older_and_newer_state_fields_give_the_same_results():
    potential = tiny_potential("facet")
    model = MLIPTorchSimModel(potential, device="cpu")
    structures = periodic_structures()[:2]
    state = ts.io.atoms_to_state(structures, CPU, torch.float64)
    reference = model(state)
    column_cell = torch.tensor(np.stack([a.cell.array.T for a in structures]))
    common = dict(positions=state.positions.clone(), atomic_numbers=state.atomic_numbers.clone())
    # torch-sim < 0.3: the system of each atom in `batch`, only the column-vector `cell`
    older = SimpleNamespace(**common, cell=column_cell, pbc=True, batch=state.system_idx.clone())
    # later: `system_idx`, `row_vector_cell`, pbc per direction, neutral charge, spin 0 (unset)
    newer = SimpleNamespace(
        **common,
        cell=column_cell,
        row_vector_cell=column_cell.mT,
        system_idx=state.system_idx.clone(),
        pbc=torch.tensor([True, True, True]),
        charge=torch.zeros(2),
        spin=torch.zeros(2),
    )
    as_dict = dict(**common, cell=column_cell, pbc=True, system_idx=state.system_idx.clone())
    with torch.no_grad():  # forces are gradients: they do not need the caller's autograd
        results = [model(s) for s in (older, newer, as_dict)]
    for out in results:
        for key in ("energy", "forces", "stress"):
            assert torch.allclose(out[key], reference[key], rtol=0, atol=1e-12), key


def test_charge_and_spin_come_from_the_state():
    potential = tiny_potential("facet", species=SPECIES, charge_spin=True)
    model = MLIPTorchSimModel(potential, device="cpu")
    molecule = ethanol()
    state = ts.io.atoms_to_state(molecule, CPU, torch.float64)
    fields = dict(
        positions=state.positions,
        atomic_numbers=state.atomic_numbers,
        cell=state.cell,
        pbc=state.pbc,
        system_idx=state.system_idx,
    )
    calc = MLIPCalculator(potential)
    neutral = calculator_results(calc, molecule)[0]
    ion = molecule.copy()
    ion.info.update(charge=1, spin=2)
    cation = calculator_results(calc, ion)[0]
    assert abs(cation - neutral) > 1e-4  # the conditioning matters
    for charge, spin, expected in ((1.0, 2.0, cation), (0.0, 0.0, neutral), (None, None, neutral)):
        extra = (
            {} if charge is None else dict(charge=torch.tensor([charge]), spin=torch.tensor([spin]))
        )
        energy = model(SimpleNamespace(**fields, **extra))["energy"].item()
        assert abs(energy - expected) < 1e-9, (charge, spin)


def test_unknown_element_and_close_atoms_are_named():
    model = MLIPTorchSimModel(tiny_potential("facet", species=SPECIES), device="cpu")
    copper = bulk("Cu", "fcc", a=3.6)
    state = ts.io.atoms_to_state([rattled_silicon(), copper], CPU, torch.float64)
    with pytest.raises(
        UnknownElementError, match="element Cu is not known to this model, which knows H, C, O, Si"
    ):
        model(state)
    crowded = rattled_silicon()
    crowded.positions[1] = crowded.positions[0] + [0.2, 0.0, 0.0]
    state = ts.io.atoms_to_state([rattled_silicon(), crowded], CPU, torch.float64)
    with pytest.raises(AtomsTooCloseError, match=r"system 1: atoms 0 \(Si\) and 1 \(Si\)"):
        model(state)


def test_non_finite_results_name_the_system():
    potential = tiny_potential("facet", species=SPECIES)
    potential.e0[SPECIES.index(8)] = float("nan")  # oxygen: only the third structure has it
    state = ts.io.atoms_to_state(periodic_structures(), CPU, torch.float64)
    with pytest.raises(
        NonFiniteOutputError, match=r"not finite \(NaN or inf\) for system\(s\) 2:"
    ) as caught:
        MLIPTorchSimModel(potential, device="cpu")(state)
    assert caught.value.systems == [2]  # what the batched drivers name structures by
    assert "system" not in caught.value.reason


def test_what_batches_and_the_cpu_memory_budget():
    from ase.constraints import FixAtoms

    from mlip.integrations.torchsim import CPU_BATCH_ATOMS, batchable, memory_budget, to_state

    slab = rattled_silicon()
    slab.pbc = [True, True, False]
    fixed = rattled_silicon()
    fixed.set_constraint(FixAtoms([0]))
    assert batchable(rattled_silicon()) and batchable(ethanol())
    assert not batchable(slab) and not batchable(fixed)
    model = MLIPTorchSimModel(tiny_potential("facet"), device="cpu")
    states = [to_state([a], model) for a in periodic_structures()]
    assert memory_budget(model, states) == ("n_atoms", CPU_BATCH_ATOMS)
    assert memory_budget(model, states, max_atoms=100) == ("n_atoms", 100.0)


def test_only_the_integration_imports_torch_sim():
    """torch_sim is imported by mlip.integrations.torchsim alone, which only the batched drivers
    (mlip.sim.batch) import; mlip, its simulation code and its commands import without it."""
    package = Path(mlip.__file__).parent
    importers = {
        "torch_sim": {package / "integrations" / "torchsim.py"},
        "mlip.integrations.torchsim": {package / "sim" / "batch.py"},
    }
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                for module, allowed in importers.items():
                    if name == module or name.startswith(f"{module}."):
                        assert path in allowed, (path, name)
                assert not name.startswith("mlip.sim.batch") or path.parent.name == "commands"
    modules = "mlip, mlip.integrations, mlip.sim, mlip.commands.relax, mlip.commands.md"
    code = f"import sys, {modules}; assert 'torch_sim' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gpu_memory_budget_asks_torch_sim(monkeypatch):
    """On a GPU torch-sim measures what fits (faked here: no GPU needed); a molecule, which has
    no density, is measured by its atoms."""
    import mlip.integrations.torchsim as tsi

    asked = []

    def fits(model, states, metrics, max_atoms):
        asked.append((len(states), max_atoms))
        return 2000.0

    monkeypatch.setattr(tsi, "estimate_max_memory_scaler", fits)
    model = MLIPTorchSimModel(tiny_potential("facet"), device="cpu")
    crystals = [tsi.to_state([a], model) for a in periodic_structures()]
    molecules = [tsi.to_state([ethanol(seed)], model) for seed in range(2)]
    model._device = torch.device("cuda")
    assert tsi.memory_budget(model, crystals) == ("n_atoms_x_density", 1800.0)
    assert asked == [(3, 6)]  # at most twice as many copies as there are states
    assert tsi.memory_budget(model, molecules) == ("n_atoms", 1800.0)
    assert tsi.memory_budget(model, crystals, max_atoms=50) == ("n_atoms", 50.0)


def test_the_cell_step_takes_the_same_frechet_derivatives_by_blocks():
    import torch_sim.math as tsm

    from mlip.integrations.torchsim import _expm_frechet_by_blocks

    generator = torch.Generator().manual_seed(0)
    A, E = (0.1 * torch.randn(3, 3, generator=generator, dtype=torch.float64) for _ in range(2))
    algorithm = tsm.expm_frechet
    expected = algorithm(A, E, compute_expm=False)
    with _expm_frechet_by_blocks():
        assert tsm.expm_frechet is not algorithm
        derivative = tsm.expm_frechet(A, E, compute_expm=False)
        expm_A, _ = tsm.expm_frechet(A, E)
    assert tsm.expm_frechet is algorithm  # put back
    assert torch.allclose(derivative, expected, rtol=0, atol=1e-12)
    assert torch.allclose(expm_A, torch.linalg.matrix_exp(A), rtol=0, atol=1e-12)
    assert derivative.abs().max() > 0.05
