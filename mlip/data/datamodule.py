"""The Lightning DataModule: data files -> splits -> checks and statistics -> batches.

One DataModule over two frame sources: ``stream=False`` reads every file into graphs in memory;
``stream=True`` holds frame indices into ASE-LMDB files (graphs built as loaders read them) or a
graph cache, so memory stays flat as the data grows. Both make the same seeded split (test first,
then validation), one statistics pass over the training split (or a seeded sample), the same
isolated-atom rule (:func:`~mlip.data.stats.is_isolated` frames give E0s and leave their split)
and the same bad-frame path: frames read before training are checked there, the others as loaders
read them; ``on_error="raise"`` stops naming file and frame, ``"skip"`` leaves the frame out of
its split (or batch) and counts it. Loaders are plain map-style, so Lightning's
``DistributedSampler`` gives each DDP rank its own shard.

Replay (:meth:`DataModule.add_replay`): the frames of a :class:`ReplaySet` (in memory, whichever
the source of the new data) join every training epoch through a :class:`MixedSampler`, and its
validation frames are a second validation loader.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler
from torch_geometric.data import Batch, Data

from mlip.data.graph import MIN_DISTANCE
from mlip.data.records import BadFrames, LabelKeys, OnError
from mlip.data.sources import (
    allowed_elements,
    check_graph,
    dataset_graphs,
    file_graphs,
    open_indexed,
)
from mlip.data.stats import DatasetStatistics, StatisticsPass, is_isolated
from mlip.errors import DataError

Paths = str | os.PathLike | Sequence[str | os.PathLike]
SHOWN = 10
"""Bad frames named in the log and in ``describe()`` (all are counted)."""
SKIPPED = "skipped_frames"
"""Batch attribute through which a loader's collate passes the bad frames it dropped."""
_ORDER, _EPOCH = 0, 1
"""Tags that keep :class:`MixedSampler`'s two random streams apart."""

log = logging.getLogger(__name__)


class DataModule(pl.LightningDataModule):
    """Train/validation/test graphs of data files, in memory or streamed (see the module doc).

    Args:
        train: training file(s). In memory: any format :func:`~mlip.data.readers.records`
            reads. Streamed: ``.aselmdb`` files and/or folders of them, or one graph cache
            (``.lmdb``, written by ``mlip data preprocess`` with the same cutoff).
        cutoff: neighbour cutoff, Å.
        val: validation file(s) (as ``train``), or None to split ``val_fraction`` off ``train``.
        test: test file(s) (as ``train``), or None to split ``test_fraction`` off ``train``.
        val_fraction: fraction of the training frames held out for validation (without ``val``).
        test_fraction: fraction of the training frames held out for testing (without ``test``).
        split_seed: seed of the random split.
        isolated_atoms: file(s) of isolated-atom frames (any readable format) giving E0s.
        species: atomic numbers the model knows; None: the elements of the training frames the
            statistics pass reads (and of the isolated atoms). A frame with another is bad.
        label_keys: names of the labels in the files (default :class:`LabelKeys`).
        required: labels every frame must have (among energy, forces, stress, charge, spin).
        index: frames read from each file, as ``ase.io.read`` takes it (``":"``, ``":100"``);
            in memory only.
        stream: hold frame indices into ASE-LMDB files or a graph cache, not the frames.
        stats_max_frames: None: the passes before training read every training frame (the
            statistics) and every validation and test frame (the checks); a number: the
            statistics come from a seeded sample of that many training frames, and the other
            frames are checked as loaders read them.
        stats_seed: seed of that sample.
        min_distance: a frame with two atoms closer than this (Å) is bad (0: no check).
        on_error: ``"raise"`` or ``"skip"`` a bad frame (see the module doc).
        batch_size: structures per training batch (per process in data-parallel runs).
        eval_batch_size: structures per validation/test batch (default ``2 * batch_size``).
        shuffle: shuffle the training set every epoch.
        num_workers: data-loading worker processes (streamed: graphs are built there).
        dtype: ``"float32"`` or ``"float64"``, the dtype of positions and labels.
        progress: progress bars while reading and during the passes.
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
        index: str = ":",
        stream: bool = False,
        stats_max_frames: int | None = None,
        stats_seed: int = 0,
        min_distance: float = MIN_DISTANCE,
        on_error: OnError = "raise",
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        num_workers: int = 0,
        dtype: str = "float32",
        progress: bool = True,
    ) -> None:
        super().__init__()
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= fraction < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {fraction}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        if stats_max_frames is not None and stats_max_frames < 1:
            raise ValueError(f"stats_max_frames must be None or positive, got {stats_max_frames}")
        if stream and index != ":":
            raise ValueError(f"index={index!r} selects frames read into memory (stream=false)")
        self.paths = {
            "train": _as_paths(train),
            "val": _as_paths(val),
            "test": _as_paths(test),
            "isolated_atoms": _as_paths(isolated_atoms),
        }
        self.cutoff = float(cutoff)
        self.fractions = {"test": float(test_fraction), "val": float(val_fraction)}
        self.split_seed = int(split_seed)
        self.given_species = sorted({int(z) for z in species}) if species is not None else None
        self.label_keys = label_keys or LabelKeys()
        self.required = tuple(required)
        self.index = index
        self.stream = bool(stream)
        self.stats_max_frames = stats_max_frames
        self.stats_seed = int(stats_seed)
        self.min_distance = float(min_distance)
        self.on_error = on_error
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or 2 * batch_size)
        self.shuffle = bool(shuffle)
        self.num_workers = int(num_workers)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.progress = bool(progress)
        self.splits: dict[str, FrameIndex] = {}
        self.bad = BadFrames(on_error, keep=SHOWN)  # found before training
        self.loaded_bad = _SeenBad()  # dropped from batches by this process's loaders
        self.statistics: DatasetStatistics | None = None
        self.statistics_pass: StatisticsPass | None = None
        self.isolated_e0: dict[int, float] = {}
        self.replay: ReplaySet | None = None
        self.replay_sampler: MixedSampler | None = None

    # -- splits, passes and statistics ----------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Open, split, the passes before training and the statistics (once; later calls do
        nothing)."""
        if self.statistics is not None:
            return
        sources = {name: self._open(name) for name in ("train", "val", "test") if self.paths[name]}
        train = sources["train"]
        order = np.random.default_rng(self.split_seed).permutation(len(train))
        for name, fraction in self.fractions.items():  # test first, then val
            if name in sources:
                self.splits[name] = self._index(sources[name], np.arange(len(sources[name])))
                continue
            n = int(round(fraction * len(train)))
            if fraction > 0 and n == 0 and len(order) > 1:
                n = 1
            self.splits[name], order = self._index(train, np.sort(order[:n])), order[n:]
        if not len(order):
            raise DataError(f"{self._names('train')}: no frames left for training after the split")
        self.splits["train"] = self._index(train, np.sort(order), self.given_species)

        accumulator = self._pass("train", self.stats_max_frames)
        isolated = self._isolated_energies() | accumulator.isolated  # the training frames' win
        seen = set(np.flatnonzero(accumulator.counts).tolist()) | set(isolated)
        species = self.given_species or sorted(seen)
        self.splits["train"].species = species  # loaders check training frames against them too
        for name in ("val", "test"):
            self.splits[name].species = species
            if self.stats_max_frames is None:
                isolated = self._pass(name).isolated | isolated
        if not len(self.splits["train"]):
            raise DataError(
                f"{self._names('train')}: no training frames left (all bad or isolated atoms)"
            )
        if not accumulator.num_energies and seen - set(isolated):
            raise DataError(f"{self._names('train')}: no frame has an energy: cannot fit E0s")
        if self.bad.count:
            _log_bad(self.bad.count, self.bad.messages, "before training")
        self.statistics = accumulator.result(species, isolated)
        # fine-tuning refits E0s with some held (finetune.e0=keep)
        self.statistics_pass, self.isolated_e0 = accumulator, isolated
        self.teardown()

    def teardown(self, stage: str | None = None) -> None:
        """Close this process's connections to the files (the next read reopens them): LMDB
        opens a file once per process, so an open one would keep other readers out."""
        for split in self.splits.values():
            if hasattr(split.source, "close"):
                split.source.close()

    def _open(self, name: str) -> Dataset:
        """The frame source of split ``name``: its graphs in memory, or an indexed dataset."""
        paths = self.paths[name]
        if self.stream:
            return open_indexed(paths, self.cutoff, self.label_keys, self.dtype, self.required)
        graphs = file_graphs(
            paths, self.cutoff, self.label_keys, self.required, self.dtype, bad=self.bad,
            progress=self.progress, index=self.index,
        )  # fmt: skip
        return MemoryGraphs(graphs)

    def _index(
        self, source: Dataset, indices: np.ndarray, species: Sequence[int] | None = None
    ) -> FrameIndex:
        return FrameIndex(source, indices, species, self.required, self.on_error, self.min_distance)

    def _isolated_energies(self) -> dict[int, float]:
        """E0s from the files of ``isolated_atoms`` (their frames must be isolated atoms)."""
        accumulator = StatisticsPass()
        paths = self.paths["isolated_atoms"]
        graphs = file_graphs(
            paths, self.cutoff, self.label_keys, ("energy",), progress=self.progress
        )
        for where, graph in graphs:
            if not is_isolated(graph):
                raise DataError(f"{where}: not an isolated atom (one atom, no neighbour within "
                                f"{self.cutoff:g} Å)")  # fmt: skip
            accumulator.add(graph, where)
        return accumulator.isolated

    def _pass(self, name: str, max_frames: int | None = None) -> StatisticsPass:
        """Read the frames of split ``name`` (or a seeded sample of ``max_frames``) before
        training: bad ones raise or leave the split, as do isolated atoms. Returns the
        statistics of the training frames read, or of the isolated atoms of another split."""
        split, bad = self.splits[name], BadFrames(self.on_error)
        accumulator, leave = StatisticsPass(), []
        graphs = dataset_graphs(
            split.raising(), max_frames, self.stats_seed, bad,
            progress=self.progress, desc="statistics" if name == "train" else f"checking {name}",
        )  # fmt: skip
        for position, where, graph in graphs:
            isolated = is_isolated(graph)
            if isolated:
                leave.append(position)
            if isolated or name == "train":
                accumulator.add(graph, where)
        self.bad.count += bad.count
        self.bad.unreadable += bad.unreadable
        self.bad.messages += bad.messages[: self.bad.keep - len(self.bad.messages)]
        split.indices = np.delete(split.indices, bad.indices + leave)
        split.checked = max_frames is None
        return accumulator

    def _names(self, name: str) -> str:
        return ", ".join(self.paths[name])

    # -- loaders --------------------------------------------------------------------------------

    def add_replay(self, replay: ReplaySet, ratio: float, seed: int = 0) -> None:
        """Mix ``replay``'s training frames into every training epoch, ``ratio`` of them per
        training frame of the new data (:class:`MixedSampler`, seeded by ``seed``), and validate
        on its validation frames as a second loader (see :meth:`val_dataloader`).

        Replay frames carry their loss weights (:func:`~mlip.train.replay.replay_set` multiplies
        them by ``replay.weight`` and checks their elements against the model's), and a batch's
        loss is normalised by its number of labels, so a replay frame counts ``weight`` times as
        much as a new frame. Raises ValueError for a bad ``ratio`` or an empty replay set.
        """
        self.setup()
        if not len(replay.train):
            raise ValueError(f"{', '.join(replay.files)}: no replay frames to train on")
        self.replay_sampler = MixedSampler(
            len(self.splits["train"]), len(replay.train), ratio, seed, self.shuffle
        )
        self.replay = replay

    def train_dataloader(self) -> DataLoader:
        """Batches of the training split; with replay, of the training split and the replay
        frames that :class:`MixedSampler` draws for the epoch."""
        self.setup()
        if self.replay is None:
            return self._loader(self.splits["train"], self.batch_size, shuffle=self.shuffle)
        mixed = ConcatDataset([self.splits["train"], self.replay.train])
        return self._loader(mixed, self.batch_size, sampler=self.replay_sampler)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation split's loader; with replay validation frames, ``[that loader, the
        replay set's]`` (loader 1 is always the replay set's, even when the validation split is
        empty and loader 0 has no batches: then only replay errors are logged)."""
        self.setup()
        new = self._loader(self.splits["val"], self.eval_batch_size)
        if self.replay is None or not len(self.replay.val):
            return new
        return [new, self._loader(self.replay.val, self.eval_batch_size)]

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.splits["test"], self.eval_batch_size)

    def _loader(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = False,
        sampler: Sampler[int] | None = None,
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def has(self, name: str) -> bool:
        """Whether split ``name`` (``"train"``, ``"val"``, ``"test"``) holds any frames."""
        self.setup()
        return len(self.splits[name]) > 0

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
            "train_files": list(self.paths["train"]),
            "val_files": list(self.paths["val"]),
            "test_files": list(self.paths["test"]),
            "isolated_atom_files": list(self.paths["isolated_atoms"]),
            "stream": self.stream,
            "index": self.index,
            "split_seed": self.split_seed,
            "val_fraction": self.fractions["val"] if held["val"] else None,
            "test_fraction": self.fractions["test"] if held["test"] else None,
            "cutoff": self.cutoff,
            "min_distance": self.min_distance,
            "statistics_frames": self.statistics.num_frames,
            "stats_max_frames": self.stats_max_frames,
            "stats_seed": self.stats_seed,
            "num_isolated_atoms": self.statistics.num_isolated,
            "e0_residual_rms_eV": self.statistics.e0_residual_rms,
            "on_error": self.on_error,
            "num_bad_frames": self.bad.count + self.loaded_bad.count,
            "num_bad_frames_loaded": self.loaded_bad.count,
            "bad_frames": bad[:SHOWN],
        }
        for name, split in self.splits.items():
            out[f"num_{name}_frames"] = len(split)
        replay = self.replay
        out |= {
            "num_replay_train_frames": len(replay.train) if replay else 0,
            "num_replay_val_frames": len(replay.val) if replay else 0,
            "replay_files": list(replay.files) if replay else [],
            "replay_ratio": self.replay_sampler.ratio if replay else None,
            "replay_weight": replay.weight if replay else None,
        }
        return out


@dataclass
class ReplaySet:
    """Graphs of replay frames (the base model's domain), in memory, split into train and val.

    Attributes:
        train: replay frames to train on (graphs with ``describe(i)``, e.g. :class:`MemoryGraphs`).
        val: replay frames to validate on (may be empty).
        files: the files they were read from.
        weight: the factor their loss weights were multiplied by (> 0, finite).
    """

    train: Dataset
    val: Dataset
    files: list[str]
    weight: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"replay weight must be positive and finite, got {self.weight}")


class MixedSampler(Sampler[int]):
    """Indices into ``ConcatDataset([new, replay])``: each epoch every new frame once and
    ``k = max(1, round(ratio * num_new))`` replay frames (indices offset by ``num_new``).

    The replay frames are taken ``k`` at a time, in order, from one seeded permutation of the
    replay set that continues across epochs and wraps around: epoch ``e`` takes its positions
    ``[e k, (e + 1) k)`` modulo ``num_replay``. So any ``num_replay`` consecutive draws hold every
    replay frame once (over any run of epochs, draw counts differ by at most one between frames),
    and an epoch's draw depends on ``(seed, e)`` only: a resumed run draws what the uninterrupted
    one would have. With ``shuffle`` the epoch's indices are permuted (seeded by
    ``seed`` and ``e``); without, the replay indices are spread evenly among the new ones.

    Lightning calls :meth:`set_epoch` before each training epoch with its epoch count (restored on
    resume). Under DDP it wraps a custom sampler in ``DistributedSamplerWrapper`` (Lightning 2.6),
    whose ``set_epoch`` forwards the epoch to this sampler and whose ``__iter__`` shards
    ``list(self)``, so every rank draws the same epoch and takes its share. If ``set_epoch`` is
    never called (a plain PyTorch loop), each ``__iter__`` is the next epoch, from 0.

    Args:
        num_new: frames of the new data (the dataset's first ``num_new`` indices), >= 1.
        num_replay: replay frames (the next ``num_replay`` indices), >= 1.
        ratio: replay frames drawn per new frame and epoch (> 0, finite).
        seed: seed of the draws (>= 0).
        shuffle: permute each epoch's indices.
    """

    def __init__(
        self, num_new: int, num_replay: int, ratio: float, seed: int = 0, shuffle: bool = True
    ) -> None:
        if num_new < 1 or num_replay < 1:
            raise ValueError(f"need new and replay frames, got {num_new} and {num_replay}")
        if not (math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"replay ratio must be positive and finite, got {ratio}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_new, self.num_replay = int(num_new), int(num_replay)
        self.ratio = float(ratio)
        self.num_drawn = max(1, round(self.ratio * self.num_new))
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch: int | None = None
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch`` on the next ``__iter__`` (and every later one until changed)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_new + self.num_drawn

    def __iter__(self) -> Iterator[int]:
        epoch = self._iterations if self.epoch is None else self.epoch
        self._iterations += 1
        return iter(self.indices(epoch).tolist())

    def replay_draw(self, epoch: int) -> np.ndarray:
        """``[k]`` positions in the replay set drawn for ``epoch``."""
        order = np.random.default_rng([self.seed, _ORDER]).permutation(self.num_replay)
        positions = np.arange(epoch * self.num_drawn, (epoch + 1) * self.num_drawn)
        return order[positions % self.num_replay]

    def indices(self, epoch: int) -> np.ndarray:
        """``[num_new + k]`` dataset indices of ``epoch``, in the order they are served."""
        new = np.arange(self.num_new)
        indices = np.concatenate([new, self.num_new + self.replay_draw(epoch)])
        if self.shuffle:
            return np.random.default_rng([self.seed, _EPOCH, epoch]).permutation(indices)
        place = np.concatenate(
            [(new + 0.5) / self.num_new, (np.arange(self.num_drawn) + 0.5) / self.num_drawn]
        )
        return indices[np.argsort(place, kind="stable")]


class MemoryGraphs(Dataset):
    """The ``(where, graph)`` pairs of a pass, held in memory: ``dataset[i]`` is graph ``i``."""

    def __init__(self, graphs: Any) -> None:
        self.sources, self.graphs = [], []
        for where, graph in graphs:
            self.sources.append(where)
            self.graphs.append(graph)

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> Data:
        return self.graphs[index]

    def describe(self, index: int) -> str:
        """Where graph ``index`` comes from (``"file, frame k"``)."""
        return self.sources[index]


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


class FrameIndex(Dataset):
    """Frames ``indices`` of a frame source (a split's dataset), checked as they are read.

    ``split[i]`` is the graph of frame ``indices[i]`` of ``source`` after :func:`check_graph`
    (skipped once a pass before training has read every frame: ``checked``); a bad frame raises
    :class:`DataError` (``on_error="raise"``) or comes back as a :class:`Skipped` that
    :func:`collate` drops. Holds the index array, never a frame of a streamed source, so it
    pickles small for workers and DDP.
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
        self.checked = False

    @property
    def species(self) -> list[int] | None:
        return self._species

    @species.setter
    def species(self, species: Sequence[int] | None) -> None:
        self._species = sorted(int(z) for z in species) if species is not None else None
        self._allowed = allowed_elements(self._species)

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
        if self.checked:
            return graph
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


def _log_bad(count: int, messages: list[str], when: str) -> None:
    shown = "\n  ".join(messages[:SHOWN])
    more = f"\n  ... and {count - SHOWN} more" if count > SHOWN else ""
    log.warning("skipped %d bad frame(s) %s (on_error=skip):\n  %s%s", count, when, shown, more)


def _as_paths(paths: Paths | None) -> list[str]:
    if paths is None:
        return []
    if isinstance(paths, str | os.PathLike):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


__all__ = [
    "DataModule",
    "FrameIndex",
    "MemoryGraphs",
    "MixedSampler",
    "ReplaySet",
    "Skipped",
    "collate",
]
