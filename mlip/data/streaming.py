"""Streaming DataModule: trains from ASE-LMDB files or a graph cache, holding indices, not frames.

:class:`LMDBDataModule` is :class:`~mlip.data.datamodule.AtomsDataModule` for data that does not
fit in memory. It keeps per split an array of frame indices into a lazy dataset
(:class:`~mlip.data.lmdb.LMDBDataset` over ``.aselmdb`` files, graphs built in the ``DataLoader``
workers, or :class:`~mlip.data.lmdb.GraphLMDBDataset` over a cache of ``mlip data preprocess``),
so memory stays flat as the data grows; splits are seeded permutations of indices, made without
reading a frame. Statistics (E0s, mean neighbour count, force RMS) come from one streaming pass
over the training frames, or over a seeded sample of them (``stats_max_frames``).

Bad frames (unreadable, a required label missing, NaN or inf, no atoms, two atoms closer than
``min_distance``, an element outside the species) are found by reading them: before training for
every frame the statistics pass reads (with ``stats_max_frames=None`` that pass also checks the
validation and test frames, so nothing is read unchecked), else when a loader reads them.
``on_error="raise"`` stops with a :class:`~mlip.errors.DataError` naming file and frame;
``"skip"`` leaves the frame out and counts it: found before training, it is dropped from its
split; found by a loader, it is dropped from its batch. :meth:`LMDBDataModule.describe` gives the
count and names the first few.

Loaders are plain map-style ``DataLoader`` s with the default samplers, so Lightning's
``DistributedSampler`` gives each DDP rank its own shard of every split.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data

from mlip import keys
from mlip.data.datamodule import SplitDataModule
from mlip.data.graph import MIN_DISTANCE, edge_lengths, too_close
from mlip.data.lmdb import GraphLMDBDataset, LMDBDataset
from mlip.data.passes import dataset_graphs
from mlip.data.readers import read_dataset
from mlip.data.records import BadFrames, LabelKeys, OnError
from mlip.data.stats import (
    MAX_Z,
    DatasetStatistics,
    DatasetStats,
    StreamingStats,
    isolated_atom_energies,
)
from mlip.errors import DataError

Paths = str | os.PathLike | Sequence[str | os.PathLike]
SHOWN = 10
"""Bad frames named in the log and in ``describe()`` (all are counted)."""
SKIPPED = "skipped_frames"
"""Batch attribute through which a loader's collate passes the bad frames it dropped."""
GRAPH_CACHE_SUFFIX = ".lmdb"

log = logging.getLogger(__name__)


class Skipped:
    """A bad frame in a loader's output (``on_error="skip"``): what was wrong, and where."""

    def __init__(self, message: str) -> None:
        self.message = message


def collate(items: list[Data | Skipped]) -> Batch:
    """A ``torch_geometric`` batch of the good graphs of ``items``; the messages of the
    :class:`Skipped` ones ride along as ``batch.skipped_frames`` for the DataModule to count."""
    graphs = [item for item in items if isinstance(item, Data)]
    skipped = [item.message for item in items if isinstance(item, Skipped)]
    if not graphs:
        raise DataError(
            f"all {len(items)} frames of a batch are bad, the first: {skipped[0]}. Find bad frames "
            "before training with `mlip data check` or data.stats_max_frames=null"
        )
    batch = Batch.from_data_list(graphs)
    if skipped:
        batch[SKIPPED] = skipped
    return batch


def check_graph(
    graph: Data,
    allowed: np.ndarray,
    required: Sequence[str] = (),
    species: Sequence[int] | None = None,
    min_distance: float = 0.0,
) -> str | None:
    """What makes ``graph`` unfit for training, or None: no atoms, non-finite positions, cell or
    labels, two atoms closer than ``min_distance`` Å, a ``required`` label (energy, forces,
    stress) missing, or an atomic number outside ``allowed`` (a mask over 0..118; ``species``
    names the allowed ones in the message)."""
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
    names = ", ".join(sorted({_symbol(int(z)) for z in numbers[~known]}))
    if species is None:
        return f"unknown element(s) {names}"
    return f"element(s) {names} not among the species ({', '.join(map(_symbol, species))})"


class LMDBDataModule(SplitDataModule):
    """Train/validation/test graphs read lazily from ASE-LMDB files or a graph cache.

    Args:
        train: ``.aselmdb`` file(s) and/or folders of them, or one graph cache (``.lmdb``, written
            by ``mlip data preprocess`` with the same cutoff).
        cutoff: neighbour cutoff, Å.
        val: validation data (as ``train``), or None to split ``val_fraction`` off ``train``.
        test: test data (as ``train``), or None to split ``test_fraction`` off ``train``.
        val_fraction: fraction of the training frames held out for validation (without ``val``).
        test_fraction: fraction of the training frames held out for testing (without ``test``).
        split_seed: seed of the random split (of frames in the same order, the split
            ``AtomsDataModule`` makes when it finds no isolated-atom frames among them).
        isolated_atoms: file(s) of isolated-atom frames (any readable format) whose energies are
            those elements' E0s; the other E0s are fitted by least squares. Single-atom frames in
            ``train`` are trained on like any other.
        species: atomic numbers the model knows; None: the elements of the frames the statistics
            pass reads (and of ``isolated_atoms``). A frame with another element is bad.
        label_keys: names of the labels in ``.aselmdb`` rows (default :class:`LabelKeys`).
        required: labels every frame must have (among energy, forces, stress, charge, spin).
        stats_max_frames: None: the statistics pass reads every training frame and checks every
            validation and test frame; a number: it reads a seeded sample of that many training
            frames, and the others are checked as loaders read them.
        stats_seed: seed of that sample.
        on_error: ``"raise"`` or ``"skip"`` a bad frame (see the module docstring).
        min_distance: a frame with two atoms closer than this (Å) is bad (0: no check).
        batch_size: structures per training batch (per process in data-parallel runs).
        eval_batch_size: structures per validation/test batch (default ``2 * batch_size``).
        shuffle: shuffle the training set every epoch.
        num_workers: data-loading worker processes (graphs are built there).
        dtype: ``"float32"`` or ``"float64"``, the dtype of positions and labels.
        progress: show a progress bar during the statistics pass.
    """

    def __init__(
        self,
        train: Paths,
        cutoff: float,
        val: Paths | None = None,
        test: Paths | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        isolated_atoms: Paths | None = None,
        species: Sequence[int] | None = None,
        label_keys: LabelKeys | None = None,
        required: Sequence[str] = ("energy", "forces"),
        stats_max_frames: int | None = None,
        stats_seed: int = 0,
        on_error: OnError = "raise",
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        num_workers: int = 0,
        dtype: str = "float32",
        min_distance: float = MIN_DISTANCE,
        progress: bool = True,
    ) -> None:
        super().__init__()
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= fraction < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {fraction}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if stats_max_frames is not None and stats_max_frames < 1:
            raise ValueError(f"stats_max_frames must be None or positive, got {stats_max_frames}")
        self.paths = {
            "train": _as_paths(train),
            "val": _as_paths(val),
            "test": _as_paths(test),
            "isolated_atoms": _as_paths(isolated_atoms),
        }
        self.cutoff = float(cutoff)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        self.given_species = sorted({int(z) for z in species}) if species is not None else None
        self.label_keys = label_keys or LabelKeys()
        self.required = tuple(required)
        self.stats_max_frames = stats_max_frames
        self.stats_seed = int(stats_seed)
        self.on_error = on_error
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or 2 * batch_size)
        self.shuffle = bool(shuffle)
        self.num_workers = int(num_workers)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.min_distance = float(min_distance)
        self.progress = bool(progress)
        self.splits: dict[str, FrameIndex] = {}
        self.bad = BadFrames(keep=SHOWN)  # found before training
        self.loaded_bad = _SeenBad()  # dropped from batches by this process's loaders
        self.stats: DatasetStats | None = None
        self.statistics: DatasetStatistics | None = None

    # -- index, statistics and checks -----------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Index, split, one statistics pass and the checks (once; later calls do nothing)."""
        if self.statistics is not None:
            return
        sources = {name: self._open(name) for name in ("train", "val", "test") if self.paths[name]}
        train = sources["train"]
        fractions = {
            name: 0.0 if name in sources else fraction
            for name, fraction in (("test", self.test_fraction), ("val", self.val_fraction))
        }
        order = np.arange(len(train))
        if any(fractions.values()):
            order = np.random.default_rng(self.split_seed).permutation(len(train))
        indices: dict[str, tuple[Dataset, np.ndarray]] = {}
        for name, fraction in fractions.items():  # as AtomsDataModule: test first, then val
            if name in sources:
                indices[name] = (sources[name], np.arange(len(sources[name])))
                continue
            n = int(round(fraction * len(train)))
            if fraction > 0 and n == 0 and len(order) > 1:
                n = 1
            indices[name], order = (train, np.sort(order[:n])), order[n:]
        if not len(order):
            raise DataError(f"{_names(self.paths['train'])}: no frames left for training")
        indices["train"] = (train, np.sort(order))

        isolated = self._isolated_energies()
        self.splits["train"] = self._index(*indices["train"], self.given_species)
        self.stats, accumulator = self._statistics_pass(self.splits["train"])
        species = self.given_species or sorted(set(self.stats.element_counts) | set(isolated))
        for name in ("val", "test"):
            self.splits[name] = self._index(*indices[name], species)
            if self.stats_max_frames is None:
                self._check_pass(name)
        if not len(self.splits["train"]):
            raise DataError(f"{_names(self.paths['train'])}: no training frames left (all bad)")
        if self.bad.count:
            _log_bad(self.bad.count, self.bad.messages, "before training")
        self.splits["train"].species = species  # loaders check training frames against them too
        self.statistics = _statistics(self.stats, accumulator, species, isolated)
        self.teardown()

    def teardown(self, stage: str | None = None) -> None:
        """Close this process's connections to the files (the next read reopens them): LMDB
        opens a file once per process, so an open one would keep other readers out."""
        for split in self.splits.values():
            split.source.close()

    def _open(self, name: str) -> LMDBDataset | GraphLMDBDataset:
        """The lazy dataset over the paths of split ``name``."""
        paths = self.paths[name]
        caches = [p for p in paths if Path(p).suffix == GRAPH_CACHE_SUFFIX]
        if not caches:
            return LMDBDataset(paths, self.cutoff, self.label_keys, self.dtype, self.required)
        if len(paths) > 1:
            raise DataError(f"{_names(paths)}: a graph cache ({GRAPH_CACHE_SUFFIX}) comes alone")
        dataset = GraphLMDBDataset(paths[0], self.dtype)
        if abs(dataset.cutoff - self.cutoff) > 1e-9:
            raise DataError(
                f"{paths[0]}: graph cache built with cutoff {dataset.cutoff} Å, this run uses "
                f"{self.cutoff} Å (rebuild it with `mlip data preprocess --cutoff {self.cutoff}`)"
            )
        return dataset

    def _index(
        self, source: Dataset, indices: np.ndarray, species: Sequence[int] | None
    ) -> FrameIndex:
        return FrameIndex(source, indices, species, self.required, self.on_error, self.min_distance)

    def _isolated_energies(self) -> dict[int, float]:
        if not self.paths["isolated_atoms"]:
            return {}
        frames = read_dataset(self.paths["isolated_atoms"], ":", self.label_keys, ("energy",))
        try:
            return isolated_atom_energies(frames)
        except ValueError as err:
            raise DataError(f"{_names(self.paths['isolated_atoms'])}: {err}") from err

    def _statistics_pass(self, split: FrameIndex) -> tuple[DatasetStats, StreamingStats]:
        """Statistics of the training frames (or the sample); bad ones raise or leave the split."""
        accumulator, bad = StreamingStats(), BadFrames()
        checking = split.raising()
        graphs = dataset_graphs(
            checking, self.stats_max_frames, self.stats_seed, self.on_error, bad,
            progress=self.progress, desc="statistics",
        )  # fmt: skip
        for where, graph in graphs:
            accumulator.add(graph, where)
        self._drop(split, bad)
        stats = accumulator.result()
        if not stats.num_frames:
            raise DataError(f"{_names(self.paths['train'])}: no good frame for the statistics")
        return stats, accumulator

    def _check_pass(self, name: str) -> None:
        """Read every frame of split ``name`` once; bad ones raise or leave the split."""
        bad = BadFrames()
        graphs = dataset_graphs(
            self.splits[name].raising(), on_error=self.on_error, bad=bad,
            progress=self.progress, desc=f"checking {name}",
        )  # fmt: skip
        for _ in graphs:
            pass
        self._drop(self.splits[name], bad)

    def _drop(self, split: FrameIndex, bad: BadFrames) -> None:
        """Count the bad frames a pass found (``on_error="skip"``) and take them out of ``split``."""
        self.bad.count += bad.count
        self.bad.messages += bad.messages[: self.bad.keep - len(self.bad.messages)]
        split.indices = np.delete(split.indices, bad.indices)

    collate = staticmethod(collate)

    def dataset(self, name: str) -> FrameIndex:
        """The index of split ``name`` into its lazy dataset."""
        return self.splits[name]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count (and log the first few of) the bad frames a loader dropped from ``batch``."""
        if isinstance(batch, Data) and SKIPPED in batch:
            for message in batch[SKIPPED]:
                if self.loaded_bad.add(message) and self.loaded_bad.count <= SHOWN:
                    log.warning("skipped bad frame (on_error=skip): %s", message)
            del batch[SKIPPED]
        return batch

    def describe(self) -> dict:
        """Plain summary of the data (files, frame counts, split, bad frames) for metadata."""
        self.setup()
        held = {name: not self.paths[name] for name in ("val", "test")}
        bad = self.bad.messages[:SHOWN] + self.loaded_bad.messages
        out = {
            "datamodule": type(self).__name__,
            "train_files": list(self.paths["train"]),
            "val_files": list(self.paths["val"]),
            "test_files": list(self.paths["test"]),
            "isolated_atom_files": list(self.paths["isolated_atoms"]),
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction if held["val"] else None,
            "test_fraction": self.test_fraction if held["test"] else None,
            "cutoff": self.cutoff,
            "min_distance": self.min_distance,
            "statistics_frames": self.stats.num_frames,
            "stats_max_frames": self.stats_max_frames,
            "stats_seed": self.stats_seed,
            "e0_residual_rms_eV": self.stats.e0_residual_rms,
            "on_error": self.on_error,
            "num_bad_frames": self.bad.count + self.loaded_bad.count,
            "num_bad_frames_loaded": self.loaded_bad.count,
            "bad_frames": bad[:SHOWN],
        }
        for name, split in self.splits.items():
            out[f"num_{name}_frames"] = len(split)
        return out


class FrameIndex(Dataset):
    """Frames ``indices`` of a lazy dataset, checked as they are read (a split's dataset).

    ``split[i]`` is the graph of frame ``indices[i]`` of ``source`` after :func:`check_graph`; a
    bad frame raises :class:`DataError` (``on_error="raise"``) or comes back as a
    :class:`Skipped` that :func:`collate` drops. Holds the index array, never a frame; pickles
    small for workers and DDP.
    """

    def __init__(
        self,
        source: Dataset,
        indices: np.ndarray,
        species: Sequence[int] | None,
        required: Sequence[str],
        on_error: OnError,
        min_distance: float = 0.0,
    ) -> None:
        self.source = source
        # int32 where it will do: at 10^8 frames the index is 400 MB, not 800 MB, per process
        self.indices = np.asarray(indices, dtype=np.int32 if len(source) < 2**31 else np.int64)
        self.species = species
        self.required = tuple(required)
        self.on_error = on_error
        self.min_distance = float(min_distance)

    @property
    def species(self) -> list[int] | None:
        return self._species

    @species.setter
    def species(self, species: Sequence[int] | None) -> None:
        self._species = sorted(int(z) for z in species) if species is not None else None
        self._allowed = np.zeros(MAX_Z + 1, dtype=bool)
        self._allowed[self._species if self._species is not None else slice(1, None)] = True

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Data | Skipped:
        try:
            return self.load(i)
        except DataError as err:
            if self.on_error == "raise":
                raise
            return Skipped(str(err))

    def load(self, i: int) -> Data:
        """The checked graph of the ``i``-th frame of the split; a bad one raises DataError."""
        index = int(self.indices[i])
        graph = self.source[index]
        problem = check_graph(graph, self._allowed, self.required, self._species, self.min_distance)
        if problem:
            raise DataError(f"{self.source.describe(index)}: {problem}")
        return graph

    def describe(self, i: int) -> str:
        """Where the ``i``-th frame of the split comes from (``"file, frame k"``)."""
        return self.source.describe(int(self.indices[i]))

    def raising(self) -> FrameIndex:
        """This split with ``on_error="raise"`` (for passes that apply the policy themselves)."""
        return FrameIndex(
            self.source, self.indices, self.species, self.required, "raise", self.min_distance
        )


class _SeenBad:
    """Bad frames a loader dropped, counted once each however many epochs meet them."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.messages: list[str] = []

    @property
    def count(self) -> int:
        return len(self.seen)

    def add(self, message: str) -> bool:
        """Note ``message``; True when it is new."""
        if message in self.seen:
            return False
        self.seen.add(message)
        if len(self.messages) < SHOWN:
            self.messages.append(message)
        return True


def _statistics(
    stats: DatasetStats,
    accumulator: StreamingStats,
    species: list[int],
    isolated: dict[int, float],
) -> DatasetStatistics:
    """What the potential takes (:class:`DatasetStatistics`) from one streaming pass."""
    present = set(stats.element_counts)
    fitted = present - set(isolated)
    e0 = accumulator.e0_with({z: e for z, e in isolated.items() if z in species})
    source = "least_squares" if not isolated else ("isolated" if not fitted else "mixed")
    scale = stats.force_rms if np.isfinite(stats.force_rms) and stats.force_rms > 0 else 1.0
    neighbours = stats.mean_num_neighbours
    return DatasetStatistics(
        species=list(species),
        e0=[e0.get(z, 0.0) for z in species],
        e0_source=source,
        avg_num_neighbors=float(neighbours) if np.isfinite(neighbours) else 1.0,
        scale=float(scale),
    )


def _log_bad(count: int, messages: list[str], when: str) -> None:
    shown = "\n  ".join(messages[:SHOWN])
    more = f"\n  ... and {count - SHOWN} more" if count > SHOWN else ""
    log.warning("skipped %d bad frame(s) %s (on_error=skip):\n  %s%s", count, when, shown, more)


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 <= z <= MAX_Z else f"Z={z}"


def _as_paths(paths: Paths | None) -> list[str]:
    if paths is None:
        return []
    if isinstance(paths, str | os.PathLike):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def _names(paths: list[str]) -> str:
    return ", ".join(paths)


__all__ = ["FrameIndex", "LMDBDataModule", "Skipped", "check_graph", "collate"]
