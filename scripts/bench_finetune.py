"""Fine-tuning against training from scratch on small data, at equal wall-clock budget.

The base is the bundled default model (a Facet trained on Zuo et al. 2020 Si); the new data is
another element of the same benchmark (default Ge, which the base does not know: its tables grow).
For each training-set size (default 20, 50 and 200 frames, a seeded sample of
``<El>_train.xyz``), two runs of ``mlip train`` with the same budget, threads and loss: one from
scratch with the base's architecture, one with ``finetune_from=default`` (E0s refitted, its default
learning rate and warm-up). Both are tested on ``<El>_test.xyz`` by the same code; the table gives
energy RMSE (meV/atom), force RMSE (meV/Å) and stress RMSE (GPa), and the fine-tuned/scratch ratio
of the force RMSE (below 1: fine-tuning is better).

Usage::

    python scripts/bench_finetune.py                        # Ge, 20/50/200 frames, 120 s per run
    python scripts/bench_finetune.py --sizes 20 --budget-seconds 30   # smoke test
    python scripts/bench_finetune.py --element Cu --json finetune.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import ase.io
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "zuo2020"
# the bundled model's architecture and loss (scripts/train_default_model.py), for the scratch runs
ARCHITECTURE = [
    "model=facet",
    "model.channels=[32,16,8]",
    "model.num_layers=2",
    "model.grid_channels=8",
    "model.grid_hidden=16",
    "cutoff=5.0",
    "dtype=float32",
]
SHARED = [
    "loss.energy_weight=100.0",
    "loss.forces_weight=30.0",
    "loss.stress_weight=1000.0",
    "data.val_fraction=0.1",
    "data.test_fraction=0",
    "data.batch_size=4",
    "trainer.max_epochs=-1",
    "trainer.enable_progress_bar=false",
    "data.progress=false",
    "resume=false",
]


def errors(model: Path, frames: list) -> dict[str, float]:
    """Test RMSEs of a model file on labelled frames: meV/atom, meV/Å, GPa."""
    import mlip

    calc = mlip.MLIPCalculator(model)
    de, df, ds = [], [], []
    for atoms in frames:
        reference = atoms.copy()
        reference.calc = calc
        de.append((reference.get_potential_energy() - atoms.get_potential_energy()) / len(atoms))
        df.append((reference.get_forces() - atoms.get_forces()).ravel())
        ds.append(reference.get_stress() - atoms.get_stress())
    gpa = 160.21766
    return {
        "energy_rmse_meV_per_atom": 1e3 * float(np.sqrt(np.mean(np.square(de)))),
        "forces_rmse_meV_per_A": 1e3 * float(np.sqrt(np.mean(np.square(np.concatenate(df))))),
        "stress_rmse_GPa": gpa * float(np.sqrt(np.mean(np.square(ds)))),
    }


def run(name: str, overrides: list[str]) -> Path:
    from mlip.train.runner import compose, train

    print(f"--- {name}: mlip train {' '.join(overrides)}", flush=True)
    result = train(compose(overrides), overrides)
    return result.model_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--element", default="Ge")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the Zuo files")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 200])
    parser.add_argument("--budget-seconds", type=int, default=120, help="training time per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="`mlip train` override for the fine-tuning runs (repeatable; e.g. --set finetune.lr=0.003)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    workdir.mkdir(parents=True, exist_ok=True)
    pool = ase.io.read(args.data / f"{args.element}_train.xyz", ":")
    test = ase.io.read(args.data / f"{args.element}_test.xyz", ":")
    order = np.random.default_rng(args.seed).permutation(len(pool))
    seconds = args.budget_seconds
    budget = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    results = []
    for size in args.sizes:
        if size > len(pool):
            raise SystemExit(f"--sizes {size}: {args.element}_train.xyz has {len(pool)} frames")
        train_file = workdir / f"{args.element}_{size}.xyz"
        ase.io.write(train_file, [pool[i] for i in sorted(order[:size])])
        common = [
            f"data.train={train_file}",
            f"trainer.max_time={budget}",
            f"num_threads={args.threads}",
            f"seed={args.seed}",
            *SHARED,
        ]
        row = {"frames": size}
        for name, extra in (
            ("scratch", ARCHITECTURE),
            ("finetuned", ["finetune_from=default", *args.set]),
        ):
            model = run(
                f"{size} frames, {name}", [f"run_dir={workdir / f'{name}_{size}'}", *extra, *common]
            )
            row[name] = errors(model, test)
        row["force_ratio"] = (
            row["finetuned"]["forces_rmse_meV_per_A"] / row["scratch"]["forces_rmse_meV_per_A"]
        )
        results.append(row)

    print(
        f"\n{args.element}: fine-tuned from the bundled Si model vs scratch, {seconds} s each, "
        f"{args.threads} thread(s), tested on {len(test)} frames of {args.element}_test.xyz "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__})"
    )
    print("| frames | scratch E / F / S | fine-tuned E / F / S | F ratio |")
    print("|---|---|---|---|")
    for row in results:
        cells = [
            " / ".join(
                f"{row[name][k]:.1f}"
                for k in ("energy_rmse_meV_per_atom", "forces_rmse_meV_per_A", "stress_rmse_GPa")
            )
            for name in ("scratch", "finetuned")
        ]
        print(f"| {row['frames']} | {cells[0]} | {cells[1]} | **{row['force_ratio']:.2f}** |")
    print("(E meV/atom, F meV/Å, S GPa: test RMSEs)")
    if args.json:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
