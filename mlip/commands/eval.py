"""``mlip eval``: error tables (per file and per ``config_type``) and parity plots."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlip import keys
from mlip.commands import add_model_options
from mlip.errors import GeometryError, report_errors
from mlip.outputs import writable_dir, writable_file

PROG = "mlip eval"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Errors of a model on labelled data: MAE and RMSE of energy per atom, force "
        "components and stress components, per file and per config_type, and parity plots "
        "(PNG) of energy and forces (and stress where labelled).",
    )
    p.add_argument("data", nargs="+", help="labelled data files (extxyz, ASE db, ASE-LMDB, ...)")
    add_model_options(p)
    p.add_argument(
        "--plots", default="eval_plots", help="directory for the parity plots (eval_plots)"
    )
    p.add_argument("--no-plots", action="store_true", help="write no plots")
    p.add_argument("--json", help="also write the errors to this JSON file")
    p.add_argument("--index", default=":", help="frames to use from each file, e.g. '::10' (:)")
    p.add_argument("--batch-size", type=int, default=16, help="structures per batch (16)")
    p.add_argument(
        "--min-distance",
        type=float,
        default=0.5,
        help="a frame with two atoms closer than this (Å) is an error (0.5)",
    )
    p.add_argument("--energy-key", default="energy", help="name of the energy label (energy)")
    p.add_argument("--forces-key", default="forces", help="name of the forces label (forces)")
    p.add_argument("--stress-key", default="stress", help="name of the stress label (stress)")
    p.add_argument("--virial-key", default="virial", help="name of the virial label (virial)")
    return p


def main(argv: list[str] | None = None) -> int:
    return report_errors(PROG, _run, parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    import torch

    from mlip.data.readers import read_frames
    from mlip.data.records import LabelKeys
    from mlip.export import load_model
    from mlip.models import model_file
    from mlip.sim.evaluate import (
        check_elements,
        check_labelled,
        errors,
        format_table,
        parity_plots,
        predict,
    )

    if args.batch_size < 1:
        print(f"{PROG}: error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json:
        writable_file(args.json, "--json")
    if not args.no_plots:
        writable_dir(args.plots, "--plots")
    model_path = model_file(args.model)
    potential = load_model(model_path, device=args.device, dtype=args.dtype)
    potential.requires_grad_(False)
    label_keys = LabelKeys(
        energy=args.energy_key,
        forces=args.forces_key,
        stress=args.stress_key,
        virial=args.virial_key,
    )
    datasets = {}
    for name in args.data:
        frames = read_frames(name, index=args.index, keys=label_keys, required=())
        check_labelled(frames, name, label_keys)
        check_elements(frames, potential, name)
        datasets[name] = frames

    print(f"model {model_path} ({', '.join(potential.elements)}, cutoff {potential.cutoff} Å)")
    report = {"model": str(model_path), "units": dict(keys.ERROR_UNITS), "files": {}}
    for name, frames in datasets.items():
        try:
            pred = predict(potential, frames, args.batch_size, args.min_distance)
        except GeometryError as err:
            where = name if args.index == ":" else f"{name} (frames {args.index})"
            raise type(err)(f"{where}, {err}") from err
        rows = {"all": errors(pred)}
        groups = pred.groups
        if groups != ["-"]:
            rows.update({f"  {group}": errors(pred.select(group)) for group in groups})
        print(f"\n{name}: {pred.summary()}")
        print(format_table(rows))
        report["files"][name] = {label.strip(): row for label, row in rows.items()}
        if not args.no_plots:
            prefix = Path(args.plots) / Path(name).stem
            written = parity_plots(pred, prefix, title=Path(name).name)
            print("parity plots: " + ", ".join(str(p) for p in written))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"\nerrors written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
