"""Writing data: frames to another format (``mlip data convert``) and graphs to a graph cache
(``mlip data preprocess``). A killed write leaves no partial target."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
import torch
from ase import Atoms

from mlip.data.lmdb import GraphLMDBWriter
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
    if target.suffix not in (".xyz", ".extxyz", ".db", ".aselmdb"):
        raise DataError(f"{target}: unknown output format (use .xyz, .extxyz, .db or .aselmdb)")
    if target.exists() and not overwrite:
        raise DataError(f"{target}: exists (remove it, or pass --overwrite)")
    if source.resolve() == target.resolve():
        raise DataError(f"{target}: same file as the input")
    bad = BadFrames(on_error)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with _FrameWriter(partial, target.suffix) as writer:
            frames = bar(records(source, keys=keys, required=()), progress, source.name)
            for where, atoms in bad.sift(frames):
                try:
                    writer.write(atoms)
                except Exception as err:
                    bad.add(DataError(f"{where}: cannot write: {err!r}"))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        Path(f"{partial}-lock").unlink(missing_ok=True)  # LMDB's lock file
    partial.replace(target)
    return writer.count, bad


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
    (:class:`~mlip.data.lmdb.GraphLMDBDataset`). Returns graphs written and bad frames."""
    bad = BadFrames(on_error)
    writer = GraphLMDBWriter(target)
    try:
        graphs = file_graphs(paths, cutoff, keys, required, dtype, None, 0, bad, elements, progress)
        for where, graph in graphs:
            writer.append(graph, where)
    except BaseException:
        writer.abort()
        raise
    metadata = {
        "cutoff": float(cutoff),
        "dtype": str(dtype).removeprefix("torch."),
        "sources": [str(p) for p in paths],
        "keys": asdict(keys or LabelKeys()),
        "required": list(required),
        "num_bad": bad.count,
    }
    writer.close(metadata)
    return writer.count, bad


class _FrameWriter:
    """Appends labelled frames to an extxyz file or an ASE database, a transaction per ``chunk``."""

    def __init__(self, path: Path, suffix: str, chunk: int = 1000) -> None:
        self.path, self.chunk, self.count = path, chunk, 0
        self.kind = {".db": "db", ".aselmdb": "aselmdb"}.get(suffix, "extxyz")
        self.handle = open(path, "w", encoding="utf-8") if self.kind == "extxyz" else None
        self.db = None if self.handle else self._connect()

    def _connect(self) -> Any:
        return ase.db.connect(str(self.path), type=self.kind, use_lock_file=False).__enter__()

    def write(self, atoms: Atoms) -> None:
        if self.handle is not None:
            ase.io.write(self.handle, atoms, format="extxyz")
        else:
            data = {key: _plain(value) for key, value in atoms.info.items()}
            extra = set(atoms.arrays) - {"numbers", "positions"}
            data.update({name: atoms.arrays[name] for name in sorted(extra)})
            self.db.write(atoms, data=data)
        self.count += 1
        if self.db is not None and self.count % self.chunk == 0:  # commit (ASE-LMDB also closes)
            self.db.__exit__(None, None, None)
            self.db = self._connect()

    def __enter__(self) -> _FrameWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.close()
        else:
            self.db.__exit__(None, None, None)


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars made Python numbers (ASE's database encoders need that)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
