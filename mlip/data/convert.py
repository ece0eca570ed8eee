"""Writing data: frames to another format (``mlip data convert``) and graphs to a graph cache
(``mlip data preprocess``). A killed write leaves no partial target."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import lmdb
import numpy as np
import torch
from ase import Atoms

from mlip.data.lmdb import GRAPH_FORMAT, GRAPH_VERSION, METADATA_KEY, close_environment, pack_graph
from mlip.data.readers import bar, file_graphs, records
from mlip.data.records import BadFrames, LabelKeys, OnError
from mlip.errors import DataError


def convert(
    source: str | Path,
    target: str | Path,
    keys: LabelKeys | None = None,
    on_error: OnError = "raise",
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[int, BadFrames]:
    """Copy the frames of ``source`` (any readable format) to ``target``: ``.xyz``/``.extxyz``,
    ``.db`` (ASE SQLite) or ``.aselmdb``, labels as calculator results, ``info`` (charge, spin, the
    rest) in the extxyz comment line or the row's ``data``. Returns frames written and bad frames."""
    source, target = Path(source), Path(target)
    kind = {".xyz": "extxyz", ".extxyz": "extxyz", ".db": "db", ".aselmdb": "aselmdb"}
    if target.suffix not in kind:
        raise DataError(f"{target}: unknown output format (use .xyz, .extxyz, .db or .aselmdb)")
    if target.exists() and not overwrite:
        raise DataError(f"{target}: exists (remove it, or pass --overwrite)")
    if source.resolve() == target.resolve():
        raise DataError(f"{target}: same file as the input")
    bad, written = BadFrames(on_error), 0
    frames = bad.sift(bar(records(source, keys=keys, required=()), progress, source.name))
    with _replacing(target) as partial:
        for chunk in _chunks(frames):  # a transaction each (ASE-LMDB also closes)
            with _frame_writer(partial, kind[target.suffix]) as write:
                for where, atoms in chunk:
                    try:
                        write(atoms)
                        written += 1
                    except Exception as err:
                        bad.add(DataError(f"{where}: cannot write: {err!r}"))
    return written, bad


def preprocess(
    paths: Sequence[str | Path],
    target: str | Path,
    cutoff: float,
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
    dtype: torch.dtype = torch.float64,
    on_error: OnError = "raise",
    elements: Sequence[int] | None = None,
    progress: bool = True,
) -> tuple[int, BadFrames]:
    """Store the graphs of ``paths`` in the graph cache ``target``
    (:class:`~mlip.data.lmdb.GraphLMDBDataset`: graph ``i`` under ``i.to_bytes(8, "big")``, the
    metadata under ``__metadata__``). Returns graphs written and bad frames."""
    bad, target, count = BadFrames(on_error), Path(target), 0
    graphs = file_graphs(paths, cutoff, keys, required, dtype, None, 0, bad, elements, progress)
    with (
        _replacing(target) as partial,
        lmdb.open(str(partial), subdir=False, map_size=1 << 40, lock=False, meminit=False) as env,
    ):
        for chunk in _chunks(graphs):  # a transaction each
            with env.begin(write=True) as txn:
                for where, graph in chunk:
                    txn.put(count.to_bytes(8, "big"), pack_graph(graph, where), append=True)
                    count += 1
        metadata = {
            "format": GRAPH_FORMAT,
            "version": GRAPH_VERSION,
            "num_graphs": count,
            "cutoff": float(cutoff),
            "dtype": str(dtype).removeprefix("torch."),
            "sources": [str(p) for p in paths],
            "keys": asdict(keys or LabelKeys()),
            "required": list(required),
            "num_bad": bad.count,
        }
        with env.begin(write=True) as txn:
            txn.put(METADATA_KEY, json.dumps(metadata).encode())
    close_environment(target.resolve())  # a reader of a cache this one replaced
    return count, bad


@contextmanager
def _replacing(target: Path) -> Iterator[Path]:
    """``target.partial`` to write, moved to ``target`` where the block ends well, removed (with
    LMDB's lock file) where it fails or is killed."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        yield partial
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        Path(f"{partial}-lock").unlink(missing_ok=True)
    partial.replace(target)


def _chunks(items: Iterable[Any], size: int = 1000) -> Iterator[list[Any]]:
    """``items`` in lists of ``size``, the last shorter (empty where ``items`` is)."""
    items = iter(items)
    while len(chunk := list(itertools.islice(items, size))) == size:
        yield chunk
    yield chunk


@contextmanager
def _frame_writer(path: Path, kind: str) -> Iterator[Callable[[Atoms], Any]]:
    """``write(atoms)``, appending to an extxyz file or (one transaction) an ASE database."""
    if kind == "extxyz":
        with open(path, "a", encoding="utf-8") as handle:
            yield lambda atoms: ase.io.write(handle, atoms, format="extxyz")
        return
    with ase.db.connect(str(path), type=kind, use_lock_file=False) as db:
        yield lambda atoms: db.write(atoms, data=_data(atoms))


def _data(atoms: Atoms) -> dict[str, Any]:
    """A database row's ``data``: ``info`` and the arrays beyond numbers and positions."""
    extra = sorted(set(atoms.arrays) - {"numbers", "positions"})
    return {key: _plain(value) for key, value in atoms.info.items()} | {
        name: atoms.arrays[name] for name in extra
    }


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars made Python numbers (ASE's database encoders need that)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
