"""The universal model (or another student) against its teacher (SevenNet-0), in one process.

Needs the teacher: ``pip install -e ".[teachers]"``. Four parts, each a table:

  held-out   fresh structures of twelve chemistries from the prototype sampler with another seed
             and other volumes and rattles than the training run's (so never trained on), labelled
             by the teacher: the student's energy per atom (meV/atom), force (meV/Å) and stress
             (meV/Å³) errors against the teacher.
  volumes    each chemistry's unrattled prototype relaxed (FIRE + ASE's FrechetCellFilter, forces
             below 0.02 eV/Å, stress below 0.05 GPa, at most 300 steps) by teacher and student:
             volume per atom (Å³/atom) and their difference (%).
  zuo2020    DFT (VASP PBE) test files of Zuo et al. 2020 (--zuo DIR, default
             ../shared/data/zuo2020; Cu, Ge, Li, Ni), which neither model trained on: errors of the
             student and of the teacher against DFT, side by side.
  speed      seconds per energy + forces + stress call of teacher and student on Si 64, Cu 500 and
             SrTiO3 320 (median of --repeats after a warm-up), alternating the two.

Usage::

    python scripts/bench_distill.py --json /tmp/distill.json
    python scripts/bench_distill.py --quick                   # 3 chemistries, no Zuo, 2 repeats
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator

from mlip.calculator import MLIPCalculator
from mlip.data.readers import read_frames
from mlip.distill.labels import teacher_labels
from mlip.distill.prototypes import PrototypeSampler
from mlip.distill.teacher import Teacher
from mlip.sim.relax import relax

REPO = Path(__file__).resolve().parents[1]
# (label, elements, prototype family, formula): one structure family per chemistry
CHEMISTRIES = [
    ("Si diamond", ["Si"], "diamond", "Si"),
    ("Cu fcc", ["Cu"], "fcc", "Cu"),
    ("Fe bcc", ["Fe"], "bcc", "Fe"),
    ("NaCl rocksalt", ["Na", "Cl"], "rocksalt", "NaCl"),
    ("MgO rocksalt", ["Mg", "O"], "rocksalt", "MgO"),
    ("GaAs zincblende", ["Ga", "As"], "zincblende", "GaAs"),
    ("ZnO wurtzite", ["Zn", "O"], "wurtzite", "ZnO"),
    ("TiO2 rutile", ["Ti", "O"], "rutile", "TiO2"),
    ("CaF2 fluorite", ["Ca", "F"], "fluorite", "CaF2"),
    ("Al2O3 corundum", ["Al", "O"], "corundum", "Al2O3"),
    ("SrTiO3 perovskite", ["Sr", "Ti", "O"], "perovskite", "SrTiO3"),
    ("NiAl B2", ["Ni", "Al"], "B2", "AlNi"),
]
SEED = 7  # the training run's is 0
VOLUMES = [0.97, 1.03]  # the training run's: 0.94, 1.00, 1.06


def chemistry_structures(elements: list[str], family: str, formula: str) -> tuple[Atoms, list]:
    """The unrattled prototype and its strained, rattled copies (the sampler, seed ``SEED``)."""
    sampler = PrototypeSampler(
        elements=elements,
        prototypes=["elements" if family in ("diamond", "fcc", "bcc") else family],
        volumes=VOLUMES,
        rattles=2,
        seed=SEED,
    )
    reduced = Atoms(formula).get_chemical_formula("metal", empirical=True)

    def ours(name: str, atoms: Atoms) -> bool:
        same = atoms.get_chemical_formula("metal", empirical=True) == reduced
        return name.split(":")[0] == family and same

    base = [a for name, a, _ in sampler.structures() if ours(name, a)]
    frames = [a for a in sampler.frames() if ours(a.info["config_type"], a)]
    if not base:
        raise SystemExit(f"the prototype sampler builds no {family} {formula}")
    return base[0], frames


def labelled(calculator: Calculator, frames: list[Atoms]) -> list[dict]:
    return [teacher_labels(calculator, a) for a in frames]


def compare(ref: list[dict], pred: list[dict], frames: list[Atoms]) -> dict:
    """MAE / RMSE of ``pred`` against ``ref``: energy meV/atom, forces meV/Å, stress meV/Å³."""
    pairs = list(zip(ref, pred, frames, strict=True))
    diffs = {
        "energy": [1e3 * (p["energy"] - r["energy"]) / len(a) for r, p, a in pairs],
        "forces": [1e3 * (p["forces"] - r["forces"]).ravel() for r, p, _ in pairs],
        "stress": [
            1e3 * (p["stress"] - r["stress"])
            for r, p, _ in pairs
            if "stress" in r and "stress" in p
        ],
    }
    out = {"frames": len(frames)}
    for name, values in diffs.items():
        values = np.concatenate([np.ravel(v) for v in values]) if values else np.zeros(0)
        if values.size:
            out[name] = {
                "mae": float(np.abs(values).mean()),
                "rmse": float(np.sqrt((values**2).mean())),
            }
    return out


def dft_labels(frames: list[Atoms]) -> list[dict]:
    """The labels of frames read by :func:`mlip.data.readers.read_frames` (stress Voigt, eV/Å³)."""
    return [{k: np.asarray(v) for k, v in a.calc.results.items()} for a in frames]


def relaxed_volume(atoms: Atoms, calculator: Calculator) -> tuple[float, bool]:
    result = relax(atoms.copy(), calculator, fmax=0.02, smax_GPa=0.05, steps=300)
    return result.atoms.get_volume() / len(atoms), bool(result.converged)


_CALLS = itertools.count()


def call_time(calculator: Calculator, atoms: Atoms) -> float:
    """Seconds for one energy + forces + stress call on a fresh rattle of ``atoms`` (new
    positions each call, so no calculator answers from its cache)."""
    work = atoms.copy()
    work.rattle(0.01, seed=next(_CALLS))
    work.calc = calculator
    started = time.perf_counter()
    work.get_potential_energy(), work.get_forces(), work.get_stress()
    return time.perf_counter() - started


def speed(teacher: Calculator, student: Calculator, repeats: int) -> dict:
    cells = {
        "Si 64": bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2),
        "Cu 500": bulk("Cu", "fcc", a=3.61, cubic=True) * (5, 5, 5),
        "SrTiO3 320": _perovskite() * (4, 4, 4),
    }
    out = {}
    for name, atoms in cells.items():
        call_time(teacher, atoms), call_time(student, atoms)  # warm-up
        times = {"teacher": [], "student": []}
        for _ in range(repeats):
            times["teacher"].append(call_time(teacher, atoms))
            times["student"].append(call_time(student, atoms))
        medians = {k: statistics.median(v) for k, v in times.items()}
        out[name] = {**medians, "speedup": medians["teacher"] / medians["student"]}
        print(
            f"  {name}: teacher {medians['teacher']:.3f} s, student {medians['student']:.3f} s, "
            f"{out[name]['speedup']:.1f}x",
            flush=True,
        )
    return out


def _perovskite() -> Atoms:
    a = 3.905
    return Atoms(
        "SrTiO3",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        cell=[a, a, a],
        pbc=True,
    )


def row(label: str, err: dict) -> str:
    def cell(name: str) -> str:
        return (
            f"{err[name]['mae']:8.1f} {err[name]['rmse']:8.1f}"
            if name in err
            else f"{'-':>8} {'-':>8}"
        )

    return f"  {label:20s} {err['frames']:4d} {cell('energy')} {cell('forces')} {cell('stress')}"


HEADER = (
    f"  {'':20s} {'n':>4} {'E MAE':>8} {'E RMSE':>8} {'F MAE':>8} {'F RMSE':>8} "
    f"{'S MAE':>8} {'S RMSE':>8}\n  {'':25s}[meV/atom]        [meV/Å]           [meV/Å³]"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="universal", help="student (a bundled name or file)")
    parser.add_argument("--teacher", default="sevennet0", help="conf/distill/teacher/ config")
    parser.add_argument("--zuo", type=Path, default=REPO.parent / "shared" / "data" / "zuo2020")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 chemistries, no Zuo, 2 repeats")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from mlip.distill.pipeline import build_teacher, compose

    teacher: Teacher = build_teacher(compose([f"teacher={args.teacher}"]).teacher)
    student = MLIPCalculator(args.model)
    chemistries = CHEMISTRIES[:3] if args.quick else CHEMISTRIES
    report: dict = {
        "teacher": teacher.describe(),
        "student": str(args.model),
        "held_out": {},
        "volumes": {},
        "zuo2020": {},
    }

    print(f"held-out generated structures: student against {teacher.name}\n{HEADER}", flush=True)
    everything = {"ref": [], "pred": [], "frames": []}
    for label, elements, family, formula in chemistries:
        base, frames = chemistry_structures(elements, family, formula)
        ref, pred = labelled(teacher.calculator, frames), labelled(student, frames)
        report["held_out"][label] = compare(ref, pred, frames)
        print(row(label, report["held_out"][label]), flush=True)
        for key, value in (("ref", ref), ("pred", pred), ("frames", frames)):
            everything[key] += value
        v_teacher, ok_teacher = relaxed_volume(base, teacher.calculator)
        v_student, ok_student = relaxed_volume(base, student)
        report["volumes"][label] = {
            "teacher_A3_per_atom": v_teacher,
            "student_A3_per_atom": v_student,
            "difference_percent": 100 * (v_student / v_teacher - 1),
            "converged": {"teacher": ok_teacher, "student": ok_student},
        }
    report["held_out"]["all"] = compare(everything["ref"], everything["pred"], everything["frames"])
    print(row("all", report["held_out"]["all"]), flush=True)

    print("\nrelaxed volume per atom (Å³/atom): teacher, student, difference", flush=True)
    for label, v in report["volumes"].items():
        print(
            f"  {label:20s} {v['teacher_A3_per_atom']:7.2f} {v['student_A3_per_atom']:7.2f} "
            f"{v['difference_percent']:+6.1f} %",
            flush=True,
        )

    if not args.quick and args.zuo.is_dir():
        print(f"\nZuo et al. 2020 test files (VASP PBE), against DFT\n{HEADER}", flush=True)
        for path in sorted(args.zuo.glob("*_test.xyz")):
            frames = read_frames(path)
            ref = dft_labels(frames)
            for who, calc in (("student", student), ("teacher", teacher.calculator)):
                err = compare(ref, labelled(calc, frames), frames)
                report["zuo2020"].setdefault(path.stem, {})[who] = err
                print(row(f"{path.stem} {who}", err), flush=True)

    print(f"\nseconds per energy + forces + stress call ({args.threads} thread(s))", flush=True)
    report["speed_s_per_call"] = speed(
        teacher.calculator, student, 2 if args.quick else args.repeats
    )
    report["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    report["units"] = {
        "energy": "meV/atom",
        "forces": "meV/Å",
        "stress": "meV/Å³",
        "GPa_per_eV_A3": 1 / units.GPa,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
