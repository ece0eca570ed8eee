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
from mlip.data.readers import records
from mlip.data.records import BadFrames, LabelKeys, OnError
from mlip.data.sources import bar, file_graphs
from mlip.errors import DataError


def convert(
    source: str | Path,
    target: str | Path,
    keys: LabelKeys | None = None,
    on_error: OnError = "raise",
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[int, BadFrames]:
    """Copy the frames of ``source`` (any readable format) to ``target``, whose suffix picks the
    format: ``.xyz``/``.extxyz``, ``.db`` (ASE SQLite) or ``.aselmdb``. Labels go to the
    calculator results, ``info`` (charge, spin and the rest) to the extxyz comment line or the
    row's ``data``, as the readers expect them. Returns the number of frames written and the bad
    frames."""
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
    written = 0
    try:
        with _FrameWriter(partial, target.suffix) as writer:
            frames = records(source, keys=keys, required=())
            for where, atoms in bar(frames, progress, source.name):
                if isinstance(atoms, DataError):
                    bad.add(atoms)
                    continue
                try:
                    writer.write(atoms)
                except Exception as err:
                    bad.add(DataError(f"{where}: cannot write: {err!r}"))
                    continue
                written += 1
    except BaseException:
        partial.unlink(missing_ok=True)
        Path(f"{partial}-lock").unlink(missing_ok=True)
        raise
    partial.replace(target)
    Path(f"{partial}-lock").unlink(missing_ok=True)  # LMDB's lock file
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
    """Build the graphs of ``paths`` once and store them in the graph cache ``target``
    (read it with :class:`~mlip.data.lmdb.GraphLMDBDataset`). Returns graphs written and bad frames."""
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
    """Appends labelled frames to an extxyz file or an ASE database, committing in chunks."""

    def __init__(self, path: Path, suffix: str, chunk: int = 1000) -> None:
        self.path, self.suffix, self.chunk, self.count = path, suffix, chunk, 0
        self.handle = None
        self.db = None

    def __enter__(self) -> _FrameWriter:
        if self.suffix in (".xyz", ".extxyz"):
            self.handle = open(self.path, "w", encoding="utf-8")
        else:
            kind = "aselmdb" if self.suffix == ".aselmdb" else "db"
            self.db = ase.db.connect(str(self.path), type=kind, use_lock_file=False)
            self._begin()
        return self

    def write(self, atoms: Atoms) -> None:
        if self.handle is not None:
            ase.io.write(self.handle, atoms, format="extxyz")
        else:
            data = {key: _plain(value) for key, value in atoms.info.items()}
            extra = set(atoms.arrays) - {"numbers", "positions"}
            data.update({name: atoms.arrays[name] for name in sorted(extra)})
            self.db.write(atoms, data=data)
            self.count += 1
            if self.count % self.chunk == 0:
                self._commit()
                self._begin()

    def _begin(self) -> None:
        # ASE-LMDB and SQLite databases batch writes inside `with db:`; LMDB's one transaction
        # lives in `db.txn` (as LMDBDatabase.__enter__ sets it), which `with` would also close.
        if self.suffix == ".aselmdb":
            self.db.txn = self.db.env.begin(write=True)
        else:
            self.db.__enter__()

    def _commit(self) -> None:
        if self.suffix == ".aselmdb":
            self.db.txn.commit()
            del self.db.txn
        else:
            self.db.__exit__(None, None, None)

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.close()
            return
        self._commit()
        if self.suffix == ".aselmdb":
            self.db.close()


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars made Python numbers (ASE's database encoders need that)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
