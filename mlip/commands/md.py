"""``mlip md``: molecular dynamics (NVE, NVT, NPT) with an extxyz trajectory and a log."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlip.commands import add_model_options, torch_sim_found
from mlip.errors import UnknownElementError, report_errors
from mlip.outputs import writable_file

if TYPE_CHECKING:
    from ase import Atoms

PROG = "mlip md"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Molecular dynamics with ASE integrators: NVE (velocity Verlet), NVT "
        "(Langevin or Bussi) or NPT (isotropic Martyna-Tobias-Klein). Velocities are drawn "
        "from a Maxwell-Boltzmann distribution at --temperature (seeded by --seed). Several "
        "runs (structures, or --replicas) of NVE or Langevin NVT go together, in batches, "
        'through torch-sim\'s integrators (pip install "mlip[torchsim]"), one at a time '
        "with ASE under --no-batch.",
    )
    p.add_argument(
        "structures",
        nargs="+",
        metavar="STRUCTURE",
        help="structure file(s) (any format ASE reads; last frame)",
    )
    add_model_options(p)
    p.add_argument("--ensemble", default="nvt", choices=["nve", "nvt", "npt"])
    p.add_argument(
        "--temperature",
        type=float,
        default=300.0,
        help="temperature, K (300); for NVE only the initial velocities",
    )
    p.add_argument("--timestep", type=float, default=1.0, help="time step, fs (1.0)")
    p.add_argument("--steps", type=int, default=1000, help="number of steps (1000)")
    p.add_argument(
        "--thermostat", default="langevin", choices=["langevin", "bussi"], help="NVT thermostat"
    )
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (0.01)")
    p.add_argument(
        "--tau", type=float, default=100.0, help="Bussi / NPT thermostat time constant, fs (100)"
    )
    p.add_argument("--pressure", type=float, default=0.0, help="NPT pressure, GPa (0)")
    p.add_argument(
        "--tau-p", type=float, default=1000.0, help="NPT barostat time constant, fs (1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of velocities and noise (0)")
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="runs of each structure, with seeds --seed, --seed + 1, ... (1)",
    )
    p.add_argument(
        "--keep-velocities",
        action="store_true",
        help="start from the velocities in the input file instead of drawing new ones",
    )
    p.add_argument(
        "-o",
        "--output",
        help="trajectory, extxyz with energies and forces (STEM_md.extxyz); for several runs "
        "a directory of STEM_md.extxyz, or STEM_rK_md.extxyz for replica K (default: .)",
    )
    p.add_argument(
        "--log",
        help="log: energies, temperature, throughput (STEM_md.log); for several runs a "
        "directory (default: the trajectories')",
    )
    p.add_argument(
        "--interval", type=int, default=10, help="steps between trajectory frames and log lines"
    )
    p.add_argument("--skin", type=float, default=0.5, help="Verlet-list skin, Å (0.5)")
    p.add_argument(
        "--min-distance", type=float, default=0.5, help="smallest allowed distance, Å (0.5)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-batch",
        action="store_true",
        help="one run at a time with ASE (Bussi NVT and NPT always are)",
    )
    p.add_argument(
        "--batch-atoms",
        type=int,
        help="most atoms in one batch (default: what fits in GPU memory, measured by "
        "torch-sim; 2048 on the CPU)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return report_errors(PROG, _run, parser().parse_args(argv))


@dataclass
class _Run:
    """One MD run: its structure file, replica (None when there is one), seed and outputs."""

    path: Path
    atoms: Atoms
    replica: int | None
    seed: int
    trajectory: Path
    log: Path

    @property
    def name(self) -> str:
        return str(self.path) + (f" (replica {self.replica})" if self.replica is not None else "")


def _run(args: argparse.Namespace) -> int:
    import torch

    from mlip.calculator import MLIPCalculator
    from mlip.sim.io import is_bulk, read_structure

    problems = [
        f"{name} must be > 0"
        for name, value in (
            ("--timestep", args.timestep),
            ("--interval", args.interval),
            ("--friction", args.friction),
            ("--tau", args.tau),
            ("--tau-p", args.tau_p),
            ("--replicas", args.replicas),
            ("--batch-atoms", args.batch_atoms or 1),
        )
        if value <= 0
    ]
    problems += ["--steps must be >= 0"] if args.steps < 0 else []
    problems += ["--temperature must be >= 0"] if not args.temperature >= 0 else []
    if problems:
        print(f"{PROG}: error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [Path(s) for s in args.structures]
    structures = [read_structure(path) for path in paths]  # every file is checked before any work
    for path, atoms in zip(paths, structures, strict=True):
        if len(atoms) < 2:
            print(
                f"{PROG}: error: {path}: MD needs at least 2 atoms (the total momentum is "
                "removed, so a single atom cannot move)",
                file=sys.stderr,
            )
            return 2
        if args.ensemble == "npt" and not is_bulk(atoms):
            print(f"{PROG}: error: {path}: NPT needs a periodic structure", file=sys.stderr)
            return 2
    runs = _runs(paths, structures, args)
    for run in runs:
        writable_file(run.trajectory, "-o/--output")
        writable_file(run.log, "--log")
    calc = MLIPCalculator(
        args.model,
        device=args.device,
        dtype=args.dtype,
        skin=args.skin,
        min_distance=args.min_distance,
    )
    for path, atoms in zip(paths, structures, strict=True):
        try:
            calc.check_elements(atoms)
        except UnknownElementError as err:
            print(f"{PROG}: error: {path}: {err}", file=sys.stderr)
            return 1
    thermostat = {"nve": "", "nvt": f" {args.thermostat}", "npt": f" {args.pressure} GPa"}
    for run in runs:
        print(
            f"{run.name}: {len(run.atoms)} atoms ({run.atoms.get_chemical_formula()}), "
            f"{args.ensemble.upper()}{thermostat[args.ensemble]} at {args.temperature} K, "
            f"{args.steps} steps of {args.timestep} fs (seed {run.seed})"
        )
    batched = args.ensemble == "nve" or (args.ensemble, args.thermostat) == ("nvt", "langevin")
    if (
        len(runs) > 1
        and batched
        and not args.no_batch
        and torch_sim_found(PROG, "one run at a time: batched MD needs torch-sim")
    ):
        from mlip.sim.batch import batchable

        if all(batchable(run.atoms) for run in runs):
            _run_batched(runs, calc, args)
            return 0
    for run in runs:
        _run_one(run, calc, args)
    return 0


def _runs(paths: list[Path], structures: list[Atoms], args: argparse.Namespace) -> list[_Run]:
    """Every run: each structure ``--replicas`` times, with its seed and output files."""
    several = len(paths) * args.replicas > 1
    runs = []
    for path, atoms in zip(paths, structures, strict=True):
        for k in range(args.replicas):
            replica = k if args.replicas > 1 else None
            if several:
                stem = path.stem + (f"_r{k}" if replica is not None else "")
                folder = Path(args.output or ".")
                trajectory = folder / f"{stem}_md.extxyz"
                log = Path(args.log or folder) / f"{stem}_md.log"
            else:
                trajectory = Path(args.output or f"{path.stem}_md.extxyz")
                log = Path(args.log or f"{path.stem}_md.log")
            runs.append(_Run(path, atoms, replica, args.seed + k, trajectory, log))
    return runs


def _run_one(run: _Run, calc, args: argparse.Namespace) -> None:
    """One run with ASE's integrators, and its summary."""
    from mlip.sim.md import run_md

    builds = calc.neighbour_list_builds
    result = run_md(
        run.atoms,
        calc,
        ensemble=args.ensemble,
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        steps=args.steps,
        seed=run.seed,
        keep_velocities=args.keep_velocities,
        trajectory=run.trajectory,
        log=run.log,
        interval=args.interval,
        progress=not args.no_progress,
        thermostat=args.thermostat,
        friction_per_fs=args.friction,
        tau_fs=args.tau,
        pressure_GPa=args.pressure,
        tau_p_fs=args.tau_p,
    )
    final = result.atoms
    print(
        f"done: {result.steps} steps in {result.seconds:.1f} s, "
        f"{result.steps_per_second:.2f} steps/s, {result.atom_steps_per_second:.0f} atom-steps/s"
        f"; final T {result.temperature_K:.1f} K, "
        f"E {final.get_total_energy() / len(final):.6f} eV/atom; "
        f"neighbour lists built {calc.neighbour_list_builds - builds}x"
    )
    print(f"trajectory {run.trajectory}, log {run.log}")


def _run_batched(runs: list[_Run], calc, args: argparse.Namespace) -> None:
    """All runs together through torch-sim, and a summary of each."""
    from mlip.sim.batch import MLIPTorchSimModel, md_batch

    model = MLIPTorchSimModel(calc.potential, device=calc.device, min_distance=args.min_distance)
    print(
        f"{len(runs)} runs ({sum(len(r.atoms) for r in runs)} atoms) together: torch-sim "
        f"{'NVE' if args.ensemble == 'nve' else 'Langevin NVT'} on {model.device}"
    )
    start = time.perf_counter()
    results = md_batch(
        [run.atoms for run in runs],
        model,
        ensemble=args.ensemble,
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        steps=args.steps,
        seeds=[run.seed for run in runs],
        keep_velocities=args.keep_velocities,
        trajectories=[run.trajectory for run in runs],
        logs=[run.log for run in runs],
        interval=args.interval,
        progress=not args.no_progress,
        friction_per_fs=args.friction,
        names=[run.name for run in runs],
        max_atoms=args.batch_atoms,
    )
    seconds = time.perf_counter() - start
    atom_steps = sum(r.steps * len(r.atoms) for r in results)
    print(
        f"done: {len(runs)} runs of {args.steps} steps in {seconds:.1f} s, "
        f"{atom_steps / seconds if seconds > 0 else float('inf'):.0f} atom-steps/s in all"
    )
    for run, result in zip(runs, results, strict=True):
        final = result.atoms
        print(
            f"{run.name}: final T {result.temperature_K:.1f} K, "
            f"E {final.get_total_energy() / len(final):.6f} eV/atom; "
            f"trajectory {run.trajectory}, log {run.log}"
        )


if __name__ == "__main__":
    sys.exit(main())
