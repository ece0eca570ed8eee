"""Recreate the bundled models: ``mlip/models/si.pt`` (the default now) and
``mlip/models/universal.pt``.

**universal** (to become the default; needs ``pip install -e ".[teachers]"``) is ``mlip distill``
from SevenNet-0 across the periodic table: the prototype sampler (83 elements, H to Bi; elemental,
binary and ternary prototypes at three volumes, each rattled twice, plus teacher MD at 300 and
600 K), the teacher's labels (ASE-LMDB, resumable: about 1 h 15 min for the 20,764 frames on one
core), then the student's ``mlip train`` run (resumable from its last checkpoint). Rerun the same
command after a kill or at the next session: every step continues where it stopped.

**si** (``--model si``, the demo model ``mlip train`` recreates in minutes) is ``mlip train`` on
the bundled Zuo et al. 2020 Si data (``data/zuo2020/Si_train.xyz``, VASP PBE, split 80/10/10).

Either is installed into the package with a record of how it was made, and its errors are
printed (the lines for README.md).

Usage (from the repository root)::

    python scripts/train_default_model.py                   # universal, resumable
    python scripts/train_default_model.py --until labels    # only label (then train on a GPU)
    python scripts/train_default_model.py --model si        # the Si demo model, ~26 min
    python scripts/train_default_model.py --install-only runs/distill_universal/model.pt
    python scripts/train_default_model.py --model si --install-only runs/si/model.pt
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "mlip" / "models"
MAX_BYTES = 5_000_000

# the universal model: `mlip distill` overrides of conf/distill.yaml
UNIVERSAL = [
    "sampler=prototypes",
    "teacher=sevennet0",
    "sampler.rattles=2",
    "md.starts=20",
    "md.steps=100",
    "seed=0",
    "progress=false",
    "student.model=facet",
    "student.md_speed_steps=20",
    "student.overrides=["
    + ",".join(
        f"'{o}'"
        for o in (
            "data.stream=false",
            "data.on_error=skip",
            "data.batch_size=32",
            "data.eval_batch_size=64",
            "cutoff=5.0",
            "model.channels=[64,32,16]",
            "model.num_layers=2",
            "model.grid_channels=16",
            "loss.kind=huber",  # robust to the teacher's far-from-equilibrium outliers
            "loss.huber_delta=0.01",
            "loss.energy_weight=10.0",
            "loss.forces_weight=10.0",
            "loss.stress_weight=100.0",
            "trainer.max_epochs=6",
            "trainer.max_time=null",
            "trainer.enable_progress_bar=false",
        )
    )
    + "]",
]

# the Si demo model: `mlip train` overrides of conf/train.yaml and conf/model/facet.yaml
SI = [
    "data=zuo_si",
    "model=facet",
    "cutoff=5.0",
    "dtype=float32",
    "model.channels=[32,16,8]",
    "model.num_layers=2",
    "model.grid_channels=8",
    "model.grid_hidden=16",
    "loss.energy_weight=100.0",  # per-atom energies and stress need weight next to the forces
    "loss.forces_weight=30.0",
    "loss.stress_weight=1000.0",
    "trainer.enable_progress_bar=false",
    "seed=0",
]


def run(command: list[str]) -> None:
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def universal(run_dir: Path, threads: int, until: str, extra: list[str]) -> Path:
    command = [sys.executable, "-m", "mlip.cli", "distill", f"run_dir={run_dir}"]
    run([*command, *UNIVERSAL, f"num_threads={threads}", f"until={until}", *extra])
    return run_dir / "model.pt"


def si(run_dir: Path, threads: int, max_epochs: int, max_time: str, extra: list[str]) -> Path:
    command = [sys.executable, "-m", "mlip.cli", "train", f"run_dir={run_dir}", "resume=false"]
    command += [*SI, f"num_threads={threads}", f"trainer.max_epochs={max_epochs}"]
    run([*command, f"trainer.max_time={max_time}", *extra])
    return run_dir / "model.pt"


def install(model: Path, name: str) -> dict:
    """Copy ``model`` into the package as ``<name>.pt`` with a record of how it was made;
    returns its errors (the student's against the teacher, or the Si model's test errors)."""
    import mlip
    from mlip.export import read_model_file

    if not model.is_file():
        raise SystemExit(f"no model file at {model}")
    payload = read_model_file(model)
    potential = mlip.load_model(model)
    metadata = dict(payload.get("metadata") or {})
    # paths on the training machine mean nothing to users of the package
    metadata.pop("run_dir", None)
    for key in ("run_dir", "logger"):
        metadata.get("config", {}).pop(key, None)
    distilled = metadata.get("distill", {})
    distilled.pop("student_run", None)
    if name == "universal":
        made = (
            "mlip distill from SevenNet-0 (settings: metadata.distill; training: metadata.config)"
        )
        data = "SevenNet-0 labels of the prototype sampler's structures and teacher MD snapshots"
    else:
        made = "scripts/train_default_model.py --model si (full training config: metadata.config)"
        data = "data/zuo2020/Si_train.xyz (Zuo et al. 2020, VASP PBE; 80/10/10 split)"
    metadata["bundled_model"] = {
        "name": name,
        "trained_by": made,
        "training_data": data,
        "elements": potential.elements,
    }
    target = MODELS / f"{name}.pt"
    mlip.save_model(potential, target, metadata=metadata)
    size = target.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{target} is {size / 1e6:.1f} MB, more than {MAX_BYTES / 1e6:.0f} MB")
    params = sum(p.numel() for p in potential.parameters())
    print(
        f"installed {target} ({size / 1e6:.2f} MB, {params:,} parameters, "
        f"{len(potential.elements)} elements)"
    )
    return distilled.get("errors_vs_teacher", {}).get("all") or metadata.get("errors", {}).get(
        "test", {}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("universal", "si"), default="universal")
    parser.add_argument("--run-dir", type=Path, help="default: runs/distill_universal or runs/si")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--until", choices=("model", "labels"), default="model", help="universal")
    parser.add_argument("--max-epochs", type=int, default=100, help="si")
    parser.add_argument("--max-time", default="00:00:40:00", help="si: DD:HH:MM:SS")
    parser.add_argument("--install-only", type=Path, metavar="MODEL", help="install MODEL only")
    parser.add_argument("overrides", nargs="*", help="more `mlip distill` / `mlip train` overrides")
    args = parser.parse_args(argv)
    name = args.model
    if args.install_only:
        model = args.install_only
    else:
        default = "distill_universal" if args.model == "universal" else "si"
        run_dir = (args.run_dir or REPO / "runs" / default).resolve()
        if args.model == "universal":
            model = universal(run_dir, args.threads, args.until, args.overrides)
            if args.until == "labels":
                return 0
        else:
            model = si(run_dir, args.threads, args.max_epochs, args.max_time, args.overrides)
    errors = install(model, name)
    for key, value in sorted(errors.items()):
        print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
