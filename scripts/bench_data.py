"""Data-pipeline benchmark: lazy ASE-LMDB reading at scale (throughput, memory, loader vs step).

1. Build N frames (``--frames``, default 200,000) of ASE-LMDB in shards of 50,000 rows, plus an
   N/10 set for the memory comparison, by replicating the 96 real frames of
   ``data/aselmdb_samples`` (64 3BPA molecules with charge/spin, 32 periodic 63-atom Si cells) with
   0.01 Å Gaussian displacements (labels copied: this measures the pipeline, not physics). Rows
   are written in ``ase-db-backends``' own layout (zlib-compressed ASE JSON under ids 1..n, plus
   ``nextid``) straight through ``lmdb``; only the positions are re-encoded per row.
2. One epoch of the training loader of ``mlip.data.datamodule.DataModule`` with ``stream=True`` (what
   ``mlip train data=lmdb`` reads through: ``LMDBDataset`` -> checked graphs -> batches; batch 32,
   shuffled, cutoff 5 Å, float32, statistics from a seeded sample of ``STATS_SAMPLE`` frames,
   timed apart) per (size, workers in 0 and 2), each in a fresh subprocess: frames/s, time per
   batch, and peak RSS from ``resource.getrusage`` (``maxrss`` of the process and of its reaped
   workers), with the anonymous / file-backed split of the reading process's RSS (LMDB is
   memory-mapped, and pages of the file it has read count as file-backed RSS).
3. A training step on CPU: ``mlip.nn.Facet(channels=[64, 32, 16], r_max=5)`` in
   ``mlip.Potential``, energy + force loss, forward and backward on one batch (median of 3).

``--threads`` (default 1) sets torch's intra-op threads of the main processes (workers use 1):
on a small CPU shared with other jobs, more threads made both the loader and the step slower.

Bars: peak RSS grows < 20 % from N/10 to N frames; loader time per batch < step time.

Usage::

    python scripts/bench_data.py --frames 20000
    python scripts/bench_data.py                # 200,000 frames
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import lmdb
import numpy as np
from ase.io.jsonio import encode
from ase_db_backends.aselmdb import decode_bytestream, encode_object

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "aselmdb_samples"
SHARD = 50_000
CUTOFF = 5.0
SPECIES = [1, 6, 7, 8, 14]
STATS_SAMPLE = 1000  # frames of the DataModule's statistics pass


def build(folder: Path, frames: int, seed: int = 0) -> float:
    """Write ``frames`` rows into ``folder/part-XX.aselmdb``; returns seconds taken."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    templates = _templates()
    rng = np.random.default_rng(seed)
    for shard, first in enumerate(range(0, frames, SHARD)):
        count = min(SHARD, frames - first)
        path = folder / f"part-{shard:02d}.aselmdb"
        env = lmdb.open(str(path), subdir=False, map_size=1 << 40, lock=False, meminit=False)
        txn = env.begin(write=True)
        for row in range(1, count + 1):
            head, tail, positions = templates[(first + row) % len(templates)]
            moved = positions + rng.normal(scale=0.01, size=positions.shape)
            array = json.dumps([list(moved.shape), "float64", moved.ravel().tolist()])
            text = f'{head}{{"__ndarray__": {array}}}{tail}'
            txn.put(str(row).encode("ascii"), zlib.compress(text.encode(), 1))
            if row % 5000 == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(b"nextid", encode_object(count + 1, compress=True, json_encode=True))
        txn.commit()
        env.close()
    return time.perf_counter() - start


def _templates() -> list[tuple[str, str, np.ndarray]]:
    """Each sample row as JSON text split around its positions (``head``, ``tail``)."""
    templates = []
    for file in sorted(SAMPLES.glob("*.aselmdb")):
        env = lmdb.open(str(file), subdir=False, readonly=True, lock=False)
        with env.begin() as txn:
            rows = [raw for key, raw in txn.cursor() if key.isdigit()]
        env.close()
        for raw in rows:
            row = decode_bytestream(raw, json_decode=True)
            positions = row["positions"]
            row["positions"] = "@@POSITIONS@@"
            head, tail = encode(row).split('"@@POSITIONS@@"')
            templates.append((head, tail, positions))
    return templates


def epoch(folder: Path, workers: int, batch_size: int, threads: int) -> dict:
    """One shuffled epoch over ``folder``; runs in its own process (see ``--epoch``)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)  # the shuffle
    from mlip.data.datamodule import DataModule

    start = time.perf_counter()
    datamodule = DataModule(
        folder, CUTOFF, val_fraction=0.0, test_fraction=0.0, stream=True,
        stats_max_frames=STATS_SAMPLE,
        batch_size=batch_size, num_workers=workers, dtype="float32", progress=False,
    )  # fmt: skip
    datamodule.setup("fit")
    setup = time.perf_counter() - start
    loader = datamodule.train_dataloader()
    frames = batches = 0
    start = time.perf_counter()
    for batch in loader:
        frames += batch.num_graphs
        batches += 1
    elapsed = time.perf_counter() - start
    del batch, loader  # shuts the (persistent) workers down, so that getrusage counts them
    memory = _memory()
    return {
        "setup_s": setup,
        "frames": frames,
        "seconds": elapsed,
        "frames_per_s": frames / elapsed,
        "batch_ms": 1e3 * elapsed / batches,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "rss_anon_mb": memory.get("RssAnon", 0.0),
        "rss_file_mb": memory.get("RssFile", 0.0),
    }


def _memory() -> dict[str, float]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            values[key] = float(rest.split()[0]) / 1024
    return values


def step_time(folder: Path, batch_size: int, threads: int, repeats: int = 3) -> float:
    """Median seconds of one training step (forward + backward with forces) on one batch."""
    import torch

    torch.set_num_threads(threads)
    from torch_geometric.data import Batch

    import mlip
    from mlip.data.readers import LMDBDataset
    from mlip.nn import Facet

    torch.manual_seed(0)
    with LMDBDataset(folder, CUTOFF, dtype=torch.float32) as dataset:
        picks = np.random.default_rng(0).choice(len(dataset), batch_size, replace=False)
        batch = Batch.from_data_list([dataset[int(i)] for i in picks])
    model = Facet(num_species=len(SPECIES), r_max=CUTOFF, channels=[64, 32, 16])
    potential = mlip.Potential(model, CUTOFF, SPECIES).train()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = potential(batch, forces=True)
        loss = ((out["energy"] - batch.energy) ** 2).mean()
        loss = loss + ((out["forces"] - batch.forces) ** 2).mean()
        loss.backward()
        potential.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _run_epoch(folder: Path, workers: int, batch_size: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--epoch", str(folder), "--workers", str(workers)]
    command += ["--batch-size", str(batch_size), "--threads", str(threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (main processes)")
    parser.add_argument(
        "--worker-counts", type=int, nargs="+", default=[0, 2], help="DataLoader workers to run"
    )
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the built dataset")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--epoch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epoch is not None:
        print(json.dumps(epoch(args.epoch, args.workers, args.batch_size, args.threads)))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlip_bench_data_"))
    sizes = {"small": max(args.frames // 10, args.batch_size), "large": args.frames}
    results: dict = {"frames": sizes, "batch_size": args.batch_size, "threads": args.threads}
    try:
        for name, frames in sizes.items():
            seconds = build(workdir / name, frames)
            size_mb = sum(f.stat().st_size for f in (workdir / name).iterdir()) / 2**20
            results[f"build_{name}"] = {"seconds": seconds, "file_mb": size_mb}
            print(f"built {frames} frames in {seconds:.1f} s ({size_mb:.0f} MiB on disk)")
        for name in sizes:
            for workers in args.worker_counts:
                run = _run_epoch(workdir / name, workers, args.batch_size, args.threads)
                results[f"epoch_{name}_w{workers}"] = run
                print(
                    f"epoch {name} ({run['frames']} frames), {workers} workers: "
                    f"{run['frames_per_s']:.0f} frames/s, {run['batch_ms']:.1f} ms/batch; "
                    f"peak RSS {run['maxrss_mb']:.0f} MiB (workers {run['workers_maxrss_mb']:.0f}"
                    f" MiB); at the end anon {run['rss_anon_mb']:.0f} MiB, file-backed "
                    f"{run['rss_file_mb']:.0f} MiB (setup: index and {STATS_SAMPLE}-frame "
                    f"statistics sample, {run['setup_s']:.1f} s)"
                )
        step = step_time(workdir / "large", args.batch_size, args.threads)
        results["step_ms"] = 1e3 * step
        print(
            f"training step (Facet [64, 32, 16], forward + backward, batch 32): {1e3 * step:.0f} ms"
        )
        _verdict(results, args.worker_counts)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


def _verdict(results: dict, worker_counts: list[int]) -> None:
    for workers in worker_counts:
        small, large = results[f"epoch_small_w{workers}"], results[f"epoch_large_w{workers}"]
        key = "maxrss_mb" if workers == 0 else "workers_maxrss_mb"  # the process that reads
        growth = large[key] / small[key] - 1
        results[f"rss_growth_w{workers}"] = growth
        ratio = large["batch_ms"] / results["step_ms"]
        results[f"loader_over_step_w{workers}"] = ratio
        print(
            f"{workers} workers: peak RSS of the reading process {small[key]:.0f} -> "
            f"{large[key]:.0f} MiB ({100 * growth:+.1f} %, bar < 20 %: "
            f"{'pass' if growth < 0.2 else 'FAIL'}); loader {large['batch_ms']:.1f} ms/batch vs "
            f"step {results['step_ms']:.0f} ms (ratio {ratio:.3f}, bar < 1: "
            f"{'pass' if ratio < 1 else 'FAIL'})"
        )


if __name__ == "__main__":
    main()
