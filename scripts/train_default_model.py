"""Train the bundled default model and install it as ``mlip/models/default.pt``.

Runs ``mlip train`` (the project's pipeline) on the bundled periodic data, Zuo et al. 2020 Si
(``data/zuo2020/Si_train.xyz``: 214 frames, VASP PBE energies, forces, stress; split 80/10/10 with a
fixed seed, so the test frames are never trained on), then copies the exported model file into the
package with a ``default_model`` record in its metadata, and prints its test errors (the lines to
paste into README.md).

Usage (from the repository root)::

    python scripts/train_default_model.py                      # 100 epochs, about 26 min on one core
    python scripts/train_default_model.py --max-epochs 200 --max-time 00:02:00:00
    python scripts/train_default_model.py --install-only runs/default_model   # reuse a run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "mlip" / "models" / "default.pt"
MAX_BYTES = 3_000_000

# the default model: a small Facet (overrides of conf/train.yaml and conf/model/facet.yaml)
OVERRIDES = [
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


def train(run_dir: Path, max_epochs: int, max_time: str, extra: list[str]) -> Path:
    command = [sys.executable, "-m", "mlip.cli", "train", f"run_dir={run_dir}", "resume=false"]
    command += OVERRIDES + [f"trainer.max_epochs={max_epochs}", f"trainer.max_time={max_time}"]
    command += extra
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    model = run_dir / "model.pt"
    if not model.is_file():
        raise SystemExit(f"training wrote no model file at {model}")
    return model


def install(model: Path) -> dict:
    """Copy ``model`` to the package with a record of how it was made; returns its test errors."""
    import mlip
    from mlip.export import read_model_file

    payload = read_model_file(model)
    potential = mlip.load_model(model)
    metadata = dict(payload.get("metadata") or {})
    errors = metadata.get("errors", {})
    # paths on the training machine mean nothing to users of the package
    metadata.pop("run_dir", None)
    for key in ("run_dir", "logger"):
        metadata.get("config", {}).pop(key, None)
    metadata["default_model"] = {
        "trained_by": "scripts/train_default_model.py (full training config: metadata.config)",
        "training_data": "data/zuo2020/Si_train.xyz (Zuo et al. 2020, VASP PBE; 80/10/10 split)",
        "elements": potential.elements,
    }
    mlip.save_model(potential, TARGET, metadata=metadata)
    size = TARGET.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{TARGET} is {size / 1e6:.1f} MB, more than {MAX_BYTES / 1e6:.0f} MB")
    params = sum(p.numel() for p in potential.parameters())
    print(f"installed {TARGET} ({size / 1e6:.2f} MB, {params:,} parameters, {potential.elements})")
    return errors.get("test", {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "default_model")
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--max-time", default="00:00:40:00", help="DD:HH:MM:SS (40 minutes)")
    parser.add_argument(
        "--install-only", type=Path, metavar="RUN_DIR", help="install RUN_DIR/model.pt, no training"
    )
    parser.add_argument("overrides", nargs="*", help="more `mlip train` overrides")
    args = parser.parse_args(argv)
    if args.install_only:
        model = args.install_only / "model.pt"
    else:
        model = train(args.run_dir.resolve(), args.max_epochs, args.max_time, args.overrides)
    errors = install(model)
    if errors:
        print("test errors (held-out 10 % of Si_train.xyz):")
        for key, value in sorted(errors.items()):
            print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
