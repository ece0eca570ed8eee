"""Accuracy at equal training budget: our models (``mlip train``) against mace-torch's MACE.

``--model facet`` (default) trains our Facet, ``--model mace`` our MACE-like model (Gaunt product
on a spherical grid) with mace-torch's hyperparameters; the peer is always mace-torch. Both train
on ``acac/train_300K.xyz`` (500 acetylacetone frames, E0s from ``isolated_atoms.xyz``, 5% held out
for validation) for the same wall-clock training time on the
same number of CPU threads, one after the other, then both are tested on ``acac/test_MD_300K.xyz``
(650 frames) by the same error code. Each side keeps its best-validation (EMA) weights.

- ours: ``mlip.train.runner.train`` with ``trainer.max_time`` = budget (the fit loop's clock).
- mace-torch: its own training entry point (``mace.cli.run_train.main``, what ``mace_run_train``
  runs) with a large ``--max_num_epochs``; the process is stopped ``budget`` seconds after it logs
  "Started training", then rerun with ``--restart_latest`` and ``--max_num_epochs`` = the epoch of
  its latest (best-validation, EMA) checkpoint, which trains nothing and writes the ``.model`` file.

Prints energy RMSE (meV/atom and meV per molecule) and force RMSE (meV/Å, per component) of each,
and the ratio of the force RMSEs (ours / mace-torch; below 1 means ours is more accurate).

Usage::

    python scripts/bench_train.py                       # Facet vs mace-torch, 1200 s each, 2 threads
    python scripts/bench_train.py --budget-seconds 60   # smoke test
    python scripts/bench_train.py --only mace-torch --json peer.json
    python scripts/bench_train.py --model mace --peer-json peer.json --json mace.json
    python scripts/bench_train.py --only ours --budget-seconds 300 --threads 1 --set model.num_radial=24
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms

import mlip.nn  # registers the torch safe global e3nn needs (before mace is imported below)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "acac"

# our models: `mlip train` overrides on top of conf/train.yaml (shared loss, batch and EMA settings
# as the mace-torch run below: weights 1 : 100, batch 5, EMA 0.99); the optimiser is AdamW for all,
# with each model's own learning rate and schedule
SHARED_OVERRIDES = [
    "loss.energy_weight=1.0",
    "loss.forces_weight=100.0",
    "loss.stress_weight=0.0",
    "module.ema_decay=0.99",
    "data.batch_size=5",
    "data.eval_batch_size=25",
]
OUR_MODELS = {
    # Facet: two layers, 64x0e + 32x1o + 16x2e, edge harmonics and messages up to l = 3 (the
    # degree-3 messages feed only the grid mixing), 16 spline functions, residual gates open, one
    # grid MLP per element (32 -> 32 -> 32 at each point, one head) with the activation x + x^2/2 on
    # its exact grid (5 x 9; 4 x 7 in the scalar-only last layer); learning rate 0.005 decayed by a
    # cosine over the time budget (the trials that chose it are in docs/benchmarks.md)
    "facet": [
        "model=facet",
        "model.channels=[64,32,16]",
        "model.l_sh=3",
        "model.message_degree=3",
        "model.num_layers=2",
        "model.grid_channels=32",
        "model.grid_hidden=32",
        "model.grid_heads=1",
        "model.grid_species=true",
        "model.grid_activation=poly2",
        "model.num_radial=16",
        "model.gamma_init=1.0",
        "optim=adamw_cosine",
        "optim.optimizer.lr=0.005",
    ],
    # MACE-like with mace-torch's hyperparameters below: 32x0e + 32x1o, A up to l = 3,
    # correlation 3, two layers, 8 Bessel functions, radial MLP [64, 64, 64]
    "mace": [
        "model=mace",
        "model.channels=[32,32]",
        "model.l_sh=3",
        "model.num_layers=2",
        "model.correlation=3",
        "model.num_radial=8",
        "model.radial_mlp=[64,64,64]",
        "optim=adamw_plateau",  # lr 0.01 decayed on plateaus, like mace-torch
        "optim.optimizer.lr=0.01",
    ],
}
# MACE (ScaleShiftMACE: E0s plus a fitted per-atom shift and RMS-force scale, like our Potential):
# the same loss weights, batch, EMA, learning rate, cutoff; 32x0e + 32x1o, L=1, 2 layers
MACE_ARGS = [
    "--model=ScaleShiftMACE",
    "--hidden_irreps=32x0e + 32x1o",
    "--max_L=1",
    "--num_interactions=2",
    "--correlation=3",
    "--loss=weighted",
    "--energy_weight=1.0",
    "--forces_weight=100.0",
    "--batch_size=5",
    "--valid_batch_size=25",
    "--lr=0.01",
    "--ema",
    "--ema_decay=0.99",
    "--scheduler_patience=5",
    "--patience=100000",
    "--eval_interval=1",
    "--error_table=TotalRMSE",
]


def read_isolated_energies(path: Path) -> dict[int, float]:
    return {int(a.numbers[0]): float(a.get_potential_energy()) for a in ase.io.read(path, ":")}


# -- our side ---------------------------------------------------------------------------------------


def train_ours(
    model: str,
    data: Path,
    workdir: Path,
    budget: float,
    threads: int,
    cutoff: float,
    dtype: str,
    val: float,
    extra: Sequence[str] = (),
) -> tuple[Path, dict]:
    from mlip.train.runner import compose, train

    # `extra` overrides (KEY=VALUE) replace the model's own settings of the same key
    replaced = {o.split("=", 1)[0] for o in extra}
    own = [o for o in [*OUR_MODELS[model], *SHARED_OVERRIDES] if o.split("=", 1)[0] not in replaced]

    seconds = int(round(budget))
    max_time = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    overrides = [
        f"run_dir={workdir / model}",
        "resume=false",
        f"data.train={data / 'train_300K.xyz'}",
        f"data.isolated_atoms={data / 'isolated_atoms.xyz'}",
        f"data.val_fraction={val}",
        "data.test_fraction=0",
        f"cutoff={cutoff}",
        f"dtype={dtype}",
        f"num_threads={threads}",
        "trainer.max_epochs=-1",
        f"trainer.max_time={max_time}",
        "trainer.enable_progress_bar=false",
        *own,
        *extra,
    ]
    started = time.perf_counter()
    result = train(compose(overrides))
    info = {
        "overrides": overrides,
        "epochs": result.trainer.current_epoch,
        "steps": result.trainer.global_step,
        "wall_s": time.perf_counter() - started,
        "parameters": sum(p.numel() for p in result.module.potential.parameters()),
    }
    return result.model_path, info


def our_predictor(path: Path) -> Callable[[Sequence[Atoms]], tuple[np.ndarray, list[np.ndarray]]]:
    from mlip.data.graph import atoms_to_batch

    potential = mlip.load_model(path)

    def predict(frames: Sequence[Atoms]):
        energies, forces = [], []
        for start in range(0, len(frames), 50):
            chunk = frames[start : start + 50]
            batch = atoms_to_batch(chunk, potential.cutoff, dtype=potential.e0.dtype)
            out = potential(batch, forces=True)
            energies += out["energy"].detach().double().tolist()
            f = out["forces"].detach().double().numpy()
            offsets = np.cumsum([0] + [len(a) for a in chunk])
            forces += [f[offsets[k] : offsets[k + 1]] for k in range(len(chunk))]
        return np.array(energies), forces

    return predict


# -- mace-torch -------------------------------------------------------------------------------------


def write_mace_file(frames: Sequence[Atoms], path: Path) -> None:
    """Frames with labels under MACE's REF_ keys (no calculator), as mace-torch reads them."""
    out = []
    for atoms in frames:
        copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        copy.info["REF_energy"] = float(atoms.get_potential_energy())
        copy.arrays["REF_forces"] = np.array(atoms.get_forces())
        out.append(copy)
    ase.io.write(path, out, format="extxyz")


def mace_command(args: list[str]) -> list[str]:
    # mace's own entry point (mace_run_train), after `import mlip` registers the torch safe global
    # that e3nn 0.4.4 needs under torch >= 2.6
    code = "import sys, mlip; from mace.cli.run_train import main; sys.argv[0] = 'mace_run_train'; main()"
    return [sys.executable, "-c", code, *args]


def train_mace(
    data: Path, workdir: Path, budget: float, threads: int, cutoff: float, dtype: str, val: float
) -> tuple[Path, dict]:
    mace_dir = workdir / "mace-torch"
    mace_dir.mkdir(parents=True, exist_ok=True)
    train_file = mace_dir / "train.xyz"
    write_mace_file(ase.io.read(data / "train_300K.xyz", ":"), train_file)
    e0s = read_isolated_energies(data / "isolated_atoms.xyz")
    common = [
        "--name=mace_acac",
        f"--work_dir={mace_dir}",
        f"--train_file={train_file}",
        f"--valid_fraction={val}",
        f"--E0s={e0s!r}",  # a Python dict literal, as mace parses it
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        f"--r_max={cutoff}",
        f"--default_dtype={dtype}",
        "--device=cpu",
        "--seed=0",
        *MACE_ARGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = mace_dir / "train_stdout.log"
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            mace_command([*common, "--max_num_epochs=1000000"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        train_start = _wait_for_line(log, "Started training", process, timeout=600)
        stop_at = train_start + budget
        while process.poll() is None and time.perf_counter() < stop_at:
            time.sleep(0.5)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    train_seconds = time.perf_counter() - train_start
    checkpoints = sorted(
        (mace_dir / "checkpoints").glob("*_epoch-*.pt"),
        key=lambda p: int(re.search(r"_epoch-(\d+)", p.name).group(1)),
    )
    if not checkpoints:
        raise RuntimeError(f"MACE wrote no checkpoint within {budget} s; see {log}")
    epoch = int(re.search(r"_epoch-(\d+)", checkpoints[-1].name).group(1))
    finish = subprocess.run(
        mace_command([*common, f"--max_num_epochs={epoch}", "--restart_latest"]),
        capture_output=True,
        text=True,
        env=env,
    )
    (mace_dir / "finalise_stdout.log").write_text(finish.stdout + finish.stderr)
    model = mace_dir / "mace_acac.model"
    if finish.returncode != 0 or not model.is_file():
        raise RuntimeError(f"MACE finalisation failed; see {mace_dir / 'finalise_stdout.log'}")
    info = {
        "args": common,
        "best_epoch": epoch,
        "train_s": train_seconds,
        "wall_s": time.perf_counter() - started,
    }
    return model, info


def _wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if text in log.read_text(errors="replace"):
            return time.perf_counter()
        if process.poll() is not None:
            raise RuntimeError(f"MACE exited before training started; see {log}")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError(f"MACE did not start training within {timeout} s; see {log}")


def mace_predictor(path: Path, dtype: str):
    from mace.calculators import MACECalculator

    calculator = MACECalculator(model_paths=str(path), device="cpu", default_dtype=dtype)

    def predict(frames: Sequence[Atoms]):
        energies, forces = [], []
        for atoms in frames:
            atoms = atoms.copy()
            atoms.calc = calculator
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
        return np.array(energies), forces

    return predict


# -- the comparison ---------------------------------------------------------------------------------


def errors(predict, frames: Sequence[Atoms]) -> dict[str, float]:
    """Energy RMSE (meV/atom, meV per structure) and force-component RMSE (meV/Å)."""
    energies, forces = predict(frames)
    reference = np.array([a.get_potential_energy() for a in frames])
    atoms = np.array([len(a) for a in frames])
    de = energies - reference
    df = np.concatenate([f - a.get_forces() for f, a in zip(forces, frames, strict=True)])
    return {
        "energy_rmse_meV_per_atom": 1000 * float(np.sqrt(np.mean((de / atoms) ** 2))),
        "energy_rmse_meV": 1000 * float(np.sqrt(np.mean(de**2))),
        "forces_rmse_meV_per_A": 1000 * float(np.sqrt(np.mean(df**2))),
        "forces_mae_meV_per_A": 1000 * float(np.mean(np.abs(df))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(OUR_MODELS), default="facet", help="our model")
    parser.add_argument("--budget-seconds", type=float, default=1200.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the acac files")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument(
        "--only", choices=["ours", "mace-torch"], help="train and test one side only"
    )
    parser.add_argument(
        "--peer-json",
        type=Path,
        help="take mace-torch's result from this earlier --json output (same budget, threads, "
        "dtype, cutoff and data) instead of training it again",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="`mlip train` override for our model, replacing its own setting of KEY "
        "(repeatable; e.g. --set model.num_radial=24 --set optim.optimizer.lr=0.003)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    workdir.mkdir(parents=True, exist_ok=True)
    test = ase.io.read(args.data / "test_MD_300K.xyz", ":")
    setup = (args.data, workdir, args.budget_seconds, args.threads, args.cutoff, args.dtype)
    config = {
        "budget_seconds": args.budget_seconds,
        "threads": args.threads,
        "dtype": args.dtype,
        "cutoff": args.cutoff,
        "data": str(args.data),
        "val_fraction": args.val_fraction,
    }
    results: dict[str, dict] = {}
    if args.peer_json:
        earlier = json.loads(args.peer_json.read_text())
        if earlier.get("config") != config or "mace-torch" not in earlier:
            raise SystemExit(f"{args.peer_json}: no mace-torch result with the settings {config}")
        results["mace-torch"] = earlier["mace-torch"]
        print(f"== mace-torch: result taken from {args.peer_json}", flush=True)
    sides = {"ours": [args.model], "mace-torch": ["mace-torch"], None: [args.model, "mace-torch"]}
    for side in sides[args.only]:
        if side in results:
            continue
        print(
            f"== {side}: training for {args.budget_seconds:.0f} s on {args.threads} threads",
            flush=True,
        )
        try:
            if side == "mace-torch":
                path, info = train_mace(*setup, args.val_fraction)
                predict = mace_predictor(path, args.dtype)
            else:
                path, info = train_ours(side, *setup, args.val_fraction, args.set)
                predict = our_predictor(path)
        except RuntimeError as err:  # e.g. no finished epoch within the budget
            print(f"{side}: no result: {err}", flush=True)
            results[side] = {"error": str(err)}
            continue
        started = time.perf_counter()
        info.update(errors(predict, test))
        info["test_s"] = time.perf_counter() - started
        info["model"] = str(path)
        results[side] = info

    print(
        f"\nTest set {args.data / 'test_MD_300K.xyz'} ({len(test)} frames), budget "
        f"{args.budget_seconds:.0f} s of training each, {args.threads} threads, {args.dtype}, "
        f"load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus"
    )
    print(f"{'model':<11}{'E meV/atom':>12}{'E meV':>10}{'F meV/Å':>10}{'F MAE':>9}  trained")
    for side, r in results.items():
        if "error" in r:
            print(f"{side:<11}{'no result':>12}  ({r['error']})")
            continue
        trained = f"{r.get('epochs', r.get('best_epoch'))} epochs"
        if "parameters" in r:
            trained += f", {r['parameters']:,} parameters"
        print(
            f"{side:<11}{r['energy_rmse_meV_per_atom']:>12.2f}{r['energy_rmse_meV']:>10.1f}"
            f"{r['forces_rmse_meV_per_A']:>10.1f}{r['forces_mae_meV_per_A']:>9.1f}  {trained}"
        )
    ours, peer = results.get(args.model, {}), results.get("mace-torch", {})
    if "forces_rmse_meV_per_A" in ours and "forces_rmse_meV_per_A" in peer:
        ratio = ours["forces_rmse_meV_per_A"] / peer["forces_rmse_meV_per_A"]
        results["force_rmse_ratio"] = ratio
        print(f"force RMSE ratio {args.model} / mace-torch: {ratio:.3f} (below 1: ours better)")
    if args.json:
        args.json.write_text(json.dumps({"config": config, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
