"""Batched relaxation through torch-sim against the one-structure ASE loop, in one process.

Both relax the same strained, rattled 8-atom diamond Si cells (seeded) with the bundled default
model, positions and cell, to the same criteria (`mlip relax`'s defaults: every force below
0.05 eV/Å, every stress component below 0.1 GPa, at most 500 steps):

  batched  mlip.sim.batch.relax_batch: torch-sim's batched FIRE (ASE's update rule) with the
           Fréchet cell filter, every structure in flight at once (the CPU batch holds 2048 atoms),
           one model call per step for the whole batch: what `mlip relax *.cif` runs.
  loop     mlip.sim.relax.relax on one structure after another: FIRE + ASE's FrechetCellFilter
           through mlip.MLIPCalculator: what `mlip relax --no-batch *.cif` runs.

Reported: structures per minute of each (the median over --repeats, alternating the two), their
ratio (the bar: at least 3x on a 2-core CPU), and how far the results are apart (energy per atom,
positions, cells, convergence flags, step counts).

Usage::

    python scripts/bench_batch.py                       # 64 cells, once
    python scripts/bench_batch.py --count 16 --repeats 3 --json /tmp/batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk

from mlip.calculator import MLIPCalculator
from mlip.sim.batch import MLIPTorchSimModel, relax_batch
from mlip.sim.relax import RelaxResult, relax


def silicon_cells(count: int, seed: int = 0) -> list[Atoms]:
    """``count`` diamond Si cells (8 atoms), each strained by ~2% and rattled by 0.05 Å."""
    rng = np.random.default_rng(seed)
    cells = []
    for k in range(count):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))), True)
        atoms.rattle(0.05, seed=seed * 1000 + k)
        cells.append(atoms)
    return cells


def timed(run) -> tuple[float, list[RelaxResult]]:
    start = time.perf_counter()
    results = run()
    return time.perf_counter() - start, results


def agreement(batched: list[RelaxResult], loop: list[RelaxResult]) -> dict:
    """How far the two sets of relaxed structures are apart."""
    pairs = list(zip(batched, loop, strict=True))
    return {
        "same_convergence": all(b.converged == a.converged for b, a in pairs),
        "converged_batched": sum(b.converged for b in batched),
        "converged_loop": sum(a.converged for a in loop),
        "max_energy_diff_eV_per_atom": max(
            abs(b.last.energy - a.last.energy) / len(a.atoms) for b, a in pairs
        ),
        "max_position_diff_A": max(
            float(np.abs(b.atoms.positions - a.atoms.positions).max()) for b, a in pairs
        ),
        "max_cell_diff_A": max(
            float(np.abs(b.atoms.cell.array - a.atoms.cell.array).max()) for b, a in pairs
        ),
        "max_step_count_diff": max(abs(b.last.step - a.last.step) for b, a in pairs),
        "mean_steps_batched": statistics.mean(b.last.step for b in batched),
        "mean_steps_loop": statistics.mean(a.last.step for a in loop),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=64, help="structures (64)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each (1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the model's")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    structures = silicon_cells(args.count)
    calc = MLIPCalculator(None, device=args.device, dtype=args.dtype)
    model = MLIPTorchSimModel(calc.potential, device=args.device)
    criteria = {"fmax": 0.05, "smax_GPa": 0.1, "steps": 500}

    def batched() -> list[RelaxResult]:
        return relax_batch(structures, model, **criteria)

    def loop() -> list[RelaxResult]:
        return [relax(atoms, calc, **criteria) for atoms in structures]

    relax_batch(structures[:2], model, steps=3)  # warm-up of both paths
    relax(structures[0], calc, steps=3)
    seconds, results = {"batched": [], "loop": []}, {}
    for _ in range(args.repeats):
        for name, run in (("batched", batched), ("loop", loop)):
            elapsed, results[name] = timed(run)
            seconds[name].append(elapsed)
            print(f"{name}: {elapsed:.1f} s", file=sys.stderr, flush=True)
    per_minute = {k: 60 * args.count / statistics.median(v) for k, v in seconds.items()}
    report = {
        "structures": args.count,
        "atoms_per_structure": len(structures[0]),
        "criteria": criteria,
        "seconds": seconds,
        "structures_per_minute": per_minute,
        "speedup": per_minute["batched"] / per_minute["loop"],
        "agreement": agreement(results["batched"], results["loop"]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(model.device)
            + (f" ({torch.cuda.get_device_name()})" if model.device.type == "cuda" else ""),
            "dtype": str(model.dtype).removeprefix("torch."),
            "torch": torch.__version__,
            "torch_sim": version("torch-sim-atomistic"),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
    }
    print(
        f"{args.count} cells of 8 atoms on {report['machine']['device']}: batched "
        f"{per_minute['batched']:.1f} structures/min, one at a time {per_minute['loop']:.1f} "
        f"structures/min: {report['speedup']:.2f}x"
    )
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
