"""Simulation speed through ASE: mlip's calculator (Facet) against mace-torch's MACECalculator.

Both models run on the same structure, in float64 on the CPU, through the same code paths as
`mlip relax` and `mlip md` (``mlip.sim.relax.relax`` with FIRE + FrechetCellFilter, and
``mlip.sim.md.run_md`` with velocity Verlet), in one process, alternating model by model:

  facet        mlip.nn.Facet with the authors' defaults (channels [128, 64, 32], 3 layers,
               l_sh 2, spline radial, r_max 6 Å; residual gates at 0.5 instead of 0 so that
               random weights give forces) in mlip.MLIPCalculator (Verlet list, skin 0.5 Å).
  mace-medium  mace.modules.ScaleShiftMACE with MACE-MP-0 "medium" hyperparameters (128x0e +
               128x1o, max_ell 3, correlation 3, 2 interactions, r_max 6 Å, 8 Bessel, radial MLP
               [64, 64, 64], MACE-MP-0's 89-element table) in mace.calculators.MACECalculator.

Weights are random (fixed seeds): speed does not depend on them. The structure is fcc Cu, 5x5x5
cubic cells (500 atoms), rattled by 0.05 Å. Reported: median ms per relaxation step and MD steps
per second, after warm-up steps; the bar is a relaxation step at least 2x faster than MACE's.

Usage::

    python scripts/bench_sim.py                 # 20 relaxation + 20 MD steps per model
    python scripts/bench_sim.py --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from mace_peer import MP_TABLE, build_mace_mp

import mlip.nn  # noqa: I001  (must precede e3nn / mace: registers a torch safe global e3nn needs)
from mlip.calculator import MLIPCalculator
from mlip.data import neighbour_list
from mlip.nn import Facet
from mlip.nn.config import default_dtype
from mlip.sim.md import run_md
from mlip.sim.relax import relax

R_MAX = 6.0


def copper_500() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 5, 5))
    atoms.rattle(0.05, seed=2)
    return atoms


def mean_neighbours(atoms: Atoms) -> float:
    return len(neighbour_list(atoms, R_MAX)[0]) / len(atoms)


def facet_calculator(avg_num_neighbors: float) -> MLIPCalculator:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = Facet(
            num_species=len(MP_TABLE),
            r_max=R_MAX,
            channels=[128, 64, 32],
            l_sh=2,
            num_layers=3,
            radial="spline",
            avg_num_neighbors=avg_num_neighbors,
            gamma_init=0.5,  # the default 0 starts as the identity (zero forces); same cost
        )
        potential = mlip.Potential(model, R_MAX, species=MP_TABLE)
    potential.requires_grad_(False)
    return MLIPCalculator(potential, dtype="float64")


def mace_calculator(avg_num_neighbors: float, folder: str):
    from mace.calculators import MACECalculator

    model = build_mace_mp("medium", torch.float64, avg_num_neighbors, MP_TABLE, R_MAX)
    path = os.path.join(folder, "mace_mp0_medium_random.model")
    torch.save(model, path)  # no downloads: a freshly built model with MACE-MP-0's sizes
    return MACECalculator(model_paths=path, device="cpu", default_dtype="float64")


@contextlib.contextmanager
def stamped(calc) -> Iterator[list[float]]:
    """Times at which each ``calc.calculate`` call returns (one call per relaxation or MD step)."""
    stamps: list[float] = []
    original = calc.calculate

    def calculate(*args, **kwargs):
        original(*args, **kwargs)
        stamps.append(time.perf_counter())

    calc.calculate = calculate
    try:
        yield stamps
    finally:
        del calc.calculate  # back to the class's method


def time_relax(calc, atoms: Atoms, steps: int, warmup: int) -> list[float]:
    """Seconds per relaxation step (FIRE + FrechetCellFilter), warm-up steps dropped."""
    with stamped(calc) as stamps:
        relax(atoms, calc, fmax=1e-9, smax_GPa=1e-9, steps=steps + warmup, relax_cell=True)
    return np.diff(stamps)[warmup:].tolist()


def time_md(calc, atoms: Atoms, steps: int, warmup: int) -> list[float]:
    """Seconds per NVE step (velocity Verlet, 1 fs, 300 K), warm-up steps dropped."""
    with stamped(calc) as stamps:
        run_md(atoms, calc, "nve", temperature_K=300.0, steps=steps + warmup, interval=10**9)
    return np.diff(stamps)[warmup:].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model and task")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per task")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    atoms = copper_500()
    avg = mean_neighbours(atoms)
    print(
        f"system: Cu fcc 5x5x5 cubic, 500 atoms, rattled 0.05 Å; {avg:.1f} neighbours within "
        f"{R_MAX} Å; float64; CPU {platform.processor() or platform.machine()}, "
        f"{args.threads} torch thread(s), {os.cpu_count()} cores; "
        f"torch {torch.__version__}, mlip {mlip.__version__}"
    )
    with tempfile.TemporaryDirectory() as folder:
        calcs = {"facet": facet_calculator(avg), "mace-medium": mace_calculator(avg, folder)}
        params = {
            "facet": sum(p.numel() for p in calcs["facet"].potential.parameters()),
            "mace-medium": sum(p.numel() for p in calcs["mace-medium"].models[0].parameters()),
        }
        times: dict[tuple[str, str], list[float]] = {}
        per_round = max(1, args.steps // args.rounds)
        for task, timer in (("relax", time_relax), ("md", time_md)):
            for round_ in range(args.rounds):
                order = list(calcs) if round_ % 2 == 0 else list(calcs)[::-1]
                for name in order:
                    spent = timer(calcs[name], atoms, per_round, args.warmup)
                    times.setdefault((task, name), []).extend(spent)
                    print(
                        f"  {task:5s} {name:12s} round {round_}: "
                        f"median {1e3 * statistics.median(spent):8.1f} ms/step",
                        flush=True,
                    )

    print(f"\n{'model':12s} {'params':>10s} {'relax ms/step':>14s} {'MD steps/s':>11s}")
    for name in calcs:
        relax_ms = 1e3 * statistics.median(times[("relax", name)])
        md_rate = 1.0 / statistics.median(times[("md", name)])
        print(f"{name:12s} {params[name]:>10,d} {relax_ms:>14.1f} {md_rate:>11.2f}")
    relax_ratio = statistics.median(times[("relax", "mace-medium")]) / statistics.median(
        times[("relax", "facet")]
    )
    md_ratio = statistics.median(times[("md", "mace-medium")]) / statistics.median(
        times[("md", "facet")]
    )
    print(
        f"\nrelaxation: Facet is {relax_ratio:.2f}x faster per step than MACE-MP-0-medium "
        f"({'meets' if relax_ratio >= 2 else 'misses'} the 2x bar); MD: {md_ratio:.2f}x"
    )
    print(f"Facet Verlet-list builds: {calcs['facet'].neighbour_list_builds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
