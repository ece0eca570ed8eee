"""Snapshots of short teacher-driven molecular dynamics, started from any sampler's structures.

:class:`TeacherMD` runs Langevin NVT with the teacher as the force field, from a few of the
structures a sampler gave, at each temperature asked for, and keeps every ``interval``-th step:
frames the teacher itself visits at temperature, which static perturbations miss (and on which the
student's MD will run).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from mlip.distill.perturb import unlabelled
from mlip.sim.md import make_integrator, thermalize


def md_config_type(temperature_K: float) -> str:
    """``config_type`` of the snapshots at ``temperature_K``: ``"md_300K"``."""
    return f"md_{temperature_K:g}K"


class TeacherMD:
    """Langevin NVT snapshots driven by the teacher.

    From ``starts`` of the given structures (evenly spaced through them, the first included; None:
    every one) and at each of ``temperatures_K``: velocities drawn from Maxwell-Boltzmann at that
    temperature, ``steps`` steps of ``timestep_fs`` fs, one snapshot every ``interval`` steps
    (``steps // interval`` per run; positions, cell and pbc, ``config_type`` ``"md_<T>K"``). A
    run the teacher fails in (an exception, a non-finite energy) stops there with a warning and
    its snapshots so far; :attr:`failures` names it. Seeded: the same structures, teacher and
    arguments give the same snapshots (for a deterministic teacher).

    Args:
        temperatures_K: temperatures, K.
        steps: MD steps per run (0: no MD).
        interval: steps between snapshots.
        timestep_fs: time step, fs.
        friction_per_fs: Langevin friction, 1/fs.
        starts: how many structures to start from (None: all).
        seed: seed of the velocities and the Langevin noise.
    """

    def __init__(
        self,
        temperatures_K: Sequence[float] = (300.0,),
        steps: int = 200,
        interval: int = 10,
        timestep_fs: float = 2.0,
        friction_per_fs: float = 0.02,
        starts: int | None = 1,
        seed: int = 0,
    ) -> None:
        if not (
            isinstance(steps, int) and steps >= 0 and isinstance(interval, int) and interval > 0
        ):
            raise ValueError(f"md.steps={steps!r} (>= 0) and md.interval={interval!r} (> 0)")
        if any(not float(t) > 0 for t in temperatures_K):
            raise ValueError(f"md.temperatures_K={list(temperatures_K)}: positive temperatures")
        if starts is not None and not (isinstance(starts, int) and starts > 0):
            raise ValueError(f"md.starts={starts!r}: a positive count or null")
        if not (timestep_fs > 0 and friction_per_fs >= 0):
            raise ValueError(f"md.timestep_fs={timestep_fs} (> 0), friction_per_fs (>= 0)")
        self.temperatures_K = [float(t) for t in temperatures_K]
        self.steps = steps
        self.interval = interval
        self.timestep_fs = float(timestep_fs)
        self.friction_per_fs = float(friction_per_fs)
        self.starts = starts
        self.seed = int(seed)
        self.failures: list[str] = []

    def start_indices(self, count: int) -> list[int]:
        """Which of ``count`` structures the runs start from (evenly spaced, the first included)."""
        if count == 0 or self.steps == 0:
            return []
        if self.starts is None or self.starts >= count:
            return list(range(count))
        return sorted({int(i) for i in np.linspace(0, count - 1, self.starts).round()})

    def frames(self, structures: Sequence[Atoms], teacher: Calculator) -> Iterator[Atoms]:
        """The snapshots of every run: start by start, temperature by temperature, in time order."""
        self.failures = []
        for start in self.start_indices(len(structures)):
            for t, temperature in enumerate(self.temperatures_K):
                rng = np.random.default_rng([self.seed, start, t])
                yield from self._run(structures[start], start, temperature, teacher, rng)

    def _run(
        self,
        structure: Atoms,
        start: int,
        temperature: float,
        teacher: Calculator,
        rng: np.random.Generator,
    ) -> Iterator[Atoms]:
        atoms = unlabelled(structure)
        atoms.calc = teacher
        thermalize(atoms, temperature, rng)
        dyn = make_integrator(
            atoms, "nvt", temperature, self.timestep_fs, "langevin", self.friction_per_fs, rng=rng
        )
        kind = md_config_type(temperature)
        where = (
            f"MD at {temperature:g} K from structure {start} ({structure.get_chemical_formula()})"
        )
        for block in range(self.steps // self.interval):
            try:
                dyn.run(self.interval)
                energy = atoms.get_potential_energy()
            except Exception as err:  # any teacher, any failure: the run stops, the rest goes on
                self._failed(
                    f"{where}: the teacher failed at step {block * self.interval}: {err!r}"
                )
                return
            if not np.isfinite(energy) or not np.isfinite(atoms.positions).all():
                self._failed(f"{where}: non-finite energy or positions at step {dyn.nsteps}")
                return
            snapshot = unlabelled(atoms)
            snapshot.info.update(
                config_type=kind,
                source=structure.info.get("source", f"structure {start}"),
                md_step=int(dyn.nsteps),
            )
            yield snapshot

    def _failed(self, message: str) -> None:
        self.failures.append(message)
        warnings.warn(message, stacklevel=3)


__all__ = ["TeacherMD", "md_config_type"]
