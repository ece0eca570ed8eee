"""``mlip data stats|check|convert|preprocess``: dataset tools on the command line.

Thin: parses arguments, calls :mod:`mlip.data.stats` and :mod:`mlip.data.convert` and reports.
Errors are one line ``mlip data: error: ...`` with exit status 1 (2 for bad usage); ``check`` exits
1 when it finds bad frames or outliers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import lmdb
from ase.data import atomic_numbers, chemical_symbols

from mlip.data.records import LABELS, LabelKeys
from mlip.errors import DataError

PROG = "mlip data"
SHOWN = 20  # problems listed by `stats` (``check`` lists all it kept)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        print(f"{PROG}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Dataset tools.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def reading(sub: argparse.ArgumentParser, cutoff: float | None) -> None:
        """Options of commands that read and check frames (``cutoff=None``: only ``--key``)."""
        sub.add_argument(
            "--key",
            action="append",
            default=[],
            metavar="LABEL=NAME",
            help="name of a label in the files, e.g. energy=dft_energy or, for MPtrj JSON, "
            "energy=corrected_total_energy (repeatable)",
        )
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        if cutoff is None:
            return
        sub.add_argument(
            "--cutoff", type=float, default=cutoff, help="neighbour cutoff in Å (%(default)s)"
        )
        sub.add_argument(
            "--require",
            default="energy,forces",
            help="labels every frame must have, comma-separated ('' for none; default %(default)s)",
        )
        sub.add_argument(
            "--elements", help="allowed elements, e.g. H,C,N,O (default: any real element)"
        )

    def scanning(sub: argparse.ArgumentParser) -> None:
        reading(sub, cutoff=5.0)
        sub.add_argument("files", nargs="+", type=Path, metavar="FILE")
        sub.add_argument("--max-frames", type=int, help="a seeded sample of this many per file")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument(
            "--force-threshold",
            type=float,
            default=50.0,
            help="outlier: max |F| above this, eV/Å (%(default)s)",
        )
        sub.add_argument(
            "--min-distance",
            type=float,
            default=0.5,
            help="outlier: two atoms closer than this, Å (%(default)s)",
        )

    stats = commands.add_parser("stats", help="counts, elements, labels, distributions, outliers")
    scanning(stats)
    stats.add_argument("--on-error", choices=("skip", "raise"), default="skip")
    stats.add_argument("--json", type=Path, help="also write the statistics to this JSON file")

    check = commands.add_parser("check", help="list bad frames and outliers; exit 1 if any")
    scanning(check)

    convert = commands.add_parser("convert", help="IN -> OUT (.xyz/.extxyz, .db, .aselmdb)")
    convert.add_argument("source", type=Path, metavar="IN")
    convert.add_argument("target", type=Path, metavar="OUT")
    reading(convert, cutoff=None)
    convert.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    preprocess = commands.add_parser("preprocess", help="IN... -> graph cache OUT.lmdb")
    preprocess.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="input files/folders, then OUT.lmdb"
    )
    reading(preprocess, cutoff=6.0)
    preprocess.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    preprocess.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    preprocess.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, OSError, lmdb.Error) as err:  # DataError is a ValueError
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _stats(args: argparse.Namespace) -> int:
    stats = _scan(args, on_error=args.on_error)
    print(_summary(args, stats))
    if args.json:
        args.json.write_text(json.dumps(stats.as_dict(), indent=1, default=str) + "\n")
    return 0


def _check(args: argparse.Namespace) -> int:
    stats = _scan(args, on_error="skip")
    for message in stats.bad:
        print(f"bad: {message}")
    for message in stats.outliers:
        print(f"outlier: {message}")
    hidden = stats.num_bad - len(stats.bad) + stats.num_outliers - len(stats.outliers)
    if hidden:
        print(f"... and {hidden} more not listed")
    total = f"{stats.num_frames + stats.num_bad} frames: {stats.num_bad} bad"
    if stats.num_unreadable:
        total += f" ({_unreadable(stats.num_unreadable)})"
    print(f"{total}, {stats.num_outliers} outliers")
    return 1 if stats.num_bad or stats.num_outliers else 0


def _convert(args: argparse.Namespace) -> int:
    from mlip.data.convert import convert

    written, bad = convert(
        args.source,
        args.target,
        keys=_keys(args.key),
        on_error=args.on_error,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    _report_bad(bad.count, bad.messages)
    print(f"{args.target}: {written} frames written ({bad.count} bad frames skipped)")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    import torch

    from mlip.data.convert import preprocess

    if len(args.paths) < 2:
        raise DataError("preprocess needs input files and an output file OUT.lmdb")
    *sources, target = args.paths
    if target.suffix != ".lmdb":
        raise DataError(f"{target}: the graph cache must end in .lmdb")
    if target.exists() and not args.overwrite:
        raise DataError(f"{target}: exists (remove it, or pass --overwrite)")
    written, bad = preprocess(
        sources,
        target,
        cutoff=args.cutoff,
        keys=_keys(args.key),
        required=_required(args.require),
        dtype=getattr(torch, args.dtype),
        on_error=args.on_error,
        elements=_elements(args.elements),
        progress=not args.no_progress,
    )
    _report_bad(bad.count, bad.messages)
    print(f"{target}: {written} graphs, cutoff {args.cutoff:g} Å ({bad.count} bad frames skipped)")
    return 0


_COMMANDS = {"stats": _stats, "check": _check, "convert": _convert, "preprocess": _preprocess}


def _scan(args: argparse.Namespace, on_error: str):
    from mlip.data.stats import scan_files

    return scan_files(
        args.files,
        cutoff=args.cutoff,
        keys=_keys(args.key),
        required=_required(args.require),
        max_frames=args.max_frames,
        seed=args.seed,
        on_error=on_error,
        elements=_elements(args.elements),
        force_threshold=args.force_threshold,
        min_distance=args.min_distance,
        progress=not args.no_progress,
    )


def _summary(args: argparse.Namespace, stats) -> str:
    def symbol(z: int) -> str:
        return chemical_symbols[z]

    def counts(values: dict) -> str:
        return ", ".join(f"{v:g} ({n})" for v, n in sorted(values.items())) or "-"

    n = stats.num_frames
    lines = [f"files: {' '.join(map(str, args.files))}"]
    sampled = f", a sample of at most {args.max_frames} per file" if args.max_frames else ""
    bad = f"{stats.num_bad}"
    if stats.num_unreadable:
        bad += f" ({_unreadable(stats.num_unreadable)})"
    lines.append(f"frames: {n}{sampled}, atoms: {stats.num_atoms}, bad frames: {bad}")
    elements = sorted(stats.element_counts.items())
    lines.append("elements: " + (", ".join(f"{symbol(z)} {c}" for z, c in elements) or "-"))
    labels = ("energy", "forces", "stress")
    lines.append("labels: " + ", ".join(f"{k} {stats.frames_with.get(k, 0)}/{n}" for k in labels))
    lines.append(f"charge: {counts(stats.charges)}; spin: {counts(stats.spins)}")
    if stats.energy_per_atom:
        e = stats.energy_per_atom
        lines.append(
            f"energy per atom (eV): min {e['min']:.6g}, mean {e['mean']:.6g}, max {e['max']:.6g}"
        )
        e0 = ", ".join(f"{symbol(z)} {v:.6g}" for z, v in zip(stats.species, stats.e0, strict=True))
        source = stats.e0_source.replace("_", " ")
        lines.append(f"E0 (eV, {source}): {e0}; residual RMS {stats.e0_residual_rms:.4g} eV")
    if stats.force_norm:
        f = ", ".join(f"{k} {v:.4g}" for k, v in stats.force_norm.items())
        lines.append(f"|F| (eV/Å): {f}; force RMS {stats.force_rms:.4g}")
    lines.append(
        f"neighbours within {args.cutoff:g} Å: {stats.avg_num_neighbors:.4g} per atom; "
        f"closest pair {stats.min_distance:.4g} Å"
    )
    lines.append(
        f"outliers (max |F| > {args.force_threshold:g} eV/Å or a pair closer than "
        f"{args.min_distance:g} Å): {stats.num_outliers}"
    )
    lines += [f"  {message}" for message in stats.outliers[:SHOWN]]
    lines += [f"  bad: {message}" for message in stats.bad[:SHOWN]]
    if stats.num_outliers + stats.num_bad > 2 * SHOWN:
        lines.append("  (`mlip data check` lists them all)")
    return "\n".join(lines)


def _unreadable(files: int) -> str:
    """What the frame counts leave out when ``files`` files could not be read to their end."""
    which = "1 file" if files == 1 else f"{files} files"
    return f"{which} unreadable past a bad frame, whose later frames are not counted"


def _report_bad(count: int, messages: list[str]) -> None:
    for message in messages[:SHOWN]:
        print(f"bad: {message}", file=sys.stderr)
    if count > SHOWN:
        print(f"... and {count - SHOWN} more bad frames", file=sys.stderr)


def _keys(pairs: list[str]) -> LabelKeys:
    names = {f.name for f in fields(LabelKeys)}
    chosen = {}
    for pair in pairs:
        label, _, name = pair.partition("=")
        if label not in names or not name:
            raise DataError(f"--key {pair!r}: expected LABEL=NAME with LABEL among {sorted(names)}")
        chosen[label] = name
    return LabelKeys(**chosen)


def _required(text: str) -> tuple[str, ...]:
    required = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(required) - set(LABELS))
    if unknown:
        raise DataError(f"--require: unknown labels {unknown} (choose from {list(LABELS)})")
    return required


def _elements(text: str | None) -> list[int] | None:
    if text is None:
        return None
    numbers = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.isdigit() and 0 < int(part) < len(chemical_symbols):
            numbers.append(int(part))
        elif part in atomic_numbers and atomic_numbers[part] > 0:
            numbers.append(atomic_numbers[part])
        else:
            raise DataError(f"--elements: unknown element {part!r}")
    return numbers
