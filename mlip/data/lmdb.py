"""LMDB files read by key: ASE-LMDB rows (OMol25/OMat24) by index, and the graph cache.

Both hold an index, never the frames: :class:`AseLmdbRows` keeps per file a row-id range and
:class:`GraphLMDBDataset` only a count, so memory stays flat as a dataset grows. LMDB files are opened read-only on first access, once per process
and file (:func:`read_value`): a forked ``DataLoader`` worker or a DDP rank opens its own
connection, several datasets over the same file share one, and the memory-mapped pages an epoch
reads do not pile up in the resident set.

A graph cache (``mlip data preprocess``) is one LMDB file: key ``i.to_bytes(8, "big")`` holds
graph ``i`` as ``torch.save`` bytes of a dict of tensors (read with ``weights_only=True``), key
``__metadata__`` a JSON object with ``format``, ``version``, ``num_graphs``, ``cutoff`` (Å),
``dtype``, ``sources`` and the number of frames skipped as bad.
"""

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
from ase.calculators.calculator import all_properties
from ase.db.row import AtomsRow
from ase_db_backends.aselmdb import decode_bytestream
from torch.utils.data import Dataset
from torch_geometric.data import Data

from mlip.errors import DataError

GRAPH_FORMAT = "mlip-graph-lmdb"
GRAPH_VERSION = 1
METADATA_KEY = b"__metadata__"

REMAP_BYTES = 16 << 20
"""Estimated bytes mapped in through this process's environments after which they are closed
(to be reopened on the next read)."""

_MAPPED_PER_READ = 4 * (64 << 10)  # a read faults in ~3 B-tree/overflow pages; Linux maps up
# to 64 KiB of cached neighbours around each fault (measured: ~160 KiB per read of a 4 KiB row)

_ENVIRONMENTS: dict[str, lmdb.Environment] = {}
_ENVIRONMENTS_PID = os.getpid()
_mapped = 0  # estimated bytes mapped in since the environments were last closed


def read_value(path: str | Path, key: bytes) -> bytes | None:
    """The value under ``key`` in the LMDB file ``path`` (None if absent), read read-only.

    Each process keeps one environment per file, opened on first use: LMDB refuses to open a
    file twice in a process and an environment must not be used across a fork, so a forked child
    (a ``DataLoader`` worker) drops those it inherited (closing them there only unmaps its copy)
    and opens its own. LMDB reads through a memory map, and every page read stays in the
    process's resident set (as file-backed RSS) until unmapped: an epoch would grow the RSS by
    the size of the files, so all environments are closed (and reopened as needed, about 0.2 ms
    each) once about :data:`REMAP_BYTES` have been mapped through them. Files are told apart by
    the path as given: pass resolved paths (the datasets do).
    """
    global _ENVIRONMENTS_PID, _mapped
    if os.getpid() != _ENVIRONMENTS_PID:
        for inherited in _ENVIRONMENTS.values():
            inherited.close()
        _ENVIRONMENTS.clear()
        _ENVIRONMENTS_PID, _mapped = os.getpid(), 0
    name = str(path)
    env = _ENVIRONMENTS.get(name)
    if env is None:
        env = lmdb.open(
            name, subdir=False, readonly=True, lock=False, readahead=False, meminit=False
        )
        _ENVIRONMENTS[name] = env
    with env.begin() as txn:
        value = txn.get(key)
    _mapped += _MAPPED_PER_READ + (len(value) if value is not None else 0)
    if _mapped > REMAP_BYTES:
        for opened in list(_ENVIRONMENTS):
            close_environment(opened)
        _mapped = 0
    return value


def close_environment(path: str | Path) -> None:
    """Close this process's environment of ``path``, if open (the next read reopens it)."""
    env = _ENVIRONMENTS.pop(str(path), None)
    if env is not None and os.getpid() == _ENVIRONMENTS_PID:
        env.close()


def aselmdb_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """``*.aselmdb`` files of ``paths`` in order; a directory stands for its files, sorted."""
    if isinstance(paths, str | Path):
        paths = [paths]
    files: list[Path] = []
    for path in map(Path, paths):
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


class AseLmdbRows:
    """The rows of ASE-LMDB files (``.aselmdb``, fairchem's format), numbered across the files.

    ``paths`` are files and/or directories of them (each directory's files sorted by name). Holds
    per file a row-id range (an id array only where rows were deleted), never a row, and pickles
    small (no open files), for ``spawn`` workers and DDP. :meth:`atoms` reads one row as raw
    ``ase.Atoms``; :class:`mlip.data.readers.IndexedFrames` labels it.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path]) -> None:
        self.files = aselmdb_files(paths)
        self._resolved = [file.resolve() for file in self.files]
        self._ids = [_row_ids(file) for file in self._resolved]
        self._starts = np.cumsum([0] + [len(ids) for ids in self._ids])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(file number, row position in that file)`` of row ``index``."""
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return k, index - int(self._starts[k])

    def describe(self, index: int) -> str:
        """Where row ``index`` comes from: ``"file, frame k"``."""
        k, position = self.locate(index)
        return f"{self.files[k]}, frame {position}"

    def atoms(self, index: int) -> Atoms:
        """Row ``index`` as ``ase.Atoms`` (its ``key_value_pairs`` and ``data`` in ``info``)."""
        k, position = self.locate(index)
        row_id = int(self._ids[k][position])
        try:
            raw = read_value(self._resolved[k], str(row_id).encode("ascii"))
            if raw is None:
                raise DataError(f"{self.describe(index)}: row id {row_id} missing")
            return _row_to_atoms(raw, row_id)
        except DataError:
            raise
        except Exception as err:  # lmdb, zlib, JSON and ASE errors of a corrupt row
            raise DataError(f"{self.describe(index)}: cannot read row {row_id}: {err!r}") from err

    def close(self) -> None:
        """Close this process's connections to the files (reopened on the next access)."""
        for file in self._resolved:
            close_environment(file)


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


def _row_to_atoms(raw: bytes, row_id: int) -> Atoms:
    """An ASE-LMDB row (zlib-compressed ASE JSON) as ``ase.Atoms``, as ``LMDBDatabase`` reads it;
    ``key_value_pairs`` and ``data`` go into ``atoms.info``."""
    dct = decode_bytestream(raw, decompress=True, json_decode=True)
    for key in all_properties:
        if isinstance(dct.get(key), list):
            dct[key] = np.array(dct[key])
    dct["id"] = row_id
    row = AtomsRow(dct)
    atoms = row.toatoms()
    atoms.info.update(row.key_value_pairs)
    atoms.info.update(row.data)
    return atoms


class GraphLMDBDataset(Dataset):
    """Graphs cached by ``mlip data preprocess`` (:class:`GraphLMDBWriter`), read lazily.

    ``dataset[i]`` is a ``torch_geometric`` ``Data`` with the fields and dtypes
    :func:`~mlip.data.graph.atoms_to_graph` gives (``labels=True``); ``dtype`` casts the floating
    fields (default: as stored). ``cutoff`` (Å) and ``metadata`` describe the cache.
    """

    def __init__(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        self._resolved = self.path.resolve()
        try:
            raw = read_value(self._resolved, METADATA_KEY)
            self.metadata = json.loads(raw) if raw is not None else {}
        except Exception as err:
            raise DataError(f"{self.path}: cannot open as a graph LMDB: {err!r}") from err
        finally:
            close_environment(self._resolved)
        if self.metadata.get("format") != GRAPH_FORMAT:
            raise DataError(f"{self.path}: not an mlip graph cache (no {GRAPH_FORMAT} metadata)")
        if self.metadata.get("version") != GRAPH_VERSION:
            version = self.metadata.get("version")
            raise DataError(f"{self.path}: graph cache version {version}, expected {GRAPH_VERSION}")
        self.cutoff = float(self.metadata["cutoff"])
        self.dtype = dtype
        self._length = int(self.metadata["num_graphs"])

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Data:
        return unpack_graph(self._record(index), self.dtype)

    def describe(self, index: int) -> str:
        """``"cache, graph i (source file, frame k)"``."""
        return f"{self.path}, graph {index} ({self._record(index)['source']})"

    def _record(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"graph {index} out of range for {len(self)} graphs")
        try:
            raw = read_value(self._resolved, index.to_bytes(8, "big"))
            if raw is None:
                raise KeyError("missing")
            return torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as err:
            raise DataError(f"{self.path}, graph {index}: cannot read: {err!r}") from err

    def close(self) -> None:
        """Close this process's connection to the file (reopened on the next access)."""
        close_environment(self._resolved)

    def __enter__(self) -> GraphLMDBDataset:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class GraphLMDBWriter:
    """Writes graphs to a new graph cache, committing every ``commit_every`` graphs.

    The file appears under ``path`` only when :meth:`close` succeeds (it is written next to it as
    ``path + ".partial"`` and renamed), so an interrupted run leaves no half-written cache.
    """

    def __init__(self, path: str | Path, commit_every: int = 1000, map_size: int = 1 << 40):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.partial.unlink(missing_ok=True)
        self.env = lmdb.open(
            str(self.partial), subdir=False, map_size=map_size, lock=False, meminit=False
        )
        self.commit_every = commit_every
        self.count = 0
        self._txn = self.env.begin(write=True)

    def append(self, graph: Data, source: str) -> None:
        """Store ``graph`` (from :func:`atoms_to_graph`) as the next index; ``source`` says where
        its frame came from ("file, frame k")."""
        buffer = io.BytesIO()
        torch.save(pack_graph(graph, source), buffer)
        self._txn.put(self.count.to_bytes(8, "big"), buffer.getvalue(), append=True)
        self.count += 1
        if self.count % self.commit_every == 0:
            self._txn.commit()
            self._txn = self.env.begin(write=True)

    def close(self, metadata: dict[str, Any]) -> Path:
        """Write ``metadata`` (JSON-able; ``format``, ``version``, ``num_graphs`` are added),
        commit and move the file into place."""
        record = {"format": GRAPH_FORMAT, "version": GRAPH_VERSION, "num_graphs": self.count}
        self._txn.put(METADATA_KEY, json.dumps({**metadata, **record}).encode())
        self._txn.commit()
        self.env.close()
        close_environment(self.path.resolve())  # a reader of a cache this one replaces
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        """Drop everything written (after an error)."""
        self._txn.abort()
        self.env.close()
        self.partial.unlink(missing_ok=True)


def pack_graph(graph: Data, source: str = "") -> dict[str, Any]:
    """``graph``'s tensors as a few flat tensors, one per stored dtype (``torch.load`` with
    ``weights_only`` pays per tensor); ``edge_index`` is stored as int32, ``shifts`` in the
    smallest integer type that holds them, ``z`` as uint8."""
    layout, groups = [], {}
    for name, value in graph.items():
        if not torch.is_tensor(value):
            continue
        stored = _compact(name, value)
        groups.setdefault(str(stored.dtype), []).append(stored.reshape(-1))
        layout.append((name, str(value.dtype), tuple(value.shape), str(stored.dtype)))
    tensors = {dtype: torch.cat(parts) for dtype, parts in groups.items()}
    return {
        "num_nodes": int(graph.num_nodes),
        "layout": layout,
        "tensors": tensors,
        "source": source,
    }


def unpack_graph(record: dict[str, Any], dtype: torch.dtype | None = None) -> Data:
    """The ``Data`` that :func:`pack_graph` stored; ``dtype`` casts its floating fields."""
    offsets = dict.fromkeys(record["tensors"], 0)
    fields = {}
    for name, original, shape, stored in record["layout"]:
        size = int(np.prod(shape))
        start = offsets[stored]
        flat = record["tensors"][stored][start : start + size]
        offsets[stored] = start + size
        target = _dtype(original)
        if dtype is not None and target.is_floating_point:
            target = dtype
        fields[name] = flat.reshape(shape).to(target)
    return Data(**fields, num_nodes=record["num_nodes"])


def _compact(name: str, value: torch.Tensor) -> torch.Tensor:
    if name == "edge_index":
        return value.to(torch.int32)
    if name == "z":
        return value.to(torch.uint8)
    if name == "shifts":
        largest = int(value.abs().max()) if value.numel() else 0
        return value.to(torch.int8 if largest < 128 else torch.int32)
    return value


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))
