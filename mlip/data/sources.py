"""Where graphs come from: data files in one pass (:func:`file_graphs`) and indexed datasets of
graphs (:class:`LMDBDataset` over ASE-LMDB files; the graph cache is
:class:`~mlip.data.lmdb.GraphLMDBDataset`), whole or as a seeded sample (:func:`dataset_graphs`).

Every pass streams (memory does not grow with the number of frames) and shows a progress bar. A
bad frame (unreadable, a label missing or not finite, no atoms, atoms too close, an element
outside the allowed ones: :func:`check_graph`) is reported with its file and frame;
``on_error="raise"`` stops there with :class:`~mlip.errors.DataError`, ``"skip"`` leaves it out
and counts it in :class:`~mlip.data.records.BadFrames`. Nothing else is dropped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols
from torch.utils.data import Dataset, Subset
from torch_geometric.data import Data
from tqdm import tqdm

from mlip import keys
from mlip.data.graph import atoms_to_graph, edge_lengths, too_close
from mlip.data.lmdb import GraphLMDBDataset
from mlip.data.readers import Index, IndexedFrames, records
from mlip.data.records import BadFrames, LabelKeys
from mlip.errors import DataError

MAX_Z = 118
GRAPH_CACHE_SUFFIX = ".lmdb"


class LMDBDataset(Dataset):
    """Frames of ASE-LMDB files (and folders of them) as graphs, read lazily by index.

    ``dataset[i]`` is :func:`~mlip.data.graph.atoms_to_graph` (``labels=True``, ``cutoff`` Å,
    floats in ``dtype``) of frame ``i`` of :class:`~mlip.data.readers.IndexedFrames`; a bad frame
    raises :class:`DataError` naming file and frame. Pickles small (no frames, no open files).
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        cutoff: float,
        keys: LabelKeys | None = None,
        dtype: torch.dtype | None = None,
        required: Sequence[str] = ("energy", "forces"),
    ) -> None:
        self.frames = IndexedFrames(paths, keys, required)
        self.cutoff = float(cutoff)
        self.dtype = dtype or torch.get_default_dtype()

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Data:
        return frame_graph(self.frames[index], self.describe(index), self.cutoff, self.dtype)

    def describe(self, index: int) -> str:
        """Where frame ``index`` comes from: ``"file, frame k"``."""
        return self.frames.describe(index)

    def close(self) -> None:
        """Close this process's connections to the files (reopened on the next access)."""
        self.frames.close()

    def __enter__(self) -> LMDBDataset:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_indexed(
    paths: Sequence[str | Path],
    cutoff: float,
    keys: LabelKeys | None = None,
    dtype: torch.dtype | None = None,
    required: Sequence[str] = ("energy", "forces"),
) -> LMDBDataset | GraphLMDBDataset:
    """The indexed dataset of graphs over ``paths``: ASE-LMDB files and folders, or one graph
    cache (``.lmdb``) built with the same ``cutoff``."""
    paths = [Path(p) for p in paths]
    other = [
        p for p in paths if not p.is_dir() and p.suffix not in (".aselmdb", GRAPH_CACHE_SUFFIX)
    ]
    if other:
        raise DataError(
            f"{other[0]}: streamed data (stream: true) is .aselmdb files, folders of them or a "
            "graph cache (.lmdb); convert it with `mlip data convert`, or read it into memory "
            "(stream: false)"
        )
    if not any(p.suffix == GRAPH_CACHE_SUFFIX for p in paths):
        return LMDBDataset(paths, cutoff, keys, dtype, required)
    names = ", ".join(map(str, paths))
    if len(paths) > 1:
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
    """``(where, graph)`` for the frames ``index`` selects from data files of any readable
    format (graph caches: all of them), one pass each.

    With ``max_frames`` (per path), ASE-LMDB files (and directories of them) and graph caches
    (``.lmdb``) are sampled by index; other files are read in order and sampled by a seeded
    reservoir that holds at most ``max_frames`` frames. A bad frame (unreadable, no graph, or
    failing :func:`check_graph` with ``elements``) is raised or counted in ``bad``.
    """
    bad = bad if bad is not None else BadFrames()
    allowed = allowed_elements(elements)
    for path in map(Path, paths):
        indexed = max_frames is not None and (path.is_dir() or path.suffix == ".aselmdb")
        if indexed or path.suffix == GRAPH_CACHE_SUFFIX:  # a cache has its own cutoff
            cache = path.suffix == GRAPH_CACHE_SUFFIX
            dataset = (
                GraphLMDBDataset(path, dtype)
                if cache
                else LMDBDataset(path, cutoff, keys, dtype, required)
            )
            with dataset:
                graphs = dataset_graphs(dataset, max_frames, seed, bad, progress, path.name)
                yield from _checked(((w, g) for _, w, g in graphs), allowed, bad)
            continue
        frames = bar(records(path, index, keys, required), progress, path.name)
        good = ((where, atoms) for where, atoms in frames if _good(atoms, bad))
        if max_frames is not None:
            good = _reservoir(good, max_frames, seed)
        yield from _checked(_graphs(good, cutoff, dtype, bad), allowed, bad)


def dataset_graphs(
    dataset: Dataset,
    max_frames: int | None = None,
    seed: int = 0,
    bad: BadFrames | None = None,
    progress: bool = True,
    desc: str = "frames",
) -> Iterator[tuple[int, str, Data]]:
    """``(index, where, graph)`` for every index of a map-style ``dataset`` of graphs, or for a
    seeded sample of ``max_frames`` of them (in index order); ``where`` is
    ``dataset.describe(i)`` where it exists. Frames raising :class:`DataError` (a checking
    dataset such as the DataModule's splits raises for a bad one) are raised or counted in
    ``bad`` (with their index) per its ``on_error``."""
    bad = bad if bad is not None else BadFrames()
    size = len(dataset)
    indices: Iterable[int] = range(size)
    if max_frames is not None and max_frames < size:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(size, size=max_frames, replace=False)).tolist()
    describe = _describer(dataset)
    for index in bar(indices, progress, desc, total=min(size, max_frames or size)):
        try:
            graph = dataset[index]
        except DataError as err:
            bad.add(err, index)
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
    """What makes ``graph`` unfit for training, or None: no atoms, non-finite positions, cell or
    labels, two atoms closer than ``min_distance`` Å, a ``required`` label (energy, forces,
    stress) missing, or an atomic number outside ``allowed`` (:func:`allowed_elements`;
    ``species`` names the allowed ones in the message)."""
    if graph.num_nodes == 0:
        return "frame has no atoms"
    if not (torch.isfinite(graph.pos).all() and torch.isfinite(graph.cell).all()):
        return "positions or cell contain NaN or inf"
    if min_distance > 0:
        j, i = graph.edge_index.numpy()
        error = too_close(graph.z.numpy(), i, j, edge_lengths(graph), min_distance)
        if error is not None:
            return f"{error} (data.min_distance)"
    for name in ("energy", "forces", "stress"):
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


def _graphs(
    frames: Iterable[tuple[str, Any]], cutoff: float, dtype: torch.dtype, bad: BadFrames
) -> Iterator[tuple[str, Data]]:
    """The graphs of ``(where, atoms)`` frames; a frame with no graph goes to ``bad``."""
    for where, atoms in frames:
        try:
            graph = frame_graph(atoms, where, cutoff, dtype)
        except DataError as err:
            bad.add(err)
            continue
        yield where, graph


def _checked(
    graphs: Iterable[tuple[str, Data]], allowed: np.ndarray, bad: BadFrames
) -> Iterator[tuple[str, Data]]:
    """The graphs that pass :func:`check_graph` (elements in ``allowed``); the others go to
    ``bad``."""
    for where, graph in graphs:
        problem = check_graph(graph, allowed)
        if problem:
            bad.add(DataError(f"{where}: {problem}"))
            continue
        yield where, graph


def _describer(dataset: Dataset) -> Any:
    """``describe(i)`` of ``dataset`` (seen through ``Subset``s), else ``"frame i"``."""
    if hasattr(dataset, "describe"):
        return dataset.describe
    if isinstance(dataset, Subset):
        inner = _describer(dataset.dataset)
        return lambda i: inner(dataset.indices[i])
    return lambda i: f"frame {i}"


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
    """``iterable`` behind a progress bar on stderr (none with ``progress=False``, or when
    stderr is not a terminal: a log file gets no carriage-return lines)."""
    return tqdm(
        iterable, desc=desc, total=total, unit="frame", disable=None if progress else True,
        file=sys.stderr, mininterval=0.5, dynamic_ncols=True, leave=False,
    )  # fmt: skip
