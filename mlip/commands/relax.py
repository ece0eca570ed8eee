"""``mlip relax``: relax structures (positions and, for periodic input, the cell)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlip.commands import add_model_options
from mlip.errors import INPUT_ERRORS, OutputError, one_line, report_errors
from mlip.outputs import writable_file

PROG = "mlip relax"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Relax atomic positions and (for periodic structures, by default) the cell "
        "with ASE's FrechetCellFilter until every force is below --fmax and every stress "
        "component below --smax. Reads any format ASE reads (CIF and POSCAR also through "
        "pymatgen); multi-frame files give their last frame.",
    )
    p.add_argument("structures", nargs="+", metavar="STRUCTURE", help="structure file(s)")
    add_model_options(p)
    p.add_argument("--fmax", type=float, default=0.05, help="force threshold, eV/Å (0.05)")
    p.add_argument(
        "--smax", type=float, default=0.1, help="stress threshold (largest component), GPa (0.1)"
    )
    p.add_argument("--steps", type=int, default=500, help="most optimiser steps (500)")
    p.add_argument("--optimizer", default="FIRE", choices=["FIRE", "BFGS", "LBFGS"])
    cell = p.add_mutually_exclusive_group()
    cell.add_argument(
        "--cell",
        dest="relax_cell",
        action="store_true",
        default=None,
        help="relax the cell too (default for periodic structures)",
    )
    cell.add_argument(
        "--fixed-cell", dest="relax_cell", action="store_false", help="keep the cell fixed"
    )
    p.add_argument(
        "-o",
        "--output",
        help="relaxed structure file; a directory when several structures are given "
        "(default: STEM_relaxed.EXT in the current directory)",
    )
    p.add_argument(
        "--traj",
        help="trajectory file (extxyz, every step with energy, forces, stress); a directory "
        "when several structures are given",
    )
    p.add_argument(
        "--min-distance", type=float, default=0.5, help="smallest allowed distance, Å (0.5)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no per-step lines")
    return p


def main(argv: list[str] | None = None) -> int:
    return report_errors(PROG, _run, parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    import torch

    from mlip.calculator import MLIPCalculator
    from mlip.sim.io import read_structure

    if args.fmax <= 0 or args.smax <= 0 or args.steps < 0:
        print(f"{PROG}: error: --fmax and --smax must be > 0 and --steps >= 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [Path(s) for s in args.structures]
    structures = [read_structure(path) for path in paths]  # every file is checked before any work
    if args.relax_cell:
        for path, atoms in zip(paths, structures, strict=True):
            if not (atoms.pbc.all() and atoms.cell.rank == 3):
                print(f"{PROG}: error: {path}: --cell needs a periodic structure", file=sys.stderr)
                return 2
    several = len(paths) > 1
    for path in paths:  # every output is checked before any work, too
        output, out_fmt = _output_path(path, args.output, several)
        if not several and args.output and args.output.endswith(("/", os.sep)):
            raise OutputError(f"{args.output}: a folder name (-o/--output takes a file name)")
        _check_format(writable_file(output, "-o/--output"), out_fmt)
        if args.traj:
            writable_file(_traj_path(path, args.traj, several), "--traj")
    calc = MLIPCalculator(
        args.model, device=args.device, dtype=args.dtype, min_distance=args.min_distance
    )
    for path, atoms in zip(paths, structures, strict=True):
        try:
            calc.check_elements(atoms)
        except INPUT_ERRORS as err:
            print(f"{PROG}: error: {path}: {one_line(err)}", file=sys.stderr)
            return 1
    failures = [
        path
        for path, atoms in zip(paths, structures, strict=True)
        if not _relax_one(path, atoms, calc, args, several)
    ]
    return 1 if failures else 0


def _relax_one(path: Path, atoms, calc, args: argparse.Namespace, several: bool) -> bool:
    """Relax one structure, write it and report; False if it failed or did not converge."""
    import ase.io

    from mlip.sim.relax import relax

    output, out_fmt = _output_path(path, args.output, several)
    traj = _traj_path(path, args.traj, several) if args.traj else None
    relax_cell = args.relax_cell
    if relax_cell is None:
        relax_cell = bool(atoms.pbc.all()) and atoms.cell.rank == 3
    print(
        f"{path}: {len(atoms)} atoms ({atoms.get_chemical_formula()}), {args.optimizer}, "
        f"{'cell relaxed' if relax_cell else 'fixed cell'}, fmax {args.fmax} eV/Å"
        + (f", smax {args.smax} GPa" if relax_cell else "")
        + f", at most {args.steps} steps"
    )
    if not args.quiet:
        print(
            f"{'step':>6} {'energy/eV':>16} {'fmax/(eV/Å)':>12}"
            + (f" {'stress/GPa':>11}" if relax_cell else "")
        )
    try:
        result = relax(
            atoms,
            calc,
            fmax=args.fmax,
            steps=args.steps,
            optimizer=args.optimizer,
            relax_cell=relax_cell,
            smax_GPa=args.smax,
            trajectory=traj,
            callback=None if args.quiet else _print_step,
        )
    except INPUT_ERRORS as err:
        print(f"{PROG}: error: {path}: {one_line(err)}", file=sys.stderr)
        return False
    try:
        ase.io.write(output, result.atoms, format=out_fmt)
    except Exception as err:  # ASE raises several types for names or formats it cannot write
        print(f"{PROG}: error: cannot write {output}: {one_line(err)}", file=sys.stderr)
        return False
    last = result.last
    summary = (
        f"{last.step} steps: E = {last.energy:.6f} eV ({last.energy / len(atoms):.6f} eV/atom)"
        f", fmax {last.fmax:.4f} eV/Å"
    )
    if last.smax_GPa is not None:
        summary += f", stress {last.smax_GPa:.4f} GPa"
    if result.initial_volume > 0:
        change = result.atoms.get_volume() / result.initial_volume - 1
        summary += f", volume {result.atoms.get_volume():.3f} Å³ ({change:+.2%})"
    if not result.converged:
        print(
            f"{PROG}: error: {path}: not converged in {summary}; last structure written to "
            f"{output} (raise --steps or loosen --fmax/--smax)",
            file=sys.stderr,
        )
        return False
    print(f"converged in {summary} -> {output}" + (f", trajectory {traj}" if traj else ""))
    return True


def _print_step(step) -> None:
    line = f"{step.step:6d} {step.energy:16.6f} {step.fmax:12.4f}"
    if step.smax_GPa is not None:
        line += f" {step.smax_GPa:11.4f}"
    print(line, flush=True)


def _check_format(output: Path, fmt: str | None) -> None:
    """Refuse an output name whose format (``fmt``, else guessed from the name) ASE cannot write."""
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    try:
        fmt = fmt or filetype(str(output), read=False)
    except UnknownFileTypeError:
        fmt = None
    if fmt not in ioformats or not ioformats[fmt].can_write:
        raise OutputError(
            f"{output}: ASE cannot tell a structure format it writes from this name "
            "(-o/--output): end it with .extxyz, .cif, .vasp, .xyz, ..."
        )


def _traj_path(path: Path, traj: str, several: bool) -> Path:
    """Where the trajectory of relaxing ``path`` goes (see ``--traj``)."""
    return Path(traj) / f"{path.stem}_relax.extxyz" if several else Path(traj)


def _output_path(path: Path, output: str | None, several: bool) -> tuple[Path, str | None]:
    """Where the relaxed structure of ``path`` goes (see ``--output``), and its format (None: ASE
    guesses from the name)."""
    from mlip.sim.io import structure_format

    fmt = structure_format(path)
    if output and not several:
        return Path(output), None
    if path.suffix:
        name, out_fmt = f"{path.stem}_relaxed{path.suffix}", fmt
    elif fmt == "vasp":  # POSCAR, CONTCAR
        name, out_fmt = f"{path.name}_relaxed.vasp", "vasp"
    else:
        name, out_fmt = f"{path.name}_relaxed.extxyz", "extxyz"
    return (Path(output) / name if output else Path(name)), out_fmt


if __name__ == "__main__":
    sys.exit(main())
