"""``mlip md``: molecular dynamics (NVE, NVT, NPT) with an extxyz trajectory and a log."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlip.commands import add_model_options
from mlip.errors import UnknownElementError, report_errors
from mlip.outputs import writable_file

PROG = "mlip md"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Molecular dynamics with ASE integrators: NVE (velocity Verlet), NVT "
        "(Langevin or Bussi) or NPT (isotropic Martyna-Tobias-Klein). Velocities are drawn "
        "from a Maxwell-Boltzmann distribution at --temperature (seeded by --seed).",
    )
    p.add_argument("structure", help="structure file (any format ASE reads; last frame)")
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
        "--keep-velocities",
        action="store_true",
        help="start from the velocities in the input file instead of drawing new ones",
    )
    p.add_argument(
        "-o", "--output", help="trajectory, extxyz with energies and forces (STEM_md.extxyz)"
    )
    p.add_argument("--log", help="log: energies, temperature, throughput (STEM_md.log)")
    p.add_argument(
        "--interval", type=int, default=10, help="steps between trajectory frames and log lines"
    )
    p.add_argument("--skin", type=float, default=0.5, help="Verlet-list skin, Å (0.5)")
    p.add_argument(
        "--min-distance", type=float, default=0.5, help="smallest allowed distance, Å (0.5)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    return report_errors(PROG, _run, parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    import torch

    from mlip.calculator import MLIPCalculator
    from mlip.sim.io import read_structure
    from mlip.sim.md import run_md

    problems = [
        f"{name} must be > 0"
        for name, value in (
            ("--timestep", args.timestep),
            ("--interval", args.interval),
            ("--friction", args.friction),
            ("--tau", args.tau),
            ("--tau-p", args.tau_p),
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
    path = Path(args.structure)
    atoms = read_structure(path)
    if len(atoms) < 2:
        print(
            f"{PROG}: error: {path}: MD needs at least 2 atoms (the total momentum is removed, "
            "so a single atom cannot move)",
            file=sys.stderr,
        )
        return 2
    if args.ensemble == "npt" and not (atoms.pbc.all() and atoms.cell.rank == 3):
        print(f"{PROG}: error: {path}: NPT needs a periodic structure", file=sys.stderr)
        return 2
    trajectory = Path(args.output or f"{path.stem}_md.extxyz")
    log = Path(args.log or f"{path.stem}_md.log")
    writable_file(trajectory, "-o/--output")
    writable_file(log, "--log")
    calc = MLIPCalculator(
        args.model,
        device=args.device,
        dtype=args.dtype,
        skin=args.skin,
        min_distance=args.min_distance,
    )
    try:
        calc.check_elements(atoms)
    except UnknownElementError as err:
        print(f"{PROG}: error: {path}: {err}", file=sys.stderr)
        return 1
    thermostat = {"nve": "", "nvt": f" {args.thermostat}", "npt": f" {args.pressure} GPa"}
    print(
        f"{path}: {len(atoms)} atoms ({atoms.get_chemical_formula()}), "
        f"{args.ensemble.upper()}{thermostat[args.ensemble]} at {args.temperature} K, "
        f"{args.steps} steps of {args.timestep} fs (seed {args.seed})"
    )
    result = run_md(
        atoms,
        calc,
        ensemble=args.ensemble,
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        steps=args.steps,
        seed=args.seed,
        keep_velocities=args.keep_velocities,
        trajectory=trajectory,
        log=log,
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
        f"neighbour lists built {calc.neighbour_list_builds}x"
    )
    print(f"trajectory {trajectory}, log {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
