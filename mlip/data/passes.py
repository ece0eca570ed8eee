"""Dataset tools: one-pass statistics and checks, format conversion and graph preprocessing.

Every pass streams: memory does not grow with the number of frames (E0 comes from the normal
equations ``XᵀX e = Xᵀy``, |F| percentiles from a fixed log-spaced histogram), and shows a progress
bar. A bad frame (unreadable, a label missing or not finite, an unknown element) is reported with
its file and frame; ``on_error="raise"`` stops there with :class:`DataError`, ``"skip"`` leaves it
out and counts it in :class:`BadFrames`. Nothing else is dropped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from ase.io.formats import string2index
from torch.utils.data import Dataset, Subset
from torch_geometric.data import Data
from tqdm import tqdm

from mlip.data.graph import atoms_to_graph
from mlip.data.lmdb import GraphLMDBDataset, LMDBDataset
from mlip.data.mptrj import is_mptrj, iter_mptrj
from mlip.data.readers import LABELS, Index, _database_frames, _file_frames, _labelled, check_file
from mlip.data.records import BadFrames, LabelKeys, OnError
from mlip.data.stats import MAX_Z, DatasetStats, StreamingStats
from mlip.errors import DataError, UnreadableRest


def dataset_graphs(
    dataset: Dataset,
    max_frames: int | None = None,
    seed: int = 0,
    on_error: OnError = "raise",
    bad: BadFrames | None = None,
    elements: Sequence[int] | None = None,
    progress: bool = True,
    desc: str = "frames",
) -> Iterator[tuple[str, Data]]:
    """``(where, graph)`` for every index of a map-style ``dataset`` of graphs, or for a seeded
    sample of ``max_frames`` of them (in index order); ``where`` is ``dataset.describe(i)`` where
    it exists. Frames raising :class:`DataError` or holding an element outside ``elements`` (any
    atomic number outside 1..118 always) are bad: raised or counted in ``bad`` per ``on_error``."""
    bad = bad if bad is not None else BadFrames()
    size = len(dataset)
    indices: Iterable[int] = range(size)
    if max_frames is not None and max_frames < size:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(size, size=max_frames, replace=False)).tolist()
    describe = _describer(dataset)
    allowed = _allowed(elements)
    for index in _bar(indices, progress, desc, total=min(size, max_frames or size)):
        try:
            graph = dataset[index]
            _check_elements(graph.z, allowed, describe(index))
        except DataError as err:
            bad.add(err, on_error, index)
            continue
        yield describe(index), graph


def file_graphs(
    paths: Sequence[str | Path],
    cutoff: float,
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
    dtype: torch.dtype = torch.float64,
    max_frames: int | None = None,
    seed: int = 0,
    on_error: OnError = "raise",
    bad: BadFrames | None = None,
    elements: Sequence[int] | None = None,
    progress: bool = True,
) -> Iterator[tuple[str, Data]]:
    """``(where, graph)`` for the frames of data files of any readable format, one pass each.

    ASE-LMDB files (and directories of them) and graph caches (``.lmdb``) are read by index, so
    ``max_frames`` (per path) samples them directly; other files are read in order and sampled
    by a seeded reservoir that holds at most ``max_frames`` frames. Bad frames as in
    :func:`dataset_graphs`.
    """
    bad = bad if bad is not None else BadFrames()
    keys = keys or LabelKeys()
    allowed = _allowed(elements)
    for path in map(Path, paths):
        desc = path.name
        if path.is_dir() or path.suffix == ".aselmdb":
            with LMDBDataset(path, cutoff, keys, dtype, required) as dataset:
                yield from dataset_graphs(
                    dataset, max_frames, seed, on_error, bad, elements, progress, desc
                )
            continue
        if path.suffix == ".lmdb":
            with GraphLMDBDataset(path, dtype) as dataset:
                yield from dataset_graphs(
                    dataset, max_frames, seed, on_error, bad, elements, progress, desc
                )
            continue
        frames = _good(_bar(iter_atoms(path, keys, required), progress, desc), on_error, bad)
        if max_frames is not None:
            frames = _reservoir(frames, max_frames, seed)
        for where, atoms in frames:
            try:
                _check_elements(atoms.numbers, allowed, where)
                graph = _graph(atoms, cutoff, dtype, where)
            except DataError as err:
                bad.add(err, on_error)
                continue
            yield where, graph


def iter_atoms(
    path: str | Path,
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
    index: Index = ":",
) -> Iterator[tuple[str, Atoms | DataError]]:
    """``(where, labelled atoms)`` for every frame ``index`` selects from ``path`` (as
    ``ase.io.read`` takes it, ``":"`` for all), or ``(where, DataError)`` for a bad one, so that a
    pass can go on past it; a file that cannot be parsed any further ends with one
    :class:`~mlip.errors.UnreadableRest` for the rest of the file. A file with no frames at
    all (selecting all of it) raises :class:`DataError`."""
    unknown = sorted(set(required) - set(LABELS))
    if unknown:
        raise ValueError(f"required labels must be among {LABELS}, got {unknown}")
    path = Path(path)
    keys = keys or LabelKeys()
    if isinstance(index, str):
        index = string2index(index)
    selection = slice(index, index + 1 or None) if isinstance(index, int) else index
    if path.is_dir() or path.suffix == ".aselmdb":
        dataset = LMDBDataset(path, cutoff=0.0, keys=keys, required=required)
        with dataset:
            for position in range(len(dataset))[selection]:
                try:
                    yield dataset.describe(position), dataset.get_atoms(position)
                except DataError as err:
                    yield dataset.describe(position), err
        return
    check_file(path)
    if path.suffix == ".db":
        frames = _database_frames([path], selection)
    elif path.suffix == ".json" and is_mptrj(path):
        frames = iter_mptrj(path, selection, energy=keys.energy)
        keys = LabelKeys()
    else:
        frames = _file_frames(path, selection)
    empty = True
    try:
        for file, frame, atoms in frames:
            empty = False
            where = f"{file}, frame {frame}"
            if isinstance(atoms, DataError):
                yield (str(file) if isinstance(atoms, UnreadableRest) else where), atoms
                continue
            try:
                yield where, _labelled(atoms, where, keys, tuple(required))
            except DataError as err:
                yield where, err
    except DataError as err:
        yield str(path), UnreadableRest(f"{err} (the rest of the file was not read)")
        return
    if empty and selection == slice(None):
        raise DataError(f"{path}: contains no frames")


def streaming_statistics(
    dataset: Dataset,
    max_frames: int | None = None,
    seed: int = 0,
    on_error: OnError = "raise",
    elements: Sequence[int] | None = None,
    progress: bool = True,
) -> DatasetStats:
    """Statistics of a map-style dataset of graphs (e.g. :class:`LMDBDataset`) in one pass over
    all of it or over a seeded sample of ``max_frames`` frames; memory stays flat."""
    bad = BadFrames()
    accumulator = StreamingStats()
    graphs = dataset_graphs(dataset, max_frames, seed, on_error, bad, elements, progress, "stats")
    for where, graph in graphs:
        accumulator.add(graph, where)
    return accumulator.result(bad)


def scan_files(
    paths: Sequence[str | Path],
    cutoff: float = 5.0,
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
    max_frames: int | None = None,
    seed: int = 0,
    on_error: OnError = "skip",
    elements: Sequence[int] | None = None,
    force_threshold: float | None = None,
    min_distance: float | None = None,
    progress: bool = True,
) -> DatasetStats:
    """:class:`DatasetStats` of data files (``mlip data stats`` / ``check``), outliers included."""
    bad = BadFrames()
    accumulator = StreamingStats(force_threshold, min_distance)
    graphs = file_graphs(
        paths, cutoff, keys, required, torch.float64, max_frames, seed, on_error, bad,
        elements, progress,
    )  # fmt: skip
    for where, graph in graphs:
        accumulator.add(graph, where)
    return accumulator.result(bad)


def _describer(dataset: Dataset) -> Any:
    """``describe(i)`` of ``dataset`` (seen through ``Subset``s), else ``"frame i"``."""
    if hasattr(dataset, "describe"):
        return dataset.describe
    if isinstance(dataset, Subset):
        inner = _describer(dataset.dataset)
        return lambda i: inner(dataset.indices[i])
    return lambda i: f"frame {i}"


def _graph(atoms: Atoms, cutoff: float, dtype: torch.dtype, where: str) -> Data:
    try:
        return atoms_to_graph(atoms, cutoff, dtype=dtype, labels=True)
    except ValueError as err:
        raise DataError(f"{where}: {err}") from err


def _allowed(elements: Sequence[int] | None) -> np.ndarray:
    """Mask over atomic numbers 0..118: ``elements``, or every real element."""
    allowed = np.zeros(MAX_Z + 1, dtype=bool)
    allowed[list(elements) if elements is not None else slice(1, None)] = True
    allowed[0] = False
    return allowed


def _check_elements(numbers: Any, allowed: np.ndarray, where: str) -> None:
    numbers = np.asarray(numbers, dtype=np.int64)
    known = (numbers >= 0) & (numbers <= MAX_Z)
    known[known] = allowed[numbers[known]]
    if not known.all():
        names = sorted({_symbol(int(z)) for z in numbers[~known]})
        raise DataError(f"{where}: unknown element(s) {', '.join(names)}")


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 <= z <= MAX_Z else f"Z={z}"  # 0 is "X"


def _good(
    records: Iterable[tuple[str, Atoms | DataError]], on_error: OnError, bad: BadFrames
) -> Iterator[tuple[str, Atoms]]:
    """The frames of ``records`` that were read; errors go to ``bad`` (or are raised)."""
    for where, atoms in records:
        if isinstance(atoms, DataError):
            bad.add(atoms, on_error)
        else:
            yield where, atoms


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


def _bar(iterable: Iterable, progress: bool, desc: str, total: int | None = None) -> Iterable:
    return tqdm(
        iterable, desc=desc, total=total, unit="frame", disable=not progress, file=sys.stderr,
        mininterval=0.5, dynamic_ncols=True, leave=False,
    )  # fmt: skip
