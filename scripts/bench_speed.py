"""Inference speed of our models against MACE (mace-torch) with MACE-MP-0 hyperparameters, on CPU.

Times energy + forces (+ stress for periodic systems) per call, excluding the neighbour list (each
model's batch is built once, outside the timing loop). All models are timed side by side in one
process, interleaved round by round (the call order rotates every round), so machine noise hits
every model alike; the reported time is the median (and min) of ``--repeats`` timed calls after
warm-up calls. Peak memory is measured separately: every (model, system, dtype) runs in a fresh
subprocess of this script, which resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) just
before its calls and reports ``VmHWM - VmRSS`` (the extra resident memory the calls needed on top of
the loaded model and batch) and the absolute peak RSS.

Models (one element table, H C N O Si Cu, for all):
  facet        mlip.nn.Facet(channels=[128, 64, 32], l_sh=2, num_layers=3, radial="spline") in
               mlip.Potential (the authors' default hyperparameters).
  mace-small   mace.modules.ScaleShiftMACE, MACE-MP-0 "small": 128x0e, max_ell 3, 2 interactions,
               correlation 3, r_max 6, 8 Bessel, p=5 cutoff, radial MLP [64, 64, 64], MLP 16x0e,
               RealAgnosticResidualInteractionBlock (first and later layers).
  mace-medium  as small with hidden irreps 128x0e + 128x1o (MACE-MP-0 "medium").
  mlip-mace-small, mlip-mace-medium
               our MACE-like model (mlip.nn.mace.MACE: body-order product on a spherical grid) with
               the same hyperparameters as mace-small / mace-medium (channels [128] / [128, 128],
               l_sh 3, correlation 3, 2 layers, r_max 6, 8 Bessel, radial MLP [64, 64, 64]).

Verdicts: Facet at least 2x faster than mace-medium; each mlip-mace-X at least 1.3x faster than
mace-X, on every system and dtype run.
Parameters are frozen (``requires_grad=False``) for every model, as mace's ASE calculator does;
Facet's residual gates are set to 0.5 (their initial 0 would make forces identically zero).

Usage::

    python scripts/bench_speed.py --repeats 7 --json /tmp/bench_speed.json
    python scripts/bench_speed.py --quick
    python scripts/bench_speed.py --profile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.data import chemical_symbols
from ase.io import read
from mace_peer import MP_TABLE, build_mace_mp

import mlip.nn  # first party, before e3nn / mace (imported lazily): registers a safe global
from mlip.data import atoms_to_batch
from mlip.nn import Facet
from mlip.nn.config import default_dtype
from mlip.nn.mace import MACE

warnings.filterwarnings("ignore", message="The TorchScript type system")

REPO = Path(__file__).resolve().parents[1]
R_MAX = 6.0
TABLE = [1, 6, 7, 8, 14, 29]  # H C N O Si Cu: one table for every model, so embeddings are equal
MODELS = ["facet", "mace-small", "mace-medium", "mlip-mace-small", "mlip-mace-medium"]
SIZES = {"small": [128], "medium": [128, 128]}  # our channels per degree, as HIDDEN_IRREPS
# (slower model, faster model, bar): the time ratio slower / faster must reach the bar (None: shown)
PAIRS = [
    ("mace-medium", "facet", 2.0),
    ("mace-small", "facet", None),
    ("mace-small", "mlip-mace-small", 1.3),
    ("mace-medium", "mlip-mace-medium", 1.3),
]
SYSTEMS = ["si64", "cu500", "3bpa"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
THREEBPA = Path(os.environ.get("MLIP_3BPA", "/work/shared/data/3bpa/train_300K.xyz"))


# ---------------------------------------------------------------------------------------------
# systems


def make_system(name: str) -> Atoms:
    """The benchmark structures (fixed seeds)."""
    if name == "si64":
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.05, seed=1)
    elif name == "cu500":
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 5, 5))
        atoms.rattle(0.05, seed=2)
    elif name == "3bpa":
        atoms = read(THREEBPA, index=0)
        atoms.pbc = False
        atoms.calc = None
    else:
        raise ValueError(f"unknown system {name!r}")
    return atoms


def describe(name: str) -> str:
    return {
        "si64": "Si diamond 2x2x2 cubic, rattled 0.05 A",
        "cu500": "Cu fcc 5x5x5 cubic, rattled 0.05 A",
        "3bpa": "3BPA molecule, first frame of train_300K.xyz",
    }[name]


# ---------------------------------------------------------------------------------------------
# models


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_facet(dtype: torch.dtype, avg_num_neighbors: float, table=TABLE) -> torch.nn.Module:
    torch.manual_seed(0)
    with default_dtype(dtype):
        model = Facet(
            num_species=len(table),
            r_max=R_MAX,
            channels=[128, 64, 32],
            l_sh=2,
            num_layers=3,
            radial="spline",
            avg_num_neighbors=avg_num_neighbors,
        )
        potential = mlip.Potential(model, R_MAX, species=table)
    # the residual gates start at 0 (identity start), which makes an untrained model's energy
    # independent of the geometry (forces exactly zero); give them the values of a trained-like
    # model so outputs are non-trivial. The amount of computation is the same either way.
    with torch.no_grad():
        for gamma in model.gammas:
            gamma.fill_(0.5)
    return potential.eval().requires_grad_(False)


def build_mace(
    size: str, dtype: torch.dtype, avg_num_neighbors: float, table=TABLE
) -> torch.nn.Module:
    return build_mace_mp(size, dtype, avg_num_neighbors, table, R_MAX).eval().requires_grad_(False)


def build_mlip_mace(
    size: str, dtype: torch.dtype, avg_num_neighbors: float, table=TABLE
) -> torch.nn.Module:
    """Our MACE-like model with mace-small / mace-medium's hyperparameters."""
    torch.manual_seed(0)
    with default_dtype(dtype):
        model = MACE(
            num_species=len(table),
            r_max=R_MAX,
            channels=SIZES[size],
            l_sh=3,
            num_layers=2,
            correlation=3,
            radial="bessel_mlp",
            num_radial=8,
            radial_mlp=[64, 64, 64],
            avg_num_neighbors=avg_num_neighbors,
        )
        potential = mlip.Potential(model, R_MAX, species=table)
    return potential.eval().requires_grad_(False)


def build(model_name: str, dtype: torch.dtype, avg_num_neighbors: float, table=TABLE):
    """Any model of :data:`MODELS` (mlip models inside their Potential)."""
    if model_name == "facet":
        return build_facet(dtype, avg_num_neighbors, table)
    size = model_name.rsplit("-", 1)[1]
    if model_name.startswith("mlip-"):
        return build_mlip_mace(size, dtype, avg_num_neighbors, table)
    return build_mace(size, dtype, avg_num_neighbors, table)


@dataclass
class Case:
    """One model on one structure: ``call()`` computes energy, forces (and stress)."""

    model: str
    call: Callable[[], dict]
    params: int
    num_edges: int
    times: list[float] = field(default_factory=list)  # wall clock, s
    cpu_times: list[float] = field(default_factory=list)  # process CPU time (all threads), s


def make_case(model_name: str, atoms: Atoms, dtype: torch.dtype) -> Case:
    periodic = bool(np.all(atoms.pbc))
    batch = atoms_to_batch([atoms], R_MAX, dtype=dtype)  # neighbour list: outside the timing
    avg = batch.edge_index.shape[1] / len(atoms)
    if not model_name.startswith("mace-"):
        potential = build(model_name, dtype, avg)

        def call() -> dict:
            return potential(batch, forces=True, stress=periodic)

        return Case(model_name, call, count_params(potential), batch.edge_index.shape[1])

    from mace import data as mace_data
    from mace.tools import torch_geometric as mace_geometric
    from mace.tools.utils import AtomicNumberTable

    model = build(model_name, dtype, avg)
    with default_dtype(dtype):  # as mace.calculators.MACECalculator._atoms_to_batch
        config = mace_data.config_from_atoms(atoms, key_specification=mace_data.KeySpecification())
        graph = mace_data.AtomicData.from_config(
            config, z_table=AtomicNumberTable(TABLE), cutoff=R_MAX, heads=["Default"]
        )
    base = mace_geometric.Batch.from_data_list([graph]).to_dict()

    def call() -> dict:
        # mace's prepare_graph replaces data["positions"] / data["shifts"] in the dict it gets
        # when computing stress, so every call gets a shallow copy (the calculator clones the batch)
        return model(dict(base), compute_force=True, compute_stress=periodic, training=False)

    return Case(model_name, call, count_params(model), base["edge_index"].shape[1])


# ---------------------------------------------------------------------------------------------
# timing


def time_cases(cases: list[Case], warmup: int, repeats: int) -> None:
    """Warm up every case, then ``repeats`` rounds with one timed call per case, order rotating."""
    for case in cases:
        for _ in range(warmup):
            case.call()
    for r in range(repeats):
        order = cases[r % len(cases) :] + cases[: r % len(cases)]
        for case in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            out = case.call()
            case.times.append(time.perf_counter() - start)
            case.cpu_times.append(time.process_time() - cpu_start)
            del out


# ---------------------------------------------------------------------------------------------
# memory (fresh subprocess per model / system / dtype)


def _proc_status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+) kB", text).group(1)) for k in ("VmRSS", "VmHWM")}


def memory_worker(model: str, system: str, dtype: str, threads: int, calls: int) -> None:
    """Runs in a fresh process: prints a JSON line with the peak memory of ``calls`` calls."""
    torch.set_num_threads(threads)
    case = make_case(model, make_system(system), DTYPES[dtype])
    before = _proc_status()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    for _ in range(calls):
        out = case.call()
        del out
    peak = _proc_status()["VmHWM"]
    print(
        json.dumps(
            {
                "rss_before_mb": before / 1024,
                "peak_rss_mb": peak / 1024,
                "call_peak_mb": (peak - before) / 1024,
            }
        )
    )


def measure_memory(model: str, system: str, dtype: str, threads: int) -> dict | None:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_memory-worker",
        model,
        system,
        dtype,
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  memory worker failed for {model}/{system}/{dtype}: {proc.stderr[-500:]}")
        return None
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# profile


def run_profile(threads: int, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    case = make_case("facet", make_system("cu500"), torch.float32)
    for _ in range(3):
        case.call()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(3):
            case.call()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    print(
        f"torch.profiler: Facet on cu500 float32, {threads} threads, 3 calls "
        f"(energy + forces + stress), top {rows} ops by self CPU time"
    )
    print(table)
    return table


# ---------------------------------------------------------------------------------------------
# main


def fmt_ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:8.1f}" if ms >= 10 else f"{ms:8.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per model (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per model first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=SYSTEMS)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 repeats, 1 warm-up, no memory subprocesses",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only profile Facet on cu500 float32 (top 15 ops by self CPU time)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--_memory-worker", nargs=3, metavar=("MODEL", "SYSTEM", "DTYPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args._memory_worker:
        memory_worker(*args._memory_worker, threads=args.threads, calls=2)
        return 0
    if args.profile:
        table = run_profile(args.threads)
        if args.json:
            args.json.write_text(json.dumps({"profile": table}, indent=1))
        return 0
    if args.quick:
        args.repeats, args.warmup, args.no_memory = 2, 1, True

    torch.set_num_threads(args.threads)
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    print(
        f"bench_speed: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, {args.warmup} warm-up + {args.repeats} timed calls per model, "
        f"interleaved in one process"
    )
    print(
        "Timed: energy + forces (+ stress when periodic) per call; neighbour list EXCLUDED for "
        "every model (batch built once outside the loop); parameters frozen."
    )
    print(f"Element table for all models: {[chemical_symbols[z] for z in TABLE]}")
    print(f"load average at start (1, 5, 15 min): {os.getloadavg()} on {os.cpu_count()} cpus")

    results = []
    for system in args.systems:
        atoms = make_system(system)
        periodic = bool(np.all(atoms.pbc))
        for dtype in dtypes:
            cases = [make_case(m, atoms, DTYPES[dtype]) for m in args.models]
            edges = {c.model: c.num_edges for c in cases}
            if len(set(edges.values())) != 1:
                print(f"  warning: edge counts differ between models: {edges}")
            time_cases(cases, args.warmup, args.repeats)
            for case in cases:
                memory = None
                if not args.no_memory:
                    memory = measure_memory(case.model, system, dtype, args.threads)
                results.append(
                    {
                        "system": system,
                        "description": describe(system),
                        "atoms": len(atoms),
                        "edges": case.num_edges,
                        "periodic": periodic,
                        "dtype": dtype,
                        "model": case.model,
                        "params": case.params,
                        "median_ms": 1e3 * statistics.median(case.times),
                        "min_ms": 1e3 * min(case.times),
                        "times_ms": [1e3 * t for t in case.times],
                        "cpu_median_ms": 1e3 * statistics.median(case.cpu_times),
                        "cpu_times_ms": [1e3 * t for t in case.cpu_times],
                        "memory": memory,
                    }
                )
            print(
                f"  done {system} {dtype}: "
                + ", ".join(f"{c.model} {1e3 * statistics.median(c.times):.1f} ms" for c in cases),
                flush=True,
            )

    # ---- table
    def get(system, dtype, model):
        for r in results:
            if (r["system"], r["dtype"], r["model"]) == (system, dtype, model):
                return r
        return None

    pairs = [p for p in PAIRS if p[0] in args.models and p[1] in args.models]
    kinds = {"": "median_ms", "_min": "min_ms", "_cpu": "cpu_median_ms"}
    header = (
        f"{'system':<7} {'atoms':>5} {'edges':>6} {'dtype':<8}"
        + "".join(f" {m + ' ms':>17}" for m in args.models)
        + "".join(
            f"  {f'{slow}/{fast}: med  min  cpu':>{len(slow) + len(fast) + 16}}"
            for slow, fast, _ in pairs
        )
        + "".join(f" {m + ' MB':>15}" for m in args.models)
    )
    print()
    print(
        "ms/call = wall-clock median (min) of the timed calls. Ratios = slower model's time / "
        "faster model's time (> 1: the second is faster) from the wall medians (med), the wall "
        "minima (min) and the process-CPU-time medians (cpu). MB = extra peak RSS of the calls "
        "over the loaded model + batch (fresh subprocess each, VmHWM - VmRSS)."
    )
    print(header)
    print("-" * len(header))
    ratios = []
    for system in args.systems:
        for dtype in dtypes:
            rows = {m: get(system, dtype, m) for m in args.models}
            first = next(iter(rows.values()))
            line = f"{system:<7} {first['atoms']:>5} {first['edges']:>6} {dtype:<8}"
            for m in args.models:
                line += f" {rows[m]['median_ms']:8.1f} ({rows[m]['min_ms']:6.1f})"
            ratio = {}
            for slow, fast, _ in pairs:
                values = []
                for suffix, key in kinds.items():
                    ratio[f"{slow}/{fast}{suffix}"] = rows[slow][key] / rows[fast][key]
                    values.append(ratio[f"{slow}/{fast}{suffix}"])
                width = len(slow) + len(fast) + 16
                line += "  " + " ".join(f"{v:4.2f}" for v in values).rjust(width)
            for m in args.models:
                mem = rows[m]["memory"]
                line += f" {mem['call_peak_mb'] if mem else float('nan'):15.1f}"
            print(line)
            ratios.append({"system": system, "dtype": dtype, **ratio})

    # ---- parameter counts
    print()
    params = {m: get(args.systems[0], dtypes[0], m)["params"] for m in args.models}
    print("parameters (6-element table): " + ", ".join(f"{m} {p:,}" for m, p in params.items()))
    mp_params = {m: count_params(build(m, torch.float32, 1.0, MP_TABLE)) for m in args.models}
    print(
        "parameters (MACE-MP-0's 89-element table, for reference; MACE-MP-0 medium has 4.69M): "
        + ", ".join(f"{m} {p:,}" for m, p in mp_params.items())
    )
    if not args.no_memory:
        print(
            "absolute peak RSS of each subprocess (MB, includes python + torch + mace imports): "
            + "; ".join(
                f"{r['model']}/{r['system']}/{r['dtype']} {r['memory']['peak_rss_mb']:.0f}"
                for r in results
                if r["memory"]
            )
        )

    print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")

    # ---- verdicts
    verdicts = []
    complete = set(args.systems) == set(SYSTEMS)
    for slow, fast, bar in pairs:
        if bar is None:
            continue
        key = f"{slow}/{fast}"
        worst = min(ratios, key=lambda r: r[key])
        ok = all(r[key] >= bar for r in ratios)
        verdicts.append(
            f"{'PASS' if ok else 'FAIL'}: {fast} >= {bar}x faster than {slow} on every system "
            f"and dtype run ({', '.join(dtypes)}; worst {worst[key]:.2f}x on {worst['system']} "
            f"{worst['dtype']}; worst by wall minima {min(r[key + '_min'] for r in ratios):.2f}x, "
            f"by CPU time {min(r[key + '_cpu'] for r in ratios):.2f}x)"
            + ("" if complete else " [subset of systems only]")
        )
    if verdicts:
        print()
        for verdict in verdicts:
            print("VERDICT " + verdict)

    if args.json:
        payload = {
            "config": {
                "repeats": args.repeats,
                "warmup": args.warmup,
                "threads": args.threads,
                "torch": torch.__version__,
                "r_max": R_MAX,
                "table": [chemical_symbols[z] for z in TABLE],
                "timing": "energy+forces(+stress if periodic), neighbour list excluded, "
                "interleaved in one process, median of repeats",
                "memory": "fresh subprocess per case; VmHWM - VmRSS over 2 calls",
            },
            "results": results,
            "ratios": ratios,
            "params": params,
            "params_mp0_table": mp_params,
            "verdicts": verdicts,
        }
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
