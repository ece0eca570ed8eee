"""Molecular dynamics with ASE integrators: NVE (velocity Verlet), NVT (Langevin or Bussi) and
NPT (Martyna-Tobias-Klein, isotropic), with an extxyz trajectory and a log of temperature, energies
and throughput."""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass

import ase.io
import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.md import velocitydistribution
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.verlet import VelocityVerlet
from threadpoolctl import threadpool_limits

from mlip.sim.io import is_bulk, snapshot

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "bussi")


@dataclass
class MDResult:
    """Outcome of :func:`run_md`: the final structure and the throughput."""

    atoms: Atoms
    steps: int
    seconds: float  # wall time of the integration, s
    temperature_K: (
        float  # final, K, as the log counts it (ASE: 3N degrees of freedom, 3N - 3 under FixCom)
    )

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("inf")

    @property
    def atom_steps_per_second(self) -> float:
        return self.steps_per_second * len(self.atoms)


def make_integrator(
    atoms: Atoms,
    ensemble: str = "nvt",
    temperature_K: float = 300.0,
    timestep_fs: float = 1.0,
    thermostat: str = "langevin",
    friction_per_fs: float = 0.01,
    tau_fs: float = 100.0,
    pressure_GPa: float = 0.0,
    tau_p_fs: float = 1000.0,
    rng: np.random.Generator | None = None,
) -> MolecularDynamics:
    """The ASE integrator for ``ensemble`` (``"nve"``, ``"nvt"`` or ``"npt"``) on ``atoms``.

    NVT uses Langevin (``friction_per_fs``, 1/fs; the centre of mass is held by ``FixCom``) or
    Bussi's stochastic velocity rescaling (time constant ``tau_fs``); NPT uses ASE's
    ``IsotropicMTKNPT`` (thermostat ``tau_fs``, barostat ``tau_p_fs``, pressure ``pressure_GPa``).
    """
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        return VelocityVerlet(atoms, dt)
    if ensemble == "nvt":
        if thermostat == "langevin":
            if not any(isinstance(c, FixCom) for c in atoms.constraints):
                atoms.set_constraint([*atoms.constraints, FixCom()])
            return Langevin(
                atoms,
                dt,
                temperature_K=temperature_K,
                friction=friction_per_fs / units.fs,
                fixcm=False,
                rng=rng,
            )
        if thermostat == "bussi":
            from ase.md.bussi import Bussi  # ASE >= 3.24

            return Bussi(atoms, dt, temperature_K=temperature_K, taut=tau_fs * units.fs, rng=rng)
        raise ValueError(f"unknown thermostat {thermostat!r}: choose from {', '.join(THERMOSTATS)}")
    if ensemble == "npt":
        if not is_bulk(atoms):
            raise ValueError("NPT needs a structure periodic in all three directions")
        from ase.md.nose_hoover_chain import IsotropicMTKNPT  # ASE >= 3.26

        return IsotropicMTKNPT(
            atoms,
            dt,
            temperature_K=temperature_K,
            pressure_au=pressure_GPa * units.GPa,
            tdamp=tau_fs * units.fs,
            pdamp=tau_p_fs * units.fs,
        )
    raise ValueError(f"unknown ensemble {ensemble!r}: choose from {', '.join(ENSEMBLES)}")


def thermalize(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_K`` K with zero total momentum."""
    draw = getattr(velocitydistribution, "thermalize_momenta", None)  # ASE >= 3.29
    if draw is None:
        draw = velocitydistribution.MaxwellBoltzmannDistribution
    draw(atoms, temperature_K=temperature_K, rng=rng)
    velocitydistribution.Stationary(atoms)


def run_md(
    atoms: Atoms,
    calculator: Calculator,
    ensemble: str = "nvt",
    temperature_K: float = 300.0,
    timestep_fs: float = 1.0,
    steps: int = 1000,
    seed: int = 0,
    keep_velocities: bool = False,
    trajectory: str | os.PathLike | None = None,
    log: str | os.PathLike | None = None,
    interval: int = 10,
    progress: bool = False,
    **integrator_options,
) -> MDResult:
    """Run ``steps`` steps of MD on a copy of ``atoms``.

    Momenta are drawn from a Maxwell-Boltzmann distribution at ``temperature_K`` (seeded by
    ``seed``, which also seeds the thermostat noise) unless ``keep_velocities``. Every ``interval``
    steps (and at step 0) a frame with energy, forces and stress goes to ``trajectory`` (extxyz)
    and a line to ``log``: time (ps), potential, kinetic and total energy (eV), temperature (K),
    volume (Å³) and pressure (GPa, kinetic part included) of periodic cells, and the throughput
    since the previous line (steps/s, atom-steps/s). ``integrator_options`` go to
    :func:`make_integrator`.
    """
    if len(atoms) < 2:
        raise ValueError(
            f"MD needs at least 2 atoms, got {len(atoms)}: the total momentum is removed, so a "
            "single atom cannot move"
        )
    if not np.isfinite(temperature_K):
        raise ValueError(f"temperature {temperature_K} K is not a finite number")
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.calc = calculator
    atoms.get_forces()  # a structure the model cannot take fails here, before any output
    if not keep_velocities:
        thermalize(atoms, temperature_K, rng)
    dynamics = make_integrator(
        atoms,
        ensemble,
        temperature_K=temperature_K,
        timestep_fs=timestep_fs,
        rng=rng,
        **integrator_options,
    )
    periodic = is_bulk(atoms)
    n = len(atoms)
    with ExitStack() as stack:
        # small numpy/scipy linear algebra (cell filters, integrators) only loses from BLAS threads,
        # badly so on a busy machine: a 3x3 solve took ms instead of us with two OpenBLAS threads
        stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        traj = stack.enter_context(open(trajectory, "w")) if trajectory else None  # noqa: SIM115
        logfile = stack.enter_context(open(log, "w")) if log else None  # noqa: SIM115
        bar = None
        if progress:
            from tqdm import tqdm

            bar = stack.enter_context(
                tqdm(total=steps, unit="step", file=sys.stderr, dynamic_ncols=True)
            )
        if logfile is not None:
            columns = ["step", "time_ps", "Epot_eV", "Ekin_eV", "Etot_eV", "T_K"]
            columns += ["volume_A3", "pressure_GPa"] if periodic else []
            columns += ["steps_per_s", "atom_steps_per_s"]
            logfile.write("# " + "  ".join(columns) + "\n")
        clock = {"last": time.perf_counter(), "step": 0}

        def report() -> None:
            step = dynamics.nsteps
            now = time.perf_counter()
            done = step - clock["step"]
            rate = done / (now - clock["last"]) if done else 0.0
            clock.update(last=now, step=step)
            epot = atoms.get_potential_energy()
            ekin = atoms.get_kinetic_energy()
            temperature = atoms.get_temperature()
            if traj is not None:
                ase.io.write(traj, snapshot(atoms, drop=(FixCom,)), format="extxyz")
                traj.flush()
            if logfile is not None:
                values = [f"{step:8d}", f"{step * timestep_fs / 1000:10.4f}"]
                values += [f"{x:14.6f}" for x in (epot, ekin, epot + ekin)] + [
                    f"{temperature:9.2f}"
                ]
                if periodic:
                    stress = atoms.get_stress(voigt=False, include_ideal_gas=True)
                    pressure = -np.trace(stress) / 3 / units.GPa
                    values += [f"{atoms.get_volume():12.4f}", f"{pressure:10.4f}"]
                values += [f"{rate:10.2f}", f"{rate * n:12.1f}"]
                logfile.write("  ".join(values) + "\n")
                logfile.flush()
            if bar is not None:
                bar.set_postfix(T=f"{temperature:.0f} K", E=f"{(epot + ekin) / n:.4f} eV/atom")

        def tick() -> None:
            if bar is not None:
                bar.update(dynamics.nsteps - bar.n)

        dynamics.attach(report, interval=interval)
        dynamics.attach(tick, interval=1)
        start = time.perf_counter()
        clock["last"] = start
        dynamics.run(steps)
        seconds = time.perf_counter() - start
        if dynamics.nsteps % interval:
            report()
    # with FixCom still attached, as in the log (ASE counts its degrees of freedom)
    return MDResult(snapshot(atoms, drop=(FixCom,)), steps, seconds, atoms.get_temperature())
