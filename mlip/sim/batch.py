"""Many structures at once: batched relaxation and MD through torch-sim.

:func:`relax_batch` and :func:`md_batch` keep the criteria, step limits and outputs of
:func:`mlip.sim.relax.relax` and :func:`mlip.sim.md.run_md`, but every step is one model call for
a whole batch of structures. Needs torch-sim (``pip install "mlip[torchsim]"``); every torch-sim
call goes through :mod:`mlip.integrations.torchsim`. Structures must be :func:`batchable`
(periodic in all three directions or in none, without ASE constraints); relax or run the others
one at a time.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from typing import IO, Any

import ase.io
import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress
from tqdm import tqdm

from mlip.errors import GeometryError, NonFiniteOutputError
from mlip.integrations import torchsim as tsi
from mlip.integrations.torchsim import MLIPTorchSimModel, batchable
from mlip.sim.io import is_bulk
from mlip.sim.md import MDResult, thermalize
from mlip.sim.relax import RelaxResult, RelaxStep

__all__ = ["MLIPTorchSimModel", "batchable", "md_batch", "relax_batch"]

Paths = Sequence[str | os.PathLike | None]


def relax_batch(
    structures: Sequence[Atoms],
    model: MLIPTorchSimModel,
    fmax: float = 0.05,
    steps: int = 500,
    relax_cell: bool | None = None,
    smax_GPa: float = 0.1,
    trajectories: Paths | None = None,
    names: Sequence[str] | None = None,
    max_atoms: int | None = None,
    progress: bool = False,
) -> list[RelaxResult]:
    """Relax copies of ``structures`` with torch-sim's batched FIRE (ASE's FIRE update; with the
    cell, through the Fréchet cell filter, as :func:`mlip.sim.relax.relax` does) until, for each,
    every force is below ``fmax`` eV/Å and, when its cell is relaxed, every stress component is
    below ``smax_GPa`` GPa, or it has taken ``steps`` steps.

    ``relax_cell`` (default: for periodic structures) relaxes the cells too. A structure leaves
    the batch as soon as it is done and a waiting one takes its place, within the memory budget
    of :func:`mlip.integrations.torchsim.memory_budget` (``max_atoms`` atoms if given).
    ``trajectories[i]`` (extxyz) receives every step of structure ``i``; ``names[i]`` names it in
    errors (a structure the model cannot take raises its error with that name); ``progress``
    shows a bar of finished and converged structures on stderr (on a terminal).

    Returns one :class:`~mlip.sim.relax.RelaxResult` per structure, in input order.
    """
    if relax_cell and not all(is_bulk(a) for a in structures):
        raise ValueError("cell relaxation needs structures periodic in all three directions")
    for i, atoms in enumerate(structures):
        if not batchable(atoms):
            raise ValueError(f"structure {i} cannot be batched: relax it with mlip.sim.relax")
    names = list(names or (f"structure {i}" for i in range(len(structures))))
    trajectories = list(trajectories or [None] * len(structures))
    results: list[RelaxResult | None] = [None] * len(structures)
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i, atoms in enumerate(structures):
        cell = is_bulk(atoms) if relax_cell is None else relax_cell
        groups.setdefault((cell, is_bulk(atoms)), []).append(i)
    bar = tqdm(
        total=len(structures),
        unit="structure",
        desc="relaxed",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None if progress else True,  # None: only on a terminal
    )
    with bar, ExitStack() as files:
        for (cell, _), ids in groups.items():
            group = _RelaxGroup(model, cell, fmax, steps, smax_GPa, bar)
            found = group.run(
                [structures[i] for i in ids],
                [names[i] for i in ids],
                [trajectories[i] for i in ids],
                files,
                max_atoms,
            )
            for i, result in zip(ids, found, strict=True):
                results[i] = result
    return results


class _RelaxGroup:
    """One batched relaxation of structures that share cell relaxation and periodicity."""

    def __init__(self, model, relax_cell: bool, fmax: float, steps: int, smax_GPa: float, bar):
        self.model, self.relax_cell = model, relax_cell
        self.fmax, self.steps, self.smax_GPa, self.bar = fmax, steps, smax_GPa, bar
        self.init, self.step = tsi.fire(model, relax_cell)

    def run(self, structures, names, trajectories, files: ExitStack, max_atoms) -> list:
        n = len(structures)
        taken = np.zeros(n, dtype=int)  # optimiser steps of each structure
        seen = np.full(n, -1)  # the step of each that was last checked
        last: list[RelaxStep | None] = [None] * n
        converged = np.zeros(n, dtype=bool)
        writers: dict[int, IO[str]] = {}
        batcher = self._start(structures, names, max_atoms)
        state, _, current = batcher.next_batch(None, None)
        finished = []
        while state is not None:
            ids = list(current)  # input index of every system in the batch
            energy, fmax, smax = (_numpy(x) for x in self._criteria(state))
            done = np.zeros(len(ids), dtype=bool)
            frames = None
            for b, i in enumerate(ids):
                if seen[i] != taken[i]:  # a new step of structure i
                    seen[i] = taken[i]
                    stress = float(smax[b]) if self.relax_cell else None
                    last[i] = RelaxStep(int(taken[i]), float(energy[b]), float(fmax[b]), stress)
                    converged[i] = fmax[b] <= self.fmax and (
                        stress is None or stress <= self.smax_GPa
                    )
                    if trajectories[i] is not None:
                        if i not in writers:
                            writers[i] = files.enter_context(open(trajectories[i], "w"))  # noqa: SIM115
                        frames = frames or _systems(
                            state, [structures[k] for k in ids], cell=self.relax_cell
                        )
                        ase.io.write(writers[i], frames[b], format="extxyz")
                        writers[i].flush()
                done[b] = converged[i] or taken[i] >= self.steps
            if done.any():
                for b in np.flatnonzero(done):
                    if ids[b] in writers:
                        writers.pop(ids[b]).close()
                # torch-sim 0.3's FIRE step treats the whole batch as a first step (no FIRE
                # mixing, cell-frame forces) when any system in it has just joined: a small
                # detour for the others, not a change of what they converge to
                state, found, current = batcher.next_batch(state, torch.as_tensor(done))
                finished += found
                self.bar.update(int(done.sum()))
                self.bar.set_postfix_str(f"{int(converged.sum())} converged")
                continue  # check the systems that joined before stepping
            state = _calling(self.step, state, ids, names)
            taken[ids] += 1
        final = [
            _systems(s, [a], cell=self.relax_cell)[0]
            for s, a in zip(batcher.restore_original_order(finished), structures, strict=True)
        ]
        return [
            RelaxResult(atoms, bool(converged[i]), last[i], _volume(structures[i]))
            for i, atoms in enumerate(final)
        ]

    def _start(self, structures, names, max_atoms):
        """The in-flight batcher, loaded with every structure's FIRE state (built in batches)."""
        singles = [tsi.to_state([a], self.model) for a in structures]
        scales_with, budget = tsi.memory_budget(self.model, singles, max_atoms)
        metrics = [tsi.memory_metric(s, scales_with) for s in singles]
        started = []
        for chunk in _chunks(metrics, budget):
            state = tsi.to_state([structures[i] for i in chunk], self.model)
            started += _calling(self.init, state, chunk, names).split()
        batcher = tsi.in_flight_batcher(self.model, scales_with, budget)
        batcher.load_states(started)
        return batcher

    def _criteria(self, state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``energy [B]`` eV, largest force ``[B]`` eV/Å and largest stress ``[B]`` GPa (None for
        a fixed cell) of every system in the batch."""
        norms = torch.linalg.vector_norm(state.forces, dim=1)
        fmax = norms.new_zeros(state.n_systems).scatter_reduce(
            0, state.system_idx, norms, reduce="amax"
        )
        smax = state.stress.abs().amax(dim=(1, 2)) / units.GPa if self.relax_cell else None
        return state.energy, fmax, smax


def md_batch(
    structures: Sequence[Atoms],
    model: MLIPTorchSimModel,
    ensemble: str = "nvt",
    temperature_K: float = 300.0,
    timestep_fs: float = 1.0,
    steps: int = 1000,
    seeds: Sequence[int] | None = None,
    keep_velocities: bool = False,
    trajectories: Paths | None = None,
    logs: Paths | None = None,
    interval: int = 10,
    progress: bool = False,
    friction_per_fs: float = 0.01,
    names: Sequence[str] | None = None,
    max_atoms: int | None = None,
) -> list[MDResult]:
    """Run ``steps`` steps of MD on copies of ``structures`` (several copies of one structure
    are replicas), as many at a time as the memory budget allows (``max_atoms`` atoms if given,
    see :func:`mlip.integrations.torchsim.memory_budget`), with torch-sim's integrators.

    ``ensemble``: ``"nve"`` (velocity Verlet) or ``"nvt"`` (Langevin, friction
    ``friction_per_fs`` 1/fs, with the centre of mass held as :func:`mlip.sim.md.run_md` does).
    Momenta are drawn as :func:`mlip.sim.md.run_md` draws them from ``seeds[i]`` (default
    ``i``), so a run starts where ``run_md`` with that seed starts, unless ``keep_velocities``;
    the Langevin noise is seeded by the first seed of each batch. Every ``interval`` steps (and
    at step 0 and the end) ``trajectories[i]`` (extxyz) gets a frame and ``logs[i]`` a line with
    run_md's columns. ``names[i]`` names structure ``i`` in errors.

    Returns one :class:`~mlip.sim.md.MDResult` per structure, in input order (``seconds``: the
    wall time of its batch).
    """
    for i, atoms in enumerate(structures):
        if len(atoms) < 2:
            raise ValueError(f"structure {i}: MD needs at least 2 atoms")
        if not batchable(atoms):
            raise ValueError(f"structure {i} cannot be batched: run it with mlip.sim.md")
    n = len(structures)
    seeds = list(range(n) if seeds is None else seeds)
    trajectories, logs = (list(paths or [None] * n) for paths in (trajectories, logs))
    run = _MDRun(
        model,
        ensemble,
        temperature_K,
        timestep_fs,
        steps,
        interval,
        friction_per_fs,
        list(names or (f"structure {i}" for i in range(n))),
    )
    starts = []
    for atoms, seed in zip(structures, seeds, strict=True):
        atoms = atoms.copy()
        if not keep_velocities:
            thermalize(atoms, temperature_K, np.random.default_rng(seed))
        starts.append(atoms)
    results: list[MDResult | None] = [None] * n
    periodic = [is_bulk(a) for a in starts]
    batches = []
    for kind in sorted(set(periodic)):
        ids = [i for i in range(n) if periodic[i] == kind]
        singles = [tsi.to_state([starts[i]], model) for i in ids]
        scales_with, budget = tsi.memory_budget(model, singles, max_atoms)
        metrics = [tsi.memory_metric(s, scales_with) for s in singles]
        batches += [[ids[k] for k in chunk] for chunk in _chunks(metrics, budget)]
    bar = tqdm(
        total=steps * len(batches),
        unit="step",
        desc="MD",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None if progress else True,
    )
    with bar:
        for ids in batches:
            outs = [[paths[i] for i in ids] for paths in (trajectories, logs)]
            found = run.run([starts[i] for i in ids], ids, seeds[ids[0]], *outs, bar)
            for i, result in zip(ids, found, strict=True):
                results[i] = result
    return results


class _MDRun:
    """MD of batches of structures with one set of integrator settings."""

    def __init__(
        self, model, ensemble, temperature_K, timestep_fs, steps, interval, friction, names
    ):
        self.model, self.ensemble, self.steps, self.interval = model, ensemble, steps, interval
        self.timestep_fs, self.names = timestep_fs, names
        self.init, self.step = tsi.md_integrator(
            model, ensemble, timestep_fs, temperature_K, friction
        )

    def run(self, starts, ids, seed, trajectories, logs, bar) -> list[MDResult]:
        model = self.model
        state = tsi.to_state(starts, model)
        momenta = np.concatenate([a.get_momenta() for a in starts])
        held = self.ensemble == "nvt"  # Langevin: the centre of mass is held, 3N - 3 dof
        dof = torch.tensor([3 * len(a) - (3 if held else 0) for a in starts], device=model.device)
        with ExitStack() as stack:
            stack.enter_context(_seeded(seed, model.device))
            opened = [
                [stack.enter_context(open(p, "w")) if p else None for p in paths]  # noqa: SIM115
                for paths in (trajectories, logs)
            ]
            out = _MDOutput(starts, *opened, self.timestep_fs)
            state = _calling(self.init, state, ids, self.names)
            state.momenta = torch.as_tensor(momenta, device=model.device, dtype=model.dtype)
            start = time.perf_counter()
            temperature = out.report(0, state, model.last_results, dof, start)
            for k in range(1, self.steps + 1):
                state = _calling(self.step, state, ids, self.names)
                if held:
                    _hold_centre_of_mass(state)
                bar.update(1)
                if k % self.interval == 0 or k == self.steps:
                    temperature = out.report(k, state, model.last_results, dof, time.perf_counter())
                    bar.set_postfix_str(f"mean T {temperature.mean():.0f} K")
            seconds = time.perf_counter() - start
        final = _systems(state, starts, cell=False)
        for atoms, p in zip(final, _split(state.momenta, state), strict=True):
            atoms.set_momenta(p)
        return [
            MDResult(atoms, self.steps, seconds, float(t))
            for atoms, t in zip(final, temperature, strict=True)
        ]


class _MDOutput:
    """Trajectory frames and log lines of every system of one MD batch (run_md's format)."""

    def __init__(self, starts, trajectories, logs, timestep_fs):
        self.starts, self.trajectories, self.logs = starts, trajectories, logs
        self.timestep_fs = timestep_fs
        self.periodic = [is_bulk(a) for a in starts]
        self.clock = (0, 0.0)
        for log, periodic in zip(logs, self.periodic, strict=True):
            if log is not None:
                columns = ["step", "time_ps", "Epot_eV", "Ekin_eV", "Etot_eV", "T_K"]
                columns += ["volume_A3", "pressure_GPa"] if periodic else []
                columns += ["steps_per_s", "atom_steps_per_s"]
                log.write("# " + "  ".join(columns) + "\n")

    def report(self, step: int, state, results: dict, dof: torch.Tensor, now: float) -> np.ndarray:
        """Write step ``step``; return the temperature ``[B]`` K of every system."""
        last_step, last_time = self.clock
        rate = (step - last_step) / (now - last_time) if step > last_step else 0.0
        self.clock = (step, now)
        ekin = state.momenta.new_zeros(state.n_systems).index_add_(
            0, state.system_idx, (state.momenta**2).sum(dim=1) / (2 * state.masses)
        )
        temperature = _numpy(2 * ekin / (dof * units.kB))
        if not any(self.trajectories) and not any(self.logs):
            return temperature
        frames = _systems(state, self.starts, results.get("stress"), cell=False)
        ekin, epot = _numpy(ekin), _numpy(state.energy)
        for b, (atoms, p) in enumerate(zip(frames, _split(state.momenta, state), strict=True)):
            atoms.set_momenta(p)
            if self.trajectories[b] is not None:
                ase.io.write(self.trajectories[b], atoms, format="extxyz")
                self.trajectories[b].flush()
            if self.logs[b] is None:
                continue
            values = [f"{step:8d}", f"{step * self.timestep_fs / 1000:10.4f}"]
            values += [f"{x:14.6f}" for x in (epot[b], ekin[b], epot[b] + ekin[b])]
            values += [f"{temperature[b]:9.2f}"]
            if self.periodic[b]:
                volume = atoms.get_volume()
                stress = atoms.calc.results["stress"][:3].sum()  # Voigt: the diagonal first
                pressure = (-stress + 2 * ekin[b] / volume) / 3 / units.GPa
                values += [f"{volume:12.4f}", f"{pressure:10.4f}"]
            values += [f"{rate:10.2f}", f"{rate * len(atoms):12.1f}"]
            self.logs[b].write("  ".join(values) + "\n")
            self.logs[b].flush()
        return temperature


def _calling(fn: Callable, state: Any, ids: Sequence[int], names: Sequence[str]) -> Any:
    """``fn(state)``; an error of the model about systems of the batch (``ids[b]`` is the input
    index of system ``b``) is raised again with their ``names``."""
    try:
        return fn(state)
    except (GeometryError, NonFiniteOutputError) as err:
        systems = getattr(err, "systems", None)
        if systems is None:
            raise
        which = ", ".join(names[ids[b]] for b in systems)
        raise type(err)(f"{which}: {err.reason}") from None


def _chunks(metrics: Sequence[float], budget: float) -> Iterator[list[int]]:
    """Consecutive runs of indices whose ``metrics`` sum to at most ``budget`` (one at least)."""
    chunk, total = [], 0.0
    for i, metric in enumerate(metrics):
        if chunk and total + metric > budget:
            yield chunk
            chunk, total = [], 0.0
        chunk.append(i)
        total += metric
    if chunk:
        yield chunk


def _systems(
    state, templates: Sequence[Atoms], stress: torch.Tensor | None = None, cell: bool = True
) -> list[Atoms]:
    """Copies of ``templates`` (one per system of ``state``) with the state's positions, cell
    (unless not ``cell``: the templates' cells, exactly), energy, forces and stress (the
    state's, else ``stress [B, 3, 3]``) in a ``SinglePointCalculator``."""
    stress = getattr(state, "stress", stress)
    cells = _numpy(state.row_vector_cell).astype(np.float64)
    energy = _numpy(state.energy).astype(np.float64)
    stresses = None if stress is None else _numpy(stress).astype(np.float64)
    positions = _split(state.positions, state)
    forces = _split(state.forces, state)
    frames = []
    for b, template in enumerate(templates):
        atoms = template.copy()
        if cell:
            atoms.set_cell(cells[b])
        atoms.positions = positions[b]
        results = {"energy": energy[b], "free_energy": energy[b], "forces": forces[b]}
        if stresses is not None and is_bulk(template):
            results["stress"] = full_3x3_to_voigt_6_stress(stresses[b])
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def _split(values: torch.Tensor, state) -> list[np.ndarray]:
    """Per-atom ``values [N, ...]`` of ``state`` as one float64 array per system."""
    counts = torch.bincount(state.system_idx, minlength=state.n_systems).tolist()
    return np.split(_numpy(values).astype(np.float64), np.cumsum(counts)[:-1])


def _hold_centre_of_mass(state) -> None:
    """Remove every system's total momentum (what ASE's ``FixCom`` does under Langevin)."""
    idx, masses = state.system_idx, state.masses
    total = state.momenta.new_zeros(state.n_systems, 3).index_add_(0, idx, state.momenta)
    mass = masses.new_zeros(state.n_systems).index_add_(0, idx, masses)
    state.momenta = state.momenta - masses[:, None] * (total / mass[:, None])[idx]


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's random numbers on the CPU and ``device`` seeded by ``seed`` inside, the global
    generators as they were afterwards."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _numpy(value: torch.Tensor | None) -> np.ndarray | None:
    return None if value is None else value.detach().cpu().numpy()


def _volume(atoms: Atoms) -> float:
    return atoms.get_volume() if atoms.cell.rank == 3 else 0.0
