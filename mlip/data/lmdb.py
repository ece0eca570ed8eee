"""LMDB files read by key: ASE-LMDB rows by index, and the graph cache (``mlip data preprocess``:
key ``i.to_bytes(8, "big")`` holds graph ``i`` as ``torch.save`` bytes, ``__metadata__`` a JSON
object). Readers hold an index, never a frame, and pickle small (``spawn`` workers, DDP)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch
from ase import Atoms
from ase.db.row import AtomsRow
from ase_db_backends.aselmdb import decode_bytestream
from torch.utils.data import Dataset
from torch_geometric.data import Data

from mlip.errors import DataError

GRAPH_FORMAT = "mlip-graph-lmdb"
GRAPH_VERSION = 1
METADATA_KEY = b"__metadata__"
_COMPACT = {"edge_index": torch.int32, "z": torch.uint8, "shifts": torch.int32}  # stored dtypes

REMAP_BYTES = 16 << 20
"""Bytes mapped in (estimated) after which this process's environments are closed and reopened."""

_MAPPED_PER_READ = 4 * (64 << 10)  # a read faults in ~3 B-tree/overflow pages; Linux maps up
# to 64 KiB of cached neighbours around each fault (measured: ~160 KiB per read of a 4 KiB row)

_ENVIRONMENTS: dict[str, lmdb.Environment] = {}
_ENVIRONMENTS_PID = os.getpid()
_mapped = 0  # estimated bytes mapped in since the environments were last closed


def read_value(path: str | Path, key: bytes) -> bytes | None:
    """The value under ``key`` in the LMDB file ``path`` (None if absent), read-only, through one
    environment per process and (resolved) path; a forked child opens its own. Pages read stay
    resident until unmapped, so all are closed (~0.2 ms to reopen) after :data:`REMAP_BYTES`."""
    global _ENVIRONMENTS_PID, _mapped
    if os.getpid() != _ENVIRONMENTS_PID or _mapped > REMAP_BYTES:
        for env in _ENVIRONMENTS.values():
            env.close()  # in a forked child: unmaps this process's copy only
        _ENVIRONMENTS.clear()
        _ENVIRONMENTS_PID, _mapped = os.getpid(), 0
    name = str(path)
    if (env := _ENVIRONMENTS.get(name)) is None:
        env = _ENVIRONMENTS[name] = lmdb.open(
            name, subdir=False, readonly=True, lock=False, readahead=False, meminit=False
        )
    with env.begin() as txn:
        value = txn.get(key)
    _mapped += _MAPPED_PER_READ + (len(value) if value is not None else 0)
    return value


def close_environment(path: str | Path) -> None:
    """Close this process's environment of ``path``, if open (the next read reopens it)."""
    env = _ENVIRONMENTS.pop(str(path), None)
    if env is not None and os.getpid() == _ENVIRONMENTS_PID:
        env.close()


class LmdbReader:
    """Reads the LMDB files ``_resolved``; :meth:`close` (also on leaving ``with``) closes this
    process's connections to them (the next read reopens them)."""

    _resolved: list[Path]

    def close(self) -> None:
        for file in self._resolved:
            close_environment(file)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def aselmdb_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """``*.aselmdb`` files of ``paths`` in order; a directory stands for its files, sorted."""
    files: list[Path] = []
    for path in map(Path, [paths] if isinstance(paths, str | Path) else paths):
        if path.is_dir():
            found = sorted(path.glob("*.aselmdb"))
            if not found:
                raise DataError(f"{path}: directory holds no *.aselmdb files")
            files += found
        elif not path.exists():
            raise DataError(f"{path}: no such file or directory")
        else:
            files.append(path)
    if not files:
        raise DataError("no ASE-LMDB files given")
    return files


class AseLmdbRows(LmdbReader):
    """The rows of ASE-LMDB files (:func:`aselmdb_files`) numbered across them, held as a row-id
    range per file (an array where rows were deleted); :meth:`atoms` reads one, unlabelled."""

    def __init__(self, paths: str | Path | Sequence[str | Path]) -> None:
        self.files = aselmdb_files(paths)
        self._resolved = [file.resolve() for file in self.files]
        self._ids = [_row_ids(file) for file in self._resolved]
        self._starts = np.cumsum([0] + [len(ids) for ids in self._ids])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(file number, row position in that file)`` of row ``index``."""
        index = range(len(self))[index]  # negative: from the end; IndexError past it
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return k, index - int(self._starts[k])

    def describe(self, index: int) -> str:
        """Where row ``index`` comes from: ``"file, frame k"``."""
        k, position = self.locate(index)
        return f"{self.files[k]}, frame {position}"

    def atoms(self, index: int) -> Atoms:
        """Row ``index`` as ``ase.Atoms`` (:func:`row_atoms`)."""
        k, position = self.locate(index)
        row_id = int(self._ids[k][position])
        try:
            raw = read_value(self._resolved[k], str(row_id).encode("ascii"))
            if raw is not None:
                dct = decode_bytestream(raw, decompress=True, json_decode=True)
                return row_atoms(AtomsRow({**dct, "id": row_id}))  # labels made arrays there
        except Exception as err:  # lmdb, zlib, JSON and ASE errors of a corrupt row
            raise DataError(f"{self.describe(index)}: cannot read row {row_id}: {err!r}") from err
        raise DataError(f"{self.describe(index)}: row id {row_id} missing")


def row_atoms(row: AtomsRow) -> Atoms:
    """An ASE database row as ``ase.Atoms``, its ``key_value_pairs`` and ``data`` in ``info``."""
    atoms = row.toatoms()
    atoms.info |= {**row.key_value_pairs, **row.data}
    return atoms


def _row_ids(file: Path) -> range | np.ndarray:
    """Row ids of an ASE-LMDB file in order: ``1 .. nextid-1`` minus the deleted ids."""
    try:
        nextid = read_value(file, b"nextid")
        deleted = read_value(file, b"deleted_ids")
        nextid = decode_bytestream(nextid, json_decode=True) if nextid else 1
        deleted = set(decode_bytestream(deleted, json_decode=True)) if deleted else set()
    except Exception as err:
        raise DataError(f"{file}: cannot open as an ASE-LMDB database: {err!r}") from err
    finally:
        close_environment(file)  # the parent holds nothing open when DataLoader workers fork
    if not deleted:
        return range(1, nextid)
    return np.array([i for i in range(1, nextid) if i not in deleted], dtype=np.int64)


class GraphLMDBDataset(LmdbReader, Dataset):
    """A graph cache read lazily: ``dataset[i]`` as :func:`~mlip.data.graph.atoms_to_graph` gave
    it (``labels=True``), floating fields cast to ``dtype`` (default: as stored)."""

    def __init__(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        self._resolved = [self.path.resolve()]
        try:
            raw = read_value(self._resolved[0], METADATA_KEY)
            self.metadata = json.loads(raw) if raw is not None else {}
        except Exception as err:
            raise DataError(f"{self.path}: cannot open as a graph LMDB: {err!r}") from err
        finally:
            self.close()
        if self.metadata.get("format") != GRAPH_FORMAT:
            raise DataError(f"{self.path}: not an mlip graph cache (no {GRAPH_FORMAT} metadata)")
        if (version := self.metadata.get("version")) != GRAPH_VERSION:
            raise DataError(f"{self.path}: graph cache version {version}, expected {GRAPH_VERSION}")
        self.cutoff, self.dtype = float(self.metadata["cutoff"]), dtype

    def __len__(self) -> int:
        return int(self.metadata["num_graphs"])

    def __getitem__(self, index: int) -> Data:
        return unpack_graph(self._record(index), self.dtype)

    def describe(self, index: int) -> str:
        """``"cache, graph i (source file, frame k)"``."""
        return f"{self.path}, graph {index} ({self._record(index)['source']})"

    def _record(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]
        try:
            raw = read_value(self._resolved[0], index.to_bytes(8, "big"))
            if raw is None:
                raise KeyError("missing")
            return torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as err:
            raise DataError(f"{self.path}, graph {index}: cannot read: {err!r}") from err


def pack_graph(graph: Data, source: str) -> bytes:
    """``torch.save`` bytes of ``graph``'s tensors as one flat tensor per stored dtype
    (``torch.load`` pays per tensor: ``edge_index`` as int32, ``z`` as uint8, ``shifts`` as int8
    where they fit) and the ``source`` of its frame."""
    layout, groups = [], {}
    for name, value in graph.items():
        if not torch.is_tensor(value):
            continue
        small = name == "shifts" and (not value.numel() or int(value.abs().max()) < 128)
        stored = value.to(torch.int8 if small else _COMPACT[name]) if name in _COMPACT else value
        groups.setdefault(str(stored.dtype), []).append(stored.reshape(-1))
        layout.append((name, str(value.dtype), tuple(value.shape), str(stored.dtype)))
    tensors = {dtype: torch.cat(parts) for dtype, parts in groups.items()}
    buffer = io.BytesIO()
    torch.save(
        dict(num_nodes=int(graph.num_nodes), layout=layout, tensors=tensors, source=source), buffer
    )
    return buffer.getvalue()


def unpack_graph(record: dict[str, Any], dtype: torch.dtype | None = None) -> Data:
    """The ``Data`` that :func:`pack_graph` stored; ``dtype`` casts its floating fields."""
    offsets = dict.fromkeys(record["tensors"], 0)
    fields = {}
    for name, original, shape, stored in record["layout"]:
        size, start = int(np.prod(shape)), offsets[stored]
        offsets[stored] = start + size
        target = getattr(torch, original.removeprefix("torch."))
        if dtype is not None and target.is_floating_point:
            target = dtype
        fields[name] = record["tensors"][stored][start : start + size].reshape(shape).to(target)
    return Data(**fields, num_nodes=record["num_nodes"])
