"""Peak memory and time of one energy + forces + stress call against system size, on CPU.

Systems: fcc Cu (a = 3.61 Å, cubic cells, rattled 0.05 Å, seed 2) of 500 (5x5x5 cells), 2,048
(8x8x8), 4,000 (10x10x10) and 8,000 (20x10x10) atoms; r_max 6 Å (78 neighbours per atom), float32
by default. Models, built as in ``bench_speed.py`` (random weights, fixed seeds, parameters frozen,
one element table H C N O Si Cu for all):

  facet             mlip.nn.Facet at the authors' sizes: 128x0e + 64x1o + 32x2e, 3 layers, l_sh 2,
                    spline radial, SiLU grid mixing on its default 10 x 19 grid.
  mlip-mace-small   our MACE-like model with MACE-MP-0 "small" sizes (128x0e, l_sh 3, correlation 3,
                    2 layers, radial MLP [64, 64, 64]); mlip-mace-medium: 128x0e + 128x1o.
  mace-small        mace-torch's ScaleShiftMACE with MACE-MP-0 "small" / "medium" sizes
  mace-medium       (``mace_peer.build_mace_mp``).

Every (model, size, path) runs in a fresh subprocess of this script: it builds the model and the
batch (the neighbour list is not part of the call), resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), makes ``--calls`` calls and reports ``VmHWM - VmRSS``: the growth of
the resident memory during the calls over the loaded model and batch, per atom (MB = 10^6
bytes), and the median wall time of the calls after the first. "path" is ``auto`` (what a user
gets: mlip's edge-wise work runs in memory-bounded chunks when it is large) or ``unchunked``
(``ChannelwiseMessages.edge_chunk_bytes`` raised so that every call takes the one-pass path of
training, the behaviour before the chunking). A case whose memory, extrapolated linearly in the
atoms from the largest size measured so far, would exceed ``--max-gb`` is skipped and shown as such.

The 15 % time bar: one subprocess per model times both paths on 500 atoms, interleaved call by
call (``--overhead-calls`` each, after a warm-up call each), and reports the medians and their ratio.

Usage::

    python scripts/bench_scale.py                          # all models, sizes, the overhead check
    python scripts/bench_scale.py --models facet --sizes 500 2048 --json /tmp/scale.json
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
from pathlib import Path

import torch
from ase import Atoms
from ase.build import bulk
from bench_speed import DTYPES, make_case

from mlip.nn.layers import ChannelwiseMessages

warnings.filterwarnings("ignore", message="The TorchScript type system")

REPO = Path(__file__).resolve().parents[1]
MODELS = ["facet", "mlip-mace-small", "mlip-mace-medium", "mace-small", "mace-medium"]
REPEATS = {500: (5, 5, 5), 2048: (8, 8, 8), 4000: (10, 10, 10), 8000: (20, 10, 10)}
OURS_VS_PEER = {
    "facet": "mace-medium",
    "mlip-mace-small": "mace-small",
    "mlip-mace-medium": "mace-medium",
}
UNCHUNKED_BYTES = 2**62  # larger than any messages: the one-pass path


def copper(num_atoms: int) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(REPEATS[num_atoms])
    atoms.rattle(0.05, seed=2)
    return atoms


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        found = re.search(r"model name\s*:\s*(.+)", info.read_text())
        cpu = found.group(1).strip() if found else cpu
    mem = Path("/proc/meminfo")
    total = ""
    if mem.exists():
        kb = int(re.search(r"MemTotal:\s+(\d+) kB", mem.read_text()).group(1))
        total = f", {kb / 2**20:.0f} GiB RAM"
    return f"{cpu}, {os.cpu_count()} CPUs{total}, torch {torch.__version__}"


def _status_kb(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1))


def set_path(path: str) -> None:
    """``auto``: the class default budget; ``unchunked``: one pass over all edges."""
    if path == "unchunked":
        ChannelwiseMessages.edge_chunk_bytes = UNCHUNKED_BYTES


def worker(model: str, num_atoms: int, path: str, dtype: str, threads: int, calls: int) -> dict:
    """In a fresh process: memory growth and times of ``calls`` calls."""
    torch.set_num_threads(threads)
    set_path(path)
    atoms = copper(num_atoms)
    case = make_case(model, atoms, DTYPES[dtype])
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak-RSS mark := the current RSS
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        out = case.call()
        times.append(time.perf_counter() - start)
        del out
    peak = _status_kb("VmHWM")
    return {
        "model": model,
        "atoms": num_atoms,
        "edges": case.num_edges,
        "path": path,
        "dtype": dtype,
        "call_peak_mb": (peak - before) * 1024 / 1e6,
        "mb_per_atom": (peak - before) * 1024 / 1e6 / num_atoms,
        "peak_rss_mb": peak * 1024 / 1e6,
        "times_s": times,
        "s_per_call": statistics.median(times[1:] if len(times) > 1 else times),
    }


def overhead_worker(model: str, dtype: str, threads: int, calls: int) -> dict:
    """In a fresh process: both paths on 500 atoms, interleaved call by call (wall and process
    CPU time of every call)."""
    torch.set_num_threads(threads)
    case = make_case(model, copper(500), DTYPES[dtype])
    default = ChannelwiseMessages.edge_chunk_bytes
    wall: dict[str, list[float]] = {"auto": [], "unchunked": []}
    cpu: dict[str, list[float]] = {"auto": [], "unchunked": []}
    for r in range(calls + 1):  # the first round is the warm-up
        for path in ("auto", "unchunked") if r % 2 else ("unchunked", "auto"):
            ChannelwiseMessages.edge_chunk_bytes = default if path == "auto" else UNCHUNKED_BYTES
            start, cpu_start = time.perf_counter(), time.process_time()
            out = case.call()
            elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
            del out
            if r:
                wall[path].append(elapsed)
                cpu[path].append(cpu_elapsed)
    result = {"model": model, "wall_s": wall, "cpu_s": cpu}
    for name, times, reduce in (
        ("median", wall, statistics.median),
        ("min", wall, min),
        ("cpu_median", cpu, statistics.median),
    ):
        auto, unchunked = reduce(times["auto"]), reduce(times["unchunked"])
        result[name] = {"auto_s": auto, "unchunked_s": unchunked, "ratio": auto / unchunked}
    return result


def run_worker(args: list[str]) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  worker {' '.join(args)} failed (rc {proc.returncode}): {proc.stderr[-800:]}")
        return None
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument(
        "--sizes", nargs="+", type=int, choices=list(REPEATS), default=list(REPEATS)
    )
    parser.add_argument(
        "--paths", nargs="+", choices=["auto", "unchunked"], default=["auto", "unchunked"]
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (on a shared machine more threads than free cores stall)",
    )
    parser.add_argument("--calls", type=int, default=3, help="calls per case (median of 2nd..)")
    parser.add_argument(
        "--max-gb",
        type=float,
        default=16.0,
        help="skip cases whose extrapolated memory exceeds this",
    )
    parser.add_argument(
        "--overhead-calls",
        type=int,
        default=5,
        help="timed calls per path at 500 atoms (0: no overhead check)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--_worker", nargs=3, metavar=("MODEL", "ATOMS", "PATH"), help=argparse.SUPPRESS
    )
    parser.add_argument("--_overhead-worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._worker:
        model, atoms, path = args._worker
        result = worker(model, int(atoms), path, args.dtype, args.threads, args.calls)
        print(json.dumps(result))
        return 0
    if args._overhead_worker:
        result = overhead_worker(
            args._overhead_worker, args.dtype, args.threads, args.overhead_calls
        )
        print(json.dumps(result))
        return 0

    common = ["--dtype", args.dtype, "--threads", str(args.threads)]
    print(f"bench_scale: {machine()}; {args.threads} threads, {args.dtype}")
    print(f"load average at start (1, 5, 15 min): {os.getloadavg()}")
    results = []
    for model in args.models:
        paths = ["auto"] if model.startswith("mace-") else args.paths
        for path in paths:
            largest = None  # (atoms, MB) of the largest size measured
            for size in sorted(args.sizes):
                projected = largest[1] * size / largest[0] / 1e3 if largest else 0.0
                if projected > args.max_gb:
                    print(
                        f"  {model:<17} {path:<9} {size:>5} atoms: skipped "
                        f"(would need ~{projected:.0f} GB > --max-gb {args.max_gb:g})"
                    )
                    results.append(
                        {
                            "model": model,
                            "atoms": size,
                            "path": path,
                            "skipped_projected_gb": projected,
                        }
                    )
                    continue
                worker_args = ["--_worker", model, str(size), path, "--calls", str(args.calls)]
                result = run_worker(worker_args + common)
                if result is None:
                    continue
                results.append(result)
                if args.json:  # the cases so far, in case a later one does not finish
                    args.json.write_text(json.dumps({"machine": machine(), "results": results}))
                largest = (size, result["call_peak_mb"])
                print(
                    f"  {model:<17} {path:<9} {size:>5} atoms {result['edges']:>7} edges: "
                    f"{result['mb_per_atom']:6.3f} MB/atom ({result['call_peak_mb'] / 1e3:6.2f} GB),"
                    f" {result['s_per_call']:8.2f} s/call",
                    flush=True,
                )

    overhead = []
    if args.overhead_calls:
        ours = [m for m in args.models if not m.startswith("mace-")]
        for model in ours:
            calls = ["--_overhead-worker", model, "--overhead-calls", str(args.overhead_calls)]
            result = run_worker(calls + common)
            if result:
                overhead.append(result)

    # ---- tables
    def get(model, size, path="auto"):
        for r in results:
            if (r["model"], r["atoms"], r["path"]) == (model, size, path) and "mb_per_atom" in r:
                return r
        return None

    print()
    print(
        f"Peak memory growth of one energy + forces + stress call per atom (MB = 1e6 bytes) and "
        f"median s/call; fcc Cu, {args.dtype}, {args.threads} threads; machine: {machine()}"
    )
    sizes = sorted(args.sizes)
    header = f"{'model':<17} {'path':<9}" + "".join(
        f" {f'{s} MB/at':>10} {'s/call':>7}" for s in sizes
    )
    print(header)
    print("-" * len(header))
    for model in args.models:
        for path in ["auto"] if model.startswith("mace-") else args.paths:
            line = f"{model:<17} {path:<9}"
            for size in sizes:
                r = get(model, size, path)
                line += (
                    f" {r['mb_per_atom']:10.3f} {r['s_per_call']:7.2f}"
                    if r
                    else f" {'-':>10} {'-':>7}"
                )
            print(line)
    ratios = []
    for ours, peer in OURS_VS_PEER.items():
        if ours not in args.models or peer not in args.models:
            continue
        for size in sizes:
            a, b = get(ours, size), get(peer, size)
            if a and b:
                ratios.append(
                    {
                        "ours": ours,
                        "peer": peer,
                        "atoms": size,
                        "memory_ratio": a["mb_per_atom"] / b["mb_per_atom"],
                        "time_ratio": a["s_per_call"] / b["s_per_call"],
                    }
                )
    if ratios:
        print()
        print("ours / mace-torch (auto path; < 1: ours needs less):")
        for r in ratios:
            print(
                f"  {r['ours']} / {r['peer']} at {r['atoms']} atoms: memory "
                f"{r['memory_ratio']:.3f}, time {r['time_ratio']:.2f}"
            )
    if overhead:
        print()
        print(
            f"Time per call at 500 atoms, both paths interleaved in one process "
            f"({args.overhead_calls} calls each, medians):"
        )
        for r in overhead:
            print(
                f"  {r['model']:<17} "
                + "; ".join(
                    f"{kind}: auto {r[kind]['auto_s']:6.3f} s, unchunked "
                    f"{r[kind]['unchunked_s']:6.3f} s, ratio {r[kind]['ratio']:.3f}"
                    for kind in ("median", "min", "cpu_median")
                )
            )
    verdicts = []
    if "facet" in args.models:
        checked = [get("facet", s) for s in (2048, 8000) if s in sizes]
        if checked and all(checked):
            worst = max(r["mb_per_atom"] for r in checked)
            verdicts.append(
                f"{'PASS' if worst <= 1.0 else 'FAIL'}: Facet peak memory <= 1 MB per "
                f"atom at {' and '.join(str(r['atoms']) for r in checked)} atoms "
                f"(worst {worst:.3f})"
            )
    for r in overhead:
        ratio = r["median"]["ratio"]
        verdicts.append(
            f"{'PASS' if ratio <= 1.15 else 'FAIL'}: {r['model']} at 500 atoms takes at most "
            f"15 % longer per call ({100 * (ratio - 1):+.1f} % by wall medians, "
            f"{100 * (r['min']['ratio'] - 1):+.1f} % by minima, "
            f"{100 * (r['cpu_median']['ratio'] - 1):+.1f} % by CPU time)"
        )
    if verdicts:
        print()
        for verdict in verdicts:
            print("VERDICT " + verdict)
    print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")
    if args.json:
        payload = {
            "machine": machine(),
            "threads": args.threads,
            "dtype": args.dtype,
            "edge_chunk_bytes": ChannelwiseMessages.edge_chunk_bytes,
            "results": results,
            "ratios": ratios,
            "overhead": overhead,
            "verdicts": verdicts,
        }
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
