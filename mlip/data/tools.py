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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import ase.db
import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from ase.io.formats import string2index
from torch.utils.data import Dataset, Subset
from torch_geometric.data import Data
from tqdm import tqdm

from mlip.data.graph import atoms_to_graph
from mlip.data.lmdb import GraphLMDBDataset, GraphLMDBWriter, LMDBDataset
from mlip.data.mptrj import is_mptrj, iter_mptrj
from mlip.data.readers import (
    LABELS,
    DataError,
    Index,
    LabelKeys,
    UnreadableRest,
    _database_frames,
    _file_frames,
    _labelled,
    check_file,
)

OnError = Literal["raise", "skip"]
MAX_Z = 118
_FORCE_BINS = np.logspace(-6, 4, 1001)  # |F| histogram edges, eV/Å: 1000 bins of 2.3 % width
_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class BadFrames:
    """Frames left out of a pass (``on_error="skip"``): all counted, the first ``keep`` kept."""

    count: int = 0
    messages: list[str] = field(default_factory=list)
    keep: int = 10_000
    indices: list[int] = field(default_factory=list)
    """Dataset indices of all bad frames, where the pass knew them (:func:`dataset_graphs`)."""
    unreadable: int = 0
    """How many of the errors are an :class:`UnreadableRest`: a file not read past that point."""

    def add(self, error: Exception, on_error: OnError, index: int | None = None) -> None:
        """Raise ``error`` (``on_error="raise"``) or count it (with the frame's ``index``)."""
        if on_error == "raise":
            raise error
        if on_error != "skip":
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.count += 1
        self.unreadable += isinstance(error, UnreadableRest)
        if len(self.messages) < self.keep:
            self.messages.append(str(error))
        if index is not None:
            self.indices.append(int(index))


@dataclass
class DatasetStats:
    """What one pass over a dataset found (units: eV, Å, eV/Å; elements by atomic number).

    ``e0`` are per-element reference energies from least squares of the total energies on the
    element counts (minimum-norm where compositions do not determine them, e.g. one fixed
    stoichiometry); ``e0_residual_rms`` is the RMS of ``E - Σ e0`` per frame. ``force_rms`` is
    over force components; ``force_norm`` holds |F| percentiles (to the 2.3 % histogram bin) and
    the exact maximum; ``mean_num_neighbours`` is edges per atom within the pass's cutoff.
    """

    num_frames: int = 0
    num_atoms: int = 0
    element_counts: dict[int, int] = field(default_factory=dict)
    frames_with: dict[str, int] = field(default_factory=dict)
    charges: dict[float, int] = field(default_factory=dict)
    spins: dict[float, int] = field(default_factory=dict)
    e0: dict[int, float] = field(default_factory=dict)
    e0_residual_rms: float = float("nan")
    energy_per_atom: dict[str, float] = field(default_factory=dict)
    force_rms: float = float("nan")
    force_norm: dict[str, float] = field(default_factory=dict)
    mean_num_neighbours: float = float("nan")
    min_distance: float = float("inf")
    num_outliers: int = 0
    outliers: list[str] = field(default_factory=list)
    num_bad: int = 0
    bad: list[str] = field(default_factory=list)
    num_unreadable: int = 0
    """Files not read to their end (each counted once in ``num_bad``; frames after the error
    are not counted at all)."""

    def e0_for(self, species: Sequence[int]) -> list[float]:
        """``e0`` in the order of ``species`` (0.0 for an element the data never had)."""
        return [self.e0.get(int(z), 0.0) for z in species]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StreamingStats:
    """Accumulates :class:`DatasetStats` one graph at a time (graphs from ``atoms_to_graph``
    with ``labels=True``); frames whose max |F| exceeds ``force_threshold`` eV/Å or whose closest
    atoms are nearer than ``min_distance`` Å are kept and reported as outliers."""

    def __init__(
        self,
        force_threshold: float | None = None,
        min_distance: float | None = None,
        keep: int = 10_000,
    ) -> None:
        self.force_threshold = force_threshold
        self.min_distance_threshold = min_distance
        self.keep = keep
        self.stats = DatasetStats()
        self.counts = np.zeros(MAX_Z + 1, dtype=np.int64)
        self.xtx = np.zeros((MAX_Z + 1, MAX_Z + 1))
        self.xty = np.zeros(MAX_Z + 1)
        self.yty = 0.0
        self.num_energies = 0
        self.energy_per_atom = [np.inf, 0.0, -np.inf]  # min, sum, max
        self.force_histogram = np.zeros(len(_FORCE_BINS) + 1, dtype=np.int64)
        self.force_square_sum = 0.0
        self.force_max = 0.0
        self.num_force_atoms = 0
        self.num_edges = 0

    def add(self, graph: Data, where: str) -> None:
        """Count one graph; ``where`` ("file, frame k") names it in outlier messages."""
        # numpy, not torch: torch's intra-op threads make these tiny operations slow on a busy CPU
        stats, n = self.stats, int(graph.num_nodes)
        stats.num_frames += 1
        stats.num_atoms += n
        count = np.bincount(graph.z.numpy(), minlength=MAX_Z + 1)
        self.counts += count
        for name in ("energy", "forces", "stress"):
            if bool(graph[f"has_{name}"]):
                stats.frames_with[name] = stats.frames_with.get(name, 0) + 1
        for values, value in ((stats.charges, graph.charge), (stats.spins, graph.spin)):
            values[float(value)] = values.get(float(value), 0) + 1
        if bool(graph.has_energy):
            self._add_energy(float(graph.energy), count, n)
        if bool(graph.has_forces) and n:
            self._add_forces(np.linalg.norm(graph.forces.numpy().astype(np.float64), axis=1), where)
        self.num_edges += int(graph.edge_index.shape[1])
        if graph.edge_index.shape[1]:
            j, i = graph.edge_index.numpy()
            pos = graph.pos.numpy().astype(np.float64)
            cell = graph.cell.numpy()[0].astype(np.float64)
            lengths = np.linalg.norm(pos[j] - pos[i] + graph.shifts.numpy() @ cell, axis=1)
            k = int(lengths.argmin())
            stats.min_distance = min(stats.min_distance, float(lengths[k]))
            limit = self.min_distance_threshold
            if limit is not None and lengths[k] < limit:
                pair = f"atoms {i[k]} and {j[k]}"
                self._outlier(f"{where}: {pair} {lengths[k]:.4g} Å apart, below {limit:g}")

    def _add_energy(self, energy: float, count: np.ndarray, n: int) -> None:
        self.xtx += np.outer(count, count)
        self.xty += count * energy
        self.yty += energy**2
        self.num_energies += 1
        if n:
            low, total, high = self.energy_per_atom
            per_atom = energy / n
            self.energy_per_atom = [min(low, per_atom), total + per_atom, max(high, per_atom)]

    def _add_forces(self, norms: np.ndarray, where: str) -> None:
        self.force_histogram += np.bincount(
            np.searchsorted(_FORCE_BINS, norms), minlength=len(_FORCE_BINS) + 1
        )
        self.force_square_sum += float((norms**2).sum())
        self.num_force_atoms += len(norms)
        largest = float(norms.max())
        self.force_max = max(self.force_max, largest)
        if self.force_threshold is not None and largest > self.force_threshold:
            self._outlier(f"{where}: max |F| {largest:.4g} eV/Å above {self.force_threshold:g}")

    def _outlier(self, message: str) -> None:
        self.stats.num_outliers += 1
        if len(self.stats.outliers) < self.keep:
            self.stats.outliers.append(message)

    def e0_with(self, fixed: dict[int, float]) -> dict[int, float]:
        """Per-element reference energies (eV) with the elements of ``fixed`` held at its values
        (e.g. isolated-atom energies) and the others fitted by least squares of what remains of
        the total energies, ``A_ff e_f = b_f - A_fF e_F`` in the normal equations (minimum-norm
        where compositions do not determine them, 0 for an element only in frames without an
        energy); every element seen or fixed is in the result.
        """
        fixed = {int(z): float(e) for z, e in fixed.items()}
        present = set(np.flatnonzero(self.counts).tolist()) | set(fixed)
        free = np.array(sorted(present - set(fixed)), dtype=np.int64)
        given = np.array(sorted(fixed), dtype=np.int64)
        e0 = dict(fixed)
        if len(free):
            if not self.num_energies:
                raise DataError("no frame has an energy: cannot fit E0s")
            values = np.array([fixed[z] for z in given.tolist()])
            rhs = self.xty[free] - self.xtx[np.ix_(free, given)] @ values
            solution = np.linalg.lstsq(self.xtx[np.ix_(free, free)], rhs, rcond=None)[0]
            e0.update({int(z): float(e) for z, e in zip(free, solution, strict=True)})
        return dict(sorted(e0.items()))

    def result(self, bad: BadFrames | None = None) -> DatasetStats:
        """The statistics so far (with the bad frames of ``bad``, if given)."""
        stats = self.stats
        present = np.flatnonzero(self.counts)
        stats.element_counts = {int(z): int(self.counts[z]) for z in present}
        if self.num_energies:
            fitted = np.flatnonzero(np.diag(self.xtx))
            a, b = self.xtx[np.ix_(fitted, fitted)], self.xty[fitted]
            e0 = np.linalg.lstsq(a, b, rcond=None)[0]
            stats.e0 = {int(z): float(e) for z, e in zip(fitted, e0, strict=True)}
            residual = self.yty - 2 * e0 @ b + e0 @ a @ e0
            stats.e0_residual_rms = float(np.sqrt(max(residual, 0.0) / self.num_energies))
            low, total, high = self.energy_per_atom
            stats.energy_per_atom = {"min": low, "mean": total / self.num_energies, "max": high}
        if self.num_force_atoms:
            stats.force_rms = float(np.sqrt(self.force_square_sum / (3 * self.num_force_atoms)))
            cumulative = np.cumsum(self.force_histogram)
            norm = {}
            for q in _PERCENTILES:
                k = int(np.searchsorted(cumulative, q / 100 * cumulative[-1]))
                norm[f"p{q:g}"] = float(
                    min(_FORCE_BINS[min(k, len(_FORCE_BINS) - 1)], self.force_max)
                )
            norm["max"] = self.force_max
            stats.force_norm = norm
        if stats.num_atoms:
            stats.mean_num_neighbours = self.num_edges / stats.num_atoms
        if bad is not None:
            stats.num_bad, stats.bad = bad.count, list(bad.messages)
            stats.num_unreadable = bad.unreadable
        return stats


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
    :class:`~mlip.data.readers.UnreadableRest` for the rest of the file. A file with no frames at
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
    bad = BadFrames()
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    written = 0
    try:
        with _FrameWriter(partial, target.suffix) as writer:
            records = iter_atoms(source, keys, required=())
            for where, atoms in _bar(records, progress, source.name):
                if isinstance(atoms, DataError):
                    bad.add(atoms, on_error)
                    continue
                try:
                    writer.write(atoms)
                except Exception as err:
                    bad.add(DataError(f"{where}: cannot write: {err!r}"), on_error)
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
    bad = BadFrames()
    writer = GraphLMDBWriter(target)
    try:
        graphs = file_graphs(
            paths, cutoff, keys, required, dtype, None, 0, on_error, bad, elements, progress
        )
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
