"""Simulation with an ASE calculator: relaxation, molecular dynamics and evaluation on data."""

from mlip.sim.io import read_structure
from mlip.sim.md import MDResult, run_md
from mlip.sim.relax import RelaxResult, RelaxStep, relax

__all__ = [
    "MDResult",
    "RelaxResult",
    "RelaxStep",
    "read_structure",
    "relax",
    "run_md",
]
