"""Where graphs come from: data files in one pass (:func:`file_graphs`) and indexed datasets,
whole or sampled (:func:`dataset_graphs`). Passes stream, show a progress bar and hand a bad
frame (:func:`check_graph`) to :class:`~mlip.data.records.BadFrames`; nothing else is dropped."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols
from torch.utils.data import Dataset
from torch_geometric.data import Data
from tqdm import tqdm

from mlip import keys
from mlip.data.graph import atoms_to_graph, edge_lengths, too_close
from mlip.data.lmdb import GraphLMDBDataset, LmdbReader
from mlip.data.readers import Index, IndexedFrames, records
from mlip.data.records import BadFrames, LabelKeys
from mlip.errors import DataError

MAX_Z = 118
GRAPH_CACHE_SUFFIX = ".lmdb"


class LMDBDataset(LmdbReader, Dataset):
    """Frames of ASE-LMDB files as graphs (``cutoff`` Å, floats in ``dtype``), read lazily from
    :class:`IndexedFrames`; a bad frame raises :class:`DataError` naming file and frame."""

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        cutoff: float,
        keys: LabelKeys | None = None,
        dtype: torch.dtype | None = None,
        required: Sequence[str] = ("energy", "forces"),
    ) -> None:
        self.frames = IndexedFrames(paths, keys, required)
        self._resolved = self.frames.rows._resolved
        self.cutoff = float(cutoff)
        self.dtype = dtype or torch.get_default_dtype()

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Data:
        return frame_graph(self.frames[index], self.describe(index), self.cutoff, self.dtype)

    def describe(self, index: int) -> str:
        return self.frames.describe(index)


def open_indexed(
    paths: Sequence[str | Path],
    cutoff: float,
    keys: LabelKeys | None = None,
    dtype: torch.dtype | None = None,
    required: Sequence[str] = ("energy", "forces"),
) -> LMDBDataset | GraphLMDBDataset:
    """The indexed graphs of ``paths``: ASE-LMDB files and folders, or one graph cache
    (``.lmdb``) built with the same ``cutoff``."""
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.is_dir() and path.suffix not in (".aselmdb", GRAPH_CACHE_SUFFIX):
            raise DataError(
                f"{path}: streamed data (stream: true) is .aselmdb files, folders of them or a "
                "graph cache (.lmdb); convert it with `mlip data convert`, or read it into memory "
                "(stream: false)"
            )
    if not any(p.suffix == GRAPH_CACHE_SUFFIX for p in paths):
        return LMDBDataset(paths, cutoff, keys, dtype, required)
    if len(paths) > 1:
        names = ", ".join(map(str, paths))
        raise DataError(f"{names}: a graph cache ({GRAPH_CACHE_SUFFIX}) comes alone")
    dataset = GraphLMDBDataset(paths[0], dtype)
    if abs(dataset.cutoff - cutoff) > 1e-9:
        raise DataError(
            f"{paths[0]}: graph cache built with cutoff {dataset.cutoff} Å, this run uses "
            f"{cutoff} Å (rebuild it with `mlip data preprocess --cutoff {cutoff}`)"
        )
    return dataset


def file_graphs(
    paths: Sequence[str | Path],
    cutoff: float,
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
    dtype: torch.dtype = torch.float64,
    max_frames: int | None = None,
    seed: int = 0,
    bad: BadFrames | None = None,
    elements: Sequence[int] | None = None,
    progress: bool = True,
    index: Index = ":",
) -> Iterator[tuple[str, Data]]:
    """``(where, graph)`` for the frames ``index`` selects from files of any readable format, or
    (``max_frames`` per path) a seeded sample, by index where files are indexed; a bad frame
    (unreadable, no graph, an element outside ``elements``) is raised or counted in ``bad``."""
    bad = bad if bad is not None else BadFrames()
    allowed = allowed_elements(elements)

    def fit(where: str, graph: Data) -> bool:
        problem = check_graph(graph, allowed)
        if problem:
            bad.add(DataError(f"{where}: {problem}"))
        return not problem

    for path in map(Path, paths):
        cache = path.suffix == GRAPH_CACHE_SUFFIX  # a cache has its own cutoff
        if cache or (max_frames is not None and (path.is_dir() or path.suffix == ".aselmdb")):
            dataset = (
                GraphLMDBDataset(path, dtype)
                if cache
                else LMDBDataset(path, cutoff, keys, dtype, required)
            )
            with dataset:
                graphs = dataset_graphs(dataset, max_frames, seed, bad, progress, path.name)
                yield from ((w, g) for _, w, g in graphs if fit(w, g))
            continue
        frames = bar(records(path, index, keys, required), progress, path.name)
        good = ((where, atoms) for where, atoms in frames if _good(atoms, bad))
        if max_frames is not None:
            good = _reservoir(good, max_frames, seed)
        for where, atoms in good:
            try:
                graph = frame_graph(atoms, where, cutoff, dtype)
            except DataError as err:
                bad.add(err)
                continue
            if fit(where, graph):
                yield where, graph


def dataset_graphs(
    dataset: Dataset,
    max_frames: int | None = None,
    seed: int = 0,
    bad: BadFrames | None = None,
    progress: bool = True,
    desc: str = "frames",
) -> Iterator[tuple[int, str, Data]]:
    """``(index, where, graph)`` for every index of a ``dataset`` of graphs, or a seeded sample of
    ``max_frames`` (in order); a frame that raises or is a :class:`DataError` goes to ``bad``."""
    bad = bad if bad is not None else BadFrames()
    size = len(dataset)
    indices: Iterable[int] = range(size)
    if max_frames is not None and max_frames < size:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(size, size=max_frames, replace=False)).tolist()
    describe = getattr(dataset, "describe", lambda i: f"frame {i}")
    for index in bar(indices, progress, desc, total=min(size, max_frames or size)):
        try:
            graph = dataset[index]
        except DataError as err:
            graph = err
        if isinstance(graph, DataError):
            bad.add(graph, index)
            continue
        yield index, describe(index), graph


def frame_graph(atoms: Any, where: str, cutoff: float, dtype: torch.dtype | None) -> Data:
    """The labelled graph of one frame; a structure with no graph raises :class:`DataError`."""
    try:
        return atoms_to_graph(atoms, cutoff, dtype=dtype, labels=True)
    except (ValueError, RuntimeError) as err:
        raise DataError(f"{where}: cannot build its graph: {err}") from err


def check_graph(
    graph: Data,
    allowed: np.ndarray,
    required: Sequence[str] = (),
    species: Sequence[int] | None = None,
    min_distance: float = 0.0,
) -> str | None:
    """What makes ``graph`` unfit for training, or None: no atoms, a NaN, atoms closer than
    ``min_distance`` Å, a ``required`` label missing, or an element outside ``allowed``."""
    if graph.num_nodes == 0:
        return "frame has no atoms"
    if not (torch.isfinite(graph.pos).all() and torch.isfinite(graph.cell).all()):
        return "positions or cell contain NaN or inf"
    if min_distance > 0:
        j, i = graph.edge_index.numpy()
        error = too_close(graph.z.numpy(), i, j, edge_lengths(graph), min_distance)
        if error is not None:
            return f"{error} (data.min_distance)"
    for name in keys.LABELS:
        present = bool(graph[keys.HAS[name]])
        if name in required and not present:
            return f"{name} missing"
        if present and not torch.isfinite(graph[name]).all():
            return f"{name} contains NaN or inf"
    numbers = graph.z.numpy()
    known = (numbers >= 0) & (numbers <= MAX_Z)
    known[known] = allowed[numbers[known]]
    if known.all():
        return None
    names = ", ".join(sorted({symbol(int(z)) for z in numbers[~known]}))
    if species is None:
        return f"unknown element(s) {names}"
    return f"element(s) {names} not among the species ({', '.join(map(symbol, species))})"


def allowed_elements(elements: Sequence[int] | None) -> np.ndarray:
    """Mask over atomic numbers 0..118: ``elements``, or every real element."""
    allowed = np.zeros(MAX_Z + 1, dtype=bool)
    allowed[sorted(int(z) for z in elements) if elements is not None else slice(1, None)] = True
    allowed[0] = False
    return allowed


def symbol(z: int) -> str:
    """The chemical symbol of atomic number ``z`` (``"Z=200"`` beyond the table)."""
    return chemical_symbols[z] if 0 <= z <= MAX_Z else f"Z={z}"  # 0 is "X"


def _good(atoms: Any, bad: BadFrames) -> bool:
    """Whether a record holds atoms; an error goes to ``bad`` (or is raised)."""
    if isinstance(atoms, DataError):
        bad.add(atoms)
        return False
    return True


def _reservoir(items: Iterable[Any], size: int, seed: int) -> list[Any]:
    """A uniform seeded sample of ``size`` items of a stream (Algorithm R), in stream order."""
    rng = np.random.default_rng(seed)
    sample: list[tuple[int, Any]] = []
    for position, item in enumerate(items):
        if position < size:
            sample.append((position, item))
        else:
            k = int(rng.integers(position + 1))
            if k < size:
                sample[k] = (position, item)
    return [item for _, item in sorted(sample, key=lambda pair: pair[0])]


def bar(iterable: Iterable, progress: bool, desc: str, total: int | None = None) -> Iterable:
    """``iterable`` behind a progress bar on stderr (none if not ``progress`` or not a terminal)."""
    return tqdm(
        iterable, desc=desc, total=total, unit="frame", disable=None if progress else True,
        file=sys.stderr, mininterval=0.5, dynamic_ncols=True, leave=False,
    )  # fmt: skip
