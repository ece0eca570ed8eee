"""Geometry relaxation: positions and (for periodic structures) the cell, with ASE optimisers."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import ase.io
import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE, LBFGS
from threadpoolctl import threadpool_limits

from mlip.sim.io import is_bulk, snapshot

OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}


@dataclass
class RelaxStep:
    """The state after ``step`` optimiser steps (0 = the input structure)."""

    step: int
    energy: float  # eV
    fmax: float  # eV/Å, largest force on an atom
    smax_GPa: float | None  # largest stress component, GPa (None without cell relaxation)


@dataclass
class RelaxResult:
    """Outcome of :func:`relax`: the final structure (with its energy, forces and stress in a
    ``SinglePointCalculator``), whether both criteria were met, and the last step."""

    atoms: Atoms
    converged: bool
    last: RelaxStep
    initial_volume: float  # Å³, 0 without a cell


def relax(
    atoms: Atoms,
    calculator: Calculator,
    fmax: float = 0.05,
    steps: int = 500,
    optimizer: str = "FIRE",
    relax_cell: bool | None = None,
    smax_GPa: float = 0.1,
    trajectory: str | os.PathLike | None = None,
    callback: Callable[[RelaxStep], None] | None = None,
) -> RelaxResult:
    """Relax a copy of ``atoms`` until every force is below ``fmax`` eV/Å and, when the cell is
    relaxed, every stress component is below ``smax_GPa`` GPa, or ``steps`` optimiser steps are
    taken.

    ``relax_cell`` (default: for periodic structures) relaxes the cell as well, through ASE's
    ``FrechetCellFilter``. ``trajectory`` (extxyz) receives every step with energy, forces and
    stress; ``callback`` sees every step.
    """
    if optimizer.upper() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
    periodic = is_bulk(atoms)
    if relax_cell is None:
        relax_cell = periodic
    if relax_cell and not periodic:
        raise ValueError("cell relaxation needs a structure periodic in all three directions")
    atoms = atoms.copy()
    atoms.calc = calculator
    initial_volume = atoms.get_volume() if atoms.cell.rank == 3 else 0.0
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    opt = OPTIMIZERS[optimizer.upper()](target, logfile=None)

    def state(step: int) -> RelaxStep:
        forces = atoms.get_forces()
        largest = float(np.sqrt((forces**2).sum(axis=1).max(initial=0.0)))
        smax = None
        if relax_cell:
            smax = float(np.abs(atoms.get_stress()).max() / units.GPa)
        return RelaxStep(step, float(atoms.get_potential_energy()), largest, smax)

    converged = False
    with ExitStack() as stack:
        # small numpy/scipy linear algebra (cell filters, integrators) only loses from BLAS threads,
        # badly so on a busy machine: a 3x3 solve took ms instead of us with two OpenBLAS threads
        stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        traj = stack.enter_context(open(trajectory, "w")) if trajectory else None  # noqa: SIM115
        # the optimiser's own criterion (fmax=0) never fires: ours, below, decides
        for step, _ in enumerate(opt.irun(fmax=0.0, steps=steps)):
            current = state(step)
            if traj is not None:
                ase.io.write(traj, snapshot(atoms), format="extxyz")
                traj.flush()
            if callback is not None:
                callback(current)
            converged = current.fmax <= fmax and (
                current.smax_GPa is None or current.smax_GPa <= smax_GPa
            )
            if converged:
                break
    return RelaxResult(snapshot(atoms), converged, current, initial_volume)
