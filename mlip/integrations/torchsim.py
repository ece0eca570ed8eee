"""An mlip model as a torch-sim ``ModelInterface``, and the few torch-sim calls that
:mod:`mlip.sim.batch` (batched relaxation and MD) makes, so that differences between torch-sim
versions stay in this one module.

Needs the ``torchsim`` extra (``pip install "mlip[torchsim]"``: torch-sim-atomistic >= 0.3.0); this
module is the only one in mlip that imports ``torch_sim``, and only :mod:`mlip.sim.batch` imports it.

Every call builds the graphs of the state's systems with :func:`mlip.data.graph.atoms_to_graph`, the
neighbour list and batch layout of :class:`~mlip.calculator.MLIPCalculator` (without its Verlet skin:
a fresh list each call), so both give the same energies, forces and stress.

State fields read (torch-sim 0.3 and later; a ``dict`` with the same keys also works):
``positions [N, 3]`` Å; ``atomic_numbers [N]``; ``cell [B, 3, 3]`` Å with the lattice vectors as
*columns* (torch-sim's convention; its transpose ``row_vector_cell``, rows as in ASE and mlip, is
used where the state has it); ``pbc``, one bool or ``[3]`` bools (or ``[B, 3]``); the system of every
atom, ``system_idx [N]`` (``batch`` before torch-sim 0.3; all zeros when absent); and, where the
state has them, ``charge [B]`` (total charge, e) and ``spin [B]`` (multiplicity ``2S + 1``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch_sim as ts
import torch_sim.math as tsm
from ase import Atoms, units
from torch_geometric.data import Batch
from torch_sim.autobatching import calculate_memory_scaler, estimate_max_memory_scaler
from torch_sim.models.interface import ModelInterface
from torch_sim.state import SimState

from mlip import keys
from mlip.data.graph import MIN_DISTANCE, atoms_to_graph
from mlip.errors import GeometryError, NonFiniteOutputError, UnknownElementError, unknown_elements
from mlip.nn.potential import Potential

__all__ = [
    "CPU_BATCH_ATOMS",
    "MLIPTorchSimModel",
    "batchable",
    "fire",
    "in_flight_batcher",
    "md_integrator",
    "memory_budget",
    "memory_metric",
    "to_state",
]

CPU_BATCH_ATOMS = 2048
"""Most atoms in one batch on the CPU (torch-sim estimates GPU memory only): throughput per atom
stops growing well before this, and memory stays small."""


class MLIPTorchSimModel(ModelInterface):
    """torch-sim model of an mlip model file, the bundled default model or a loaded ``Potential``.

    ``forward(state)`` returns detached tensors in ``dtype`` on ``device``: ``energy [B]`` eV,
    ``forces [N, 3]`` eV/Å (in the state's atom order) and ``stress [B, 3, 3]`` eV/Å³ with ASE's
    sign (positive = tensile; torch-sim's convention too), zero for a system that is not periodic
    or has no cell volume.

    Args:
        model: path of a model file, ``"default"`` (or None) for the bundled default model, or a
            loaded ``Potential``, which is moved to ``device`` / ``dtype`` in place and used in
            eval mode.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"`` (as torch-sim's
            models do).
        dtype: ``"float32"``, ``"float64"`` or a ``torch.dtype``; default: the model's own.
        compute_forces: return ``forces``.
        compute_stress: return ``stress`` (torch-sim's cell filters and NPT need it).
        min_distance: smallest allowed interatomic distance, Å; closer atoms raise
            :class:`~mlip.errors.AtomsTooCloseError` naming the system and both atoms (0: no check).

    Errors about particular systems carry ``systems`` (their indices in the state) and ``reason``
    (the message without them).

    Charge and spin reach a model built with ``charge_spin`` from ``state.charge`` and
    ``state.spin`` (read as the multiplicity, OMol25's convention); without them, or for a spin
    of 0 (no multiplicity is 0: torch-sim's value when none was set), a neutral singlet.
    """

    def __init__(
        self,
        model: str | os.PathLike | Potential | None = "default",
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        compute_forces: bool = True,
        compute_stress: bool = True,
        min_distance: float = MIN_DISTANCE,
    ) -> None:
        super().__init__()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self.potential = _load_potential(model, self._device, dtype).eval()
        self._dtype = self.potential.e0.dtype
        self._compute_forces = bool(compute_forces)
        self._compute_stress = bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff
        self.cutoff = self.potential.cutoff
        self.min_distance = float(min_distance)
        self._known_numbers = set(self.potential.species.tolist())
        self.last_results: dict[str, torch.Tensor] | None = None
        """What the latest ``forward`` returned (torch-sim's integrators keep no stress)."""

    @property
    def compute_forces(self) -> bool:
        """Whether ``forward`` returns forces."""
        return self._compute_forces

    @compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        self._compute_forces = bool(value)

    @property
    def compute_stress(self) -> bool:
        """Whether ``forward`` returns stress."""
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    @property
    def elements(self) -> list[str]:
        """Chemical symbols the model knows."""
        return self.potential.elements

    def forward(self, state: Any) -> dict[str, torch.Tensor]:
        """Energy ``[B]`` eV, forces ``[N, 3]`` eV/Å and stress ``[B, 3, 3]`` eV/Å³ (ASE sign) of a
        torch-sim ``SimState`` (or a dict of its fields) of ``B`` systems and ``N`` atoms.

        Raises :class:`~mlip.errors.UnknownElementError` naming elements the model lacks,
        :class:`~mlip.errors.GeometryError` (``AtomsTooCloseError``) naming the system, and
        :class:`~mlip.errors.NonFiniteOutputError` naming the systems with NaN or inf results.
        """
        if isinstance(state, dict):
            state = SimpleNamespace(**state)
        atoms_list, order = self.state_to_atoms(state)
        graphs = []
        for b, atoms in enumerate(atoms_list):
            try:
                graph = atoms_to_graph(
                    atoms, self.cutoff, dtype=self._dtype, min_distance=self.min_distance
                )
            except GeometryError as err:
                raise _for_systems(type(err), f"system {b}: {err}", [b], str(err)) from None
            graphs.append(graph)
        batch = Batch.from_data_list(graphs).to(self._device)
        periodic = torch.tensor(
            [bool(a.pbc.any()) and a.cell.rank == 3 for a in atoms_list], device=self._device
        )
        want_stress = self._compute_stress and bool(periodic.any())
        with torch.enable_grad():  # forces and stress are gradients, also under torch.no_grad()
            out = self.potential(
                batch, forces=self._compute_forces, stress=want_stress, create_graph=False
            )

        energy = out[keys.ENERGY].detach()
        results = {"energy": energy}
        bad = ~energy.isfinite()
        if self._compute_forces:
            forces = torch.empty_like(out[keys.FORCES])
            forces[order.to(self._device)] = out[keys.FORCES].detach()
            results["forces"] = forces
            bad[batch[keys.BATCH][~out[keys.FORCES].isfinite().all(dim=1)]] = True
        if self._compute_stress:
            stress = (
                out[keys.STRESS].detach() if want_stress else energy.new_zeros(len(energy), 3, 3)
            )
            results["stress"] = torch.where(periodic[:, None, None], stress, 0.0)
            bad |= ~results["stress"].isfinite().flatten(1).all(dim=1)
        if bool(bad.any()):
            systems = torch.nonzero(bad).flatten().tolist()
            listed = ", ".join(map(str, systems))
            what = "the model's energy, forces or stress are not finite (NaN or inf)"
            why = "the model file is broken, or the structure is far outside what it was trained on"
            raise _for_systems(
                NonFiniteOutputError,
                f"{what} for system(s) {listed}: {why}",
                systems,
                f"{what}: {why}",
            )
        self.last_results = results
        return results

    def state_to_atoms(self, state: Any) -> tuple[list[Atoms], torch.Tensor]:
        """The systems of ``state`` as ASE ``Atoms`` (rows of the cell as lattice vectors, charge
        and spin in ``info``) and ``order [N]``: the state's index of each of their atoms, system
        after system. Raises :class:`~mlip.errors.UnknownElementError` for unknown elements."""
        numbers = _numpy(state.atomic_numbers).astype(np.int64)
        unknown = set(np.unique(numbers).tolist()) - self._known_numbers
        if unknown:
            raise UnknownElementError(unknown_elements(unknown, self.elements))
        positions = _numpy(state.positions).astype(np.float64).reshape(-1, 3)
        row_cell = getattr(state, "row_vector_cell", None)
        if row_cell is None:
            row_cell = torch.as_tensor(state.cell).transpose(-1, -2)  # columns -> rows
        row_cell = _numpy(row_cell).astype(np.float64).reshape(-1, 3, 3)
        n_systems = len(row_cell)
        system_idx = _system_index(state, len(numbers))
        if len(system_idx) and (system_idx.min() < 0 or system_idx.max() >= n_systems):
            raise ValueError(
                f"the state's system indices run from {system_idx.min()} to {system_idx.max()}, "
                f"but it has {n_systems} cell(s)"
            )
        pbc = np.broadcast_to(_numpy(state.pbc).astype(bool), (n_systems, 3))
        charge = _per_system(getattr(state, "charge", None), n_systems, 0.0)
        spin = _per_system(getattr(state, "spin", None), n_systems, 1.0)
        spin[spin == 0] = 1.0
        order = np.argsort(system_idx, kind="stable")
        ends = np.cumsum(np.bincount(system_idx, minlength=n_systems))
        atoms_list = []
        for b, atom_ids in enumerate(np.split(order, ends[:-1])):
            atoms = Atoms(
                numbers=numbers[atom_ids],
                positions=positions[atom_ids],
                cell=row_cell[b],
                pbc=pbc[b],
            )
            atoms.info[keys.CHARGE] = float(charge[b])
            atoms.info[keys.SPIN] = float(spin[b])
            atoms_list.append(atoms)
        return atoms_list, torch.from_numpy(order)


def _load_potential(
    model: str | os.PathLike | Potential | None,
    device: torch.device,
    dtype: torch.dtype | str | None,
) -> Potential:
    """``model`` (a file, ``"default"`` / None, or a ``Potential``) on ``device`` in ``dtype``."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if isinstance(model, Potential):
        return model.to(device=device, dtype=dtype) if dtype else model.to(device)
    if model is not None and not isinstance(model, str | os.PathLike):
        raise TypeError(
            f"model must be a model file, 'default' or an mlip.Potential, got {type(model).__name__}"
        )
    from mlip.export import load_model

    potential = load_model("default" if model is None else model, device=device, dtype=dtype)
    potential.requires_grad_(False)
    return potential


def _numpy(value: Any) -> np.ndarray:
    """A tensor, array or Python value as a NumPy array (on the CPU, detached)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _system_index(state: Any, n_atoms: int) -> np.ndarray:
    """``[N]`` system index of every atom: ``system_idx`` (torch-sim >= 0.3), else ``batch``
    (earlier), else zeros."""
    for name in ("system_idx", "batch"):
        value = getattr(state, name, None)
        if value is not None:
            return _numpy(value).astype(np.int64).reshape(-1)
    return np.zeros(n_atoms, dtype=np.int64)


def _per_system(value: Any, n_systems: int, default: float) -> np.ndarray:
    """``[B]`` float64 values of a per-system field (a scalar broadcast), ``default`` if None."""
    if value is None:
        return np.full(n_systems, default)
    return np.broadcast_to(_numpy(value).astype(np.float64).reshape(-1), (n_systems,)).copy()


def _for_systems(kind: type[Exception], message: str, systems: list[int], reason: str) -> Exception:
    """``kind(message)`` carrying ``systems`` (indices in the state) and ``reason``."""
    err = kind(message)
    err.systems, err.reason = systems, reason
    return err


def batchable(atoms: Atoms) -> bool:
    """Whether torch-sim can take ``atoms`` into a batch: periodic in all three directions or in
    none (torch-sim 0.3 keeps one ``pbc`` flag per state), and without ASE constraints (which
    torch-sim's optimisers and integrators do not know)."""
    return (bool(atoms.pbc.all()) or not atoms.pbc.any()) and not atoms.constraints


def to_state(structures: Sequence[Atoms], model: MLIPTorchSimModel) -> SimState:
    """One torch-sim state of ``structures`` (all :func:`batchable`, all periodic or none) on the
    model's device in its dtype."""
    return ts.io.atoms_to_state(list(structures), model.device, model.dtype)


def fire(model: MLIPTorchSimModel, relax_cell: bool) -> tuple[Callable, Callable]:
    """torch-sim's batched FIRE, ``(init(state), step(state))``, with ASE's parameters and update
    rule (``md_flavor="ase_fire"``: dt 0.1, maxstep 0.2 Å, ...): on the positions, and with
    ``relax_cell`` on the cell too through the Fréchet cell filter (ASE's ``FrechetCellFilter``,
    cell factor = number of atoms, zero external pressure)."""
    if not relax_cell:
        return ts.optimizers.fire(model, md_flavor="ase_fire")
    init, step = ts.optimizers.frechet_cell_fire(model, md_flavor="ase_fire")

    def step_by_blocks(state: SimState) -> SimState:
        with _expm_frechet_by_blocks():
            return step(state)

    return init, step_by_blocks


@contextlib.contextmanager
def _expm_frechet_by_blocks() -> Iterator[None]:
    """Inside, torch-sim's ``expm_frechet`` is its block method (``expm_frechet_block_enlarge``).

    torch-sim 0.3's Fréchet cell step takes nine Fréchet derivatives of the matrix exponential
    per system and step, one call each, by Al-Mohy and Higham's algorithm written in Python: about
    1 ms a call on a CPU, more than the model itself for small cells. The block method, one
    ``torch.matrix_exp`` of ``[[A, E], [0, A]]``, gives the same derivative to rounding in a
    tenth of the time. Swaps a module attribute: not for threads that run torch-sim meanwhile.
    """
    algorithm = tsm.expm_frechet

    def by_blocks(A, E, method=None, compute_expm=True, check_finite=True):  # noqa: ARG001, N803
        expm_A, derivative = tsm.expm_frechet_block_enlarge(A, E)
        return (expm_A, derivative) if compute_expm else derivative

    tsm.expm_frechet = by_blocks
    try:
        yield
    finally:
        tsm.expm_frechet = algorithm


def md_integrator(
    model: MLIPTorchSimModel,
    ensemble: str,
    timestep_fs: float,
    temperature_K: float,
    friction_per_fs: float,
) -> tuple[Callable, Callable]:
    """torch-sim's ``(init(state), step(state))`` for ``"nve"`` (velocity Verlet) or ``"nvt"``
    (Langevin, BAOAB, friction ``friction_per_fs`` 1/fs), in ASE's units (eV, Å, amu; the time
    unit Å·sqrt(amu/eV), torch-sim's too)."""
    as_tensor = {"device": model.device, "dtype": model.dtype}
    dt = torch.tensor(timestep_fs * units.fs, **as_tensor)
    kT = torch.tensor(temperature_K * units.kB, **as_tensor)
    if ensemble == "nve":
        return ts.integrators.nve(model, dt=dt, kT=kT)
    if ensemble == "nvt":
        gamma = torch.tensor(friction_per_fs / units.fs, **as_tensor)
        return ts.integrators.nvt_langevin(model, dt=dt, kT=kT, gamma=gamma)
    raise ValueError(f"torch-sim runs NVE and Langevin NVT here, not {ensemble!r}")


def memory_metric(state: SimState, scales_with: str) -> float:
    """torch-sim's memory measure of a one-system ``state``: ``"n_atoms"`` or
    ``"n_atoms_x_density"`` (atoms x atoms per nm³)."""
    return float(calculate_memory_scaler(state, scales_with))


def memory_budget(
    model: MLIPTorchSimModel, states: Sequence[SimState], max_atoms: int | None = None
) -> tuple[str, float]:
    """``(measure, budget)``: how much of torch-sim's memory measure (:func:`memory_metric`) one
    batch of the one-system ``states`` may hold.

    ``max_atoms`` (or, on the CPU, :data:`CPU_BATCH_ATOMS`) bounds the atoms; on a GPU, torch-sim
    measures the peak memory of growing batches of the smallest and largest state (at most twice
    as many copies as there are states; its messages go to stderr) and keeps 90% of what fits.
    """
    if max_atoms or model.device.type == "cpu":
        return "n_atoms", float(max_atoms or CPU_BATCH_ATOMS)
    periodic = all(bool(s.pbc) for s in states)  # a molecule has no density
    scales_with = model.memory_scales_with if periodic else "n_atoms"
    metrics = [memory_metric(s, scales_with) for s in states]
    with contextlib.redirect_stdout(sys.stderr):
        # torch-sim 0.3 compares its "max_atoms" with the number of copies it tries
        fits = estimate_max_memory_scaler(model, list(states), metrics, max_atoms=2 * len(states))
    return scales_with, max(0.9 * float(fits), max(metrics))


def in_flight_batcher(
    model: MLIPTorchSimModel, scales_with: str, budget: float
) -> ts.InFlightAutoBatcher:
    """torch-sim's in-flight batcher: finished systems leave the batch and waiting ones take
    their place while the batch stays within ``budget`` of ``scales_with``
    (see :func:`memory_budget`); ``next_batch`` also returns the input index of every system."""
    return ts.InFlightAutoBatcher(
        model, memory_scales_with=scales_with, max_memory_scaler=budget, return_indices=True
    )
