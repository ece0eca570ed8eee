"""``mlip relax``: relax structures (positions and, for periodic input, the cell)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlip.commands import add_model_options, torch_sim_found
from mlip.errors import INPUT_ERRORS, OutputError, StructureFileError, one_line, report_errors
from mlip.outputs import writable_file

if TYPE_CHECKING:
    from ase import Atoms

    from mlip.sim.relax import RelaxResult

PROG = "mlip relax"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Relax atomic positions and (for periodic structures, by default) the cell "
        "with a Frechet cell filter until every force is below --fmax and every stress "
        "component below --smax. Reads any format ASE reads (CIF and POSCAR also through "
        "pymatgen); a multi-frame file gives its last frame, or every frame with --all-frames. "
        "Several structures are relaxed together, in batches, by torch-sim's batched FIRE "
        '(the same criteria and outputs; pip install "mlip[torchsim]"), one at a time with '
        "ASE's optimisers under --no-batch.",
    )
    p.add_argument(
        "structures",
        nargs="+",
        metavar="STRUCTURE",
        help="structure file(s), or folders: every file in them (not hidden ones, not sub-folders)",
    )
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
        help="relaxed structure file (all frames of a file relaxed with --all-frames); a "
        "directory when several files are given (default: STEM_relaxed.EXT in the current "
        "directory)",
    )
    p.add_argument(
        "--traj",
        help="trajectory file (extxyz, every step with energy, forces, stress); a directory "
        "when several structures are given (STEM_relax.extxyz, STEM_K_relax.extxyz for frame K)",
    )
    p.add_argument(
        "--min-distance", type=float, default=0.5, help="smallest allowed distance, Å (0.5)"
    )
    p.add_argument(
        "--all-frames",
        action="store_true",
        help="relax every frame of a multi-frame file (FILE@K in messages), written in order "
        "to one output file per input file (default: the last frame only)",
    )
    p.add_argument(
        "--no-batch",
        action="store_true",
        help="relax one structure at a time with ASE (the batched path is FIRE only: "
        "--optimizer BFGS or LBFGS implies this)",
    )
    p.add_argument(
        "--batch-atoms",
        type=int,
        help="most atoms in one batch (default: what fits in GPU memory, measured by "
        "torch-sim; 2048 on the CPU)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no per-step lines, no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    return report_errors(PROG, _run, parser().parse_args(argv))


@dataclass
class _Structure:
    """One structure to relax: its file, its frame there (None: the file's only or last frame),
    the structure, and its name in messages (FILE, or FILE@K for frame K)."""

    path: Path
    frame: int | None
    atoms: Atoms
    name: str


def _run(args: argparse.Namespace) -> int:
    import torch

    from mlip.calculator import MLIPCalculator
    from mlip.sim.io import is_bulk

    if args.fmax <= 0 or args.smax <= 0 or args.steps < 0:
        print(f"{PROG}: error: --fmax and --smax must be > 0 and --steps >= 0", file=sys.stderr)
        return 2
    if args.batch_atoms is not None and args.batch_atoms < 1:
        print(f"{PROG}: error: --batch-atoms must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = _structure_files(args.structures)
    structures = _read(paths, args.all_frames)  # every file is checked before any work
    if args.relax_cell:
        for s in structures:
            if not is_bulk(s.atoms):
                print(
                    f"{PROG}: error: {s.name}: --cell needs a periodic structure", file=sys.stderr
                )
                return 2
    several_files, several = len(paths) > 1, len(structures) > 1
    for path in paths:  # every output is checked before any work, too
        output, out_fmt = _output_path(path, args.output, several_files)
        if not several_files and args.output and args.output.endswith(("/", os.sep)):
            raise OutputError(f"{args.output}: a folder name (-o/--output takes a file name)")
        _check_format(writable_file(output, "-o/--output"), out_fmt)
    trajectories = [
        writable_file(_traj_path(s, args.traj, several), "--traj") if args.traj else None
        for s in structures
    ]
    calc = MLIPCalculator(
        args.model, device=args.device, dtype=args.dtype, min_distance=args.min_distance
    )
    for s in structures:
        try:
            calc.check_elements(s.atoms)
        except INPUT_ERRORS as err:
            print(f"{PROG}: error: {s.name}: {one_line(err)}", file=sys.stderr)
            return 1
    results: dict[int, RelaxResult | None] = {}
    if (
        several
        and not args.no_batch
        and args.optimizer == "FIRE"
        and torch_sim_found(
            PROG, "relaxing one structure at a time: batched relaxation needs torch-sim"
        )
    ):
        results = _relax_batched(structures, trajectories, calc, args)
    ok = True
    for path in paths:
        ids = [i for i, s in enumerate(structures) if s.path == path]
        for i in ids:
            if i not in results:
                results[i] = _relax_one(structures[i], trajectories[i], calc, args)
        ok &= _write_and_report(
            path, [(structures[i], trajectories[i], results[i]) for i in ids], args, several_files
        )
    return 0 if ok else 1


def _structure_files(names: list[str]) -> list[Path]:
    """The files named, a folder standing for its files (sorted; not hidden ones, not folders)."""
    paths = []
    for name in map(Path, names):
        if not name.is_dir():
            paths.append(name)
            continue
        inside = sorted(p for p in name.iterdir() if p.is_file() and not p.name.startswith("."))
        if not inside:
            raise StructureFileError(f"{name}: a folder without structure files")
        paths += inside
    return paths


def _read(paths: list[Path], all_frames: bool) -> list[_Structure]:
    """The structures of ``paths``: the last frame of each, or every frame with ``all_frames``."""
    from mlip.sim.io import read_frames, read_structure

    structures = []
    for path in paths:
        frames = read_frames(path) if all_frames else [read_structure(path)]
        for k, atoms in enumerate(frames):
            frame = k if len(frames) > 1 else None
            name = f"{path}@{k}" if frame is not None else str(path)
            structures.append(_Structure(path, frame, atoms, name))
    return structures


def _relax_batched(
    structures: list[_Structure], trajectories: list[Path | None], calc, args: argparse.Namespace
) -> dict[int, RelaxResult]:
    """Relax the structures torch-sim can batch together (see ``mlip.sim.batch.batchable``);
    the others are left to the one-at-a-time path."""
    from mlip.sim.batch import MLIPTorchSimModel, batchable, relax_batch
    from mlip.sim.io import is_bulk

    ids = [i for i, s in enumerate(structures) if batchable(s.atoms)]
    if len(ids) < 2:
        return {}
    model = MLIPTorchSimModel(calc.potential, device=calc.device, min_distance=args.min_distance)
    chosen = [structures[i] for i in ids]
    cells = {args.relax_cell if args.relax_cell is not None else is_bulk(s.atoms) for s in chosen}
    how = {True: "cells relaxed", False: "fixed cells"}.get(*cells) if len(cells) == 1 else None
    print(
        f"{len(ids)} structures ({sum(len(s.atoms) for s in chosen)} atoms) together: torch-sim "
        f"batched FIRE on {model.device}, {how or 'cells relaxed where periodic'}, "
        f"fmax {args.fmax} eV/Å"
        + (f", smax {args.smax} GPa" if True in cells else "")
        + f", at most {args.steps} steps each"
    )
    found = relax_batch(
        [s.atoms for s in chosen],
        model,
        fmax=args.fmax,
        steps=args.steps,
        relax_cell=args.relax_cell,
        smax_GPa=args.smax,
        trajectories=[trajectories[i] for i in ids],
        names=[s.name for s in chosen],
        max_atoms=args.batch_atoms,
        progress=not args.quiet,
    )
    return dict(zip(ids, found, strict=True))


def _relax_one(
    s: _Structure, traj: Path | None, calc, args: argparse.Namespace
) -> RelaxResult | None:
    """Relax one structure with ASE, printing its steps; None if it failed (said on stderr)."""
    from mlip.sim.io import is_bulk
    from mlip.sim.relax import relax

    atoms = s.atoms
    relax_cell = args.relax_cell
    if relax_cell is None:
        relax_cell = is_bulk(atoms)
    print(
        f"{s.name}: {len(atoms)} atoms ({atoms.get_chemical_formula()}), {args.optimizer}, "
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
        return relax(
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
        print(f"{PROG}: error: {s.name}: {one_line(err)}", file=sys.stderr)
        return None


def _write_and_report(
    path: Path,
    relaxed: list[tuple[_Structure, Path | None, RelaxResult | None]],
    args,
    several_files: bool,
) -> bool:
    """Write the relaxed structures of one input file (in its frame order) and report each;
    False if any failed or did not converge."""
    import ase.io

    output, out_fmt = _output_path(path, args.output, several_files)
    done = [r.atoms for _, _, r in relaxed if r is not None]
    if done:
        try:
            ase.io.write(output, done if len(done) > 1 else done[0], format=out_fmt)
        except Exception as err:  # ASE raises several types for names or formats it cannot write
            print(f"{PROG}: error: cannot write {output}: {one_line(err)}", file=sys.stderr)
            return False
    ok = len(done) == len(relaxed)
    for s, traj, result in relaxed:
        if result is not None:
            ok &= _report(s, result, output, traj)
    return ok


def _report(s: _Structure, result: RelaxResult, output: Path, traj: Path | None) -> bool:
    """The line saying how the relaxation of ``s`` ended; False if it did not converge."""
    atoms, last = result.atoms, result.last
    summary = (
        f"{last.step} steps: E = {last.energy:.6f} eV ({last.energy / len(atoms):.6f} eV/atom)"
        f", fmax {last.fmax:.4f} eV/Å"
    )
    if last.smax_GPa is not None:
        summary += f", stress {last.smax_GPa:.4f} GPa"
    if result.initial_volume > 0:
        change = atoms.get_volume() / result.initial_volume - 1
        summary += f", volume {atoms.get_volume():.3f} Å³ ({change:+.2%})"
    written = f"{output}" + (f" (frame {s.frame})" if s.frame is not None else "")
    if not result.converged:
        print(
            f"{PROG}: error: {s.name}: not converged in {summary}; last structure written to "
            f"{written} (raise --steps or loosen --fmax/--smax)",
            file=sys.stderr,
        )
        return False
    print(
        f"{s.name}: converged in {summary} -> {written}" + (f", trajectory {traj}" if traj else "")
    )
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


def _traj_path(s: _Structure, traj: str, several: bool) -> Path:
    """Where the trajectory of relaxing ``s`` goes (see ``--traj``)."""
    if not several:
        return Path(traj)
    frame = f"_{s.frame}" if s.frame is not None else ""
    return Path(traj) / f"{s.path.stem}{frame}_relax.extxyz"


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
