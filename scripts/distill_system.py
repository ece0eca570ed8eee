"""System-specific distillation, timed: one structure, SevenNet-0 as the teacher, a student in
minutes.

Runs ``mlip distill STRUCTURE teacher=sevennet0`` (the structures sampler around the file: a
supercell of at least 64 atoms, rattles, strains, vacancies, and teacher Langevin MD at 300 and
900 K) in this process and reports:

- the wall time of the whole run (structures, teacher MD, labels, the student's training, its test);
- the student's force RMSE against the teacher on the held-out teacher-MD frames (meV/Å) and on
  all held-out frames;
- seconds per MD step of teacher and student on the supercell, side by side (Langevin, 2 fs,
  ``--md-steps`` each after two warm-up steps) and their ratio.

Needs ``pip install -e ".[teachers]"``. Usage::

    python scripts/distill_system.py                            # 64-atom diamond Si, 2 threads
    python scripts/distill_system.py cu.cif --run-dir runs/cu_7net --json cu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import torch
from ase.build import bulk

from mlip.distill.pipeline import compose, distill

# the student and its budget: a one-layer Facet (facet_small) trained for at most 15 minutes
OVERRIDES = [
    "teacher=sevennet0",
    "md.temperatures_K=[300,900]",
    "md.steps=200",
    "progress=false",
    "student.md_speed_steps=20",
    "student.overrides=['data.stream=false','data.on_error=skip','data.batch_size=4',"
    "'trainer.max_epochs=300','trainer.max_time=00:00:15:00','trainer.enable_progress_bar=false']",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("structure", nargs="?", type=Path, help="default: diamond Si (8 atoms)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/distill_si_7net"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("overrides", nargs="*", help="more `mlip distill` overrides")
    args = parser.parse_args()
    structure = args.structure
    if structure is None:
        structure = Path(tempfile.mkdtemp()) / "si.cif"
        ase.io.write(structure, bulk("Si", "diamond", a=5.43, cubic=True))
    overrides = [f"structures=['{structure}']", f"run_dir={args.run_dir}", *OVERRIDES]
    overrides += [f"num_threads={args.threads}", *args.overrides]
    started = time.perf_counter()
    result = distill(compose(overrides))
    wall = time.perf_counter() - started
    md = {k: v for k, v in result.errors.items() if k.startswith("md_")}
    report = {
        "structure": str(structure),
        "wall_s": wall,
        "force_rmse_meV_per_A": {k: v["forces"]["rmse"] for k, v in result.errors.items()},
        "held_out_md_frames": {k: v["frames"] for k, v in md.items()},
        "md_speed_s_per_step": result.md_speed,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "model": str(result.model_path),
    }
    print(
        f"distill_system: {wall / 60:.1f} min in all on {args.threads} thread(s); force RMSE "
        f"against the teacher on held-out teacher-MD frames: "
        + ", ".join(
            f"{k} {v['forces']['rmse']:.0f} meV/Å ({v['frames']} frames)" for k, v in md.items()
        )
        + f"; all held-out {result.errors['all']['forces']['rmse']:.0f} meV/Å; MD "
        f"{result.md_speed['speedup']:.1f}x the teacher's speed per step"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
