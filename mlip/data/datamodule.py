"""The Lightning DataModule: data files -> splits -> checks and statistics -> batches.

Two frame sources, one rule for splits, isolated atoms and bad frames (README, "Your own data"):
in memory (:class:`MemoryGraphs`) or streamed (:class:`FrameIndex` indices into ASE-LMDB files
or a graph cache). Loaders are map-style, so Lightning's ``DistributedSampler`` shards them under
DDP. Replay (:meth:`DataModule.add_replay`) mixes a :class:`ReplaySet` into every training epoch
through a :class:`MixedSampler`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
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


@dataclass(eq=False)
class DataModule(pl.LightningDataModule):
    """Train/validation/test graphs of data files, in memory or (``stream``) as indices into
    ASE-LMDB files or one graph cache (``.lmdb``, built with the same ``cutoff``, Å). The fields
    are the keys of ``conf/data/*.yaml``, which say what each does: ``val`` / ``test`` files, else
    seeded fractions of ``train``; ``species`` (atomic numbers; None: those of the data);
    ``stats_max_frames`` (None: every frame read and checked before training; N: statistics from a
    sample, the other frames checked as loaded); ``min_distance`` (Å); ``on_error``."""

    train: Paths
    cutoff: float
    val: Paths | None = None
    test: Paths | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    isolated_atoms: Paths | None = None
    species: Sequence[int] | None = None
    label_keys: LabelKeys | None = None
    required: Sequence[str] = ("energy", "forces")
    index: str = ":"
    stream: bool = False
    stats_max_frames: int | None = None
    stats_seed: int = 0
    min_distance: float = MIN_DISTANCE
    on_error: OnError = "raise"
    batch_size: int = 4
    eval_batch_size: int | None = None
    shuffle: bool = True
    num_workers: int = 0
    dtype: str | torch.dtype = "float32"
    progress: bool = True

    def __post_init__(self) -> None:
        super().__init__()
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        if self.stats_max_frames is not None and self.stats_max_frames < 1:
            raise ValueError(
                f"stats_max_frames must be None or positive, got {self.stats_max_frames}"
            )
        if self.stream and self.index != ":":
            raise ValueError(f"index={self.index!r} selects frames read into memory (stream=false)")
        names = ("train", "val", "test", "isolated_atoms")
        self.paths = {name: _as_paths(getattr(self, name)) for name in names}
        self.cutoff, self.min_distance = float(self.cutoff), float(self.min_distance)
        self.split_seed, self.stats_seed = int(self.split_seed), int(self.stats_seed)
        self.batch_size, self.num_workers = int(self.batch_size), int(self.num_workers)
        self.stream, self.shuffle, self.progress = map(
            bool, (self.stream, self.shuffle, self.progress)
        )
        self.fractions = {"test": float(self.test_fraction), "val": float(self.val_fraction)}
        self.given_species = (
            None if self.species is None else sorted({int(z) for z in self.species})
        )
        self.label_keys = self.label_keys or LabelKeys()
        self.required = tuple(self.required)
        self.eval_batch_size = int(self.eval_batch_size or 2 * self.batch_size)
        self.dtype = getattr(torch, self.dtype) if isinstance(self.dtype, str) else self.dtype
        self.splits: dict[str, FrameIndex] = {}
        self.bad = BadFrames(self.on_error, keep=SHOWN)  # found before training
        self.loaded_bad: dict[str, None] = {}  # dropped by this process's loaders, once each
        self.statistics: DatasetStatistics | None = None
        self.statistics_pass: StatisticsPass | None = None
        self.isolated_e0: dict[int, float] = {}
        self.replay: ReplaySet | None = None
        self.replay_sampler: MixedSampler | None = None

    # -- splits, passes and statistics ----------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Open, split, the passes before training and the statistics (once)."""
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
            shown, more = "\n  ".join(self.bad.messages), self.bad.count - SHOWN
            more = f"\n  ... and {more} more" if more > 0 else ""
            log.warning("skipped %d bad frame(s) before training (on_error=skip):\n  %s%s",
                        self.bad.count, shown, more)  # fmt: skip
        self.statistics = accumulator.result(species, isolated)
        # fine-tuning refits E0s with some held (finetune.e0=keep)
        self.statistics_pass, self.isolated_e0 = accumulator, isolated
        self.teardown()

    def teardown(self, stage: str | None = None) -> None:
        """Close this process's connections to the files (the next read reopens them)."""
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
        accumulator, paths = StatisticsPass(), self.paths["isolated_atoms"]
        keys, progress = self.label_keys, self.progress
        for where, graph in file_graphs(paths, self.cutoff, keys, ("energy",), progress=progress):
            if not is_isolated(graph):
                raise DataError(f"{where}: not an isolated atom (one atom, no neighbour within "
                                f"{self.cutoff:g} Å)")  # fmt: skip
            accumulator.add(graph, where)
        return accumulator.isolated

    def _pass(self, name: str, max_frames: int | None = None) -> StatisticsPass:
        """Read split ``name`` (or a seeded sample of ``max_frames``) before training; bad frames
        and isolated atoms leave it. The statistics of its training frames or isolated atoms."""
        split, first = self.splits[name], len(self.bad.indices)
        accumulator, leave = StatisticsPass(), []
        graphs = dataset_graphs(
            split, max_frames, self.stats_seed, self.bad,
            progress=self.progress, desc="statistics" if name == "train" else f"checking {name}",
        )  # fmt: skip
        for position, where, graph in graphs:
            isolated = is_isolated(graph)
            if isolated:
                leave.append(position)
            if isolated or name == "train":
                accumulator.add(graph, where)
        split.indices = np.delete(split.indices, self.bad.indices[first:] + leave)
        split.checked = max_frames is None
        return accumulator

    def _names(self, name: str) -> str:
        return ", ".join(self.paths[name])

    # -- loaders --------------------------------------------------------------------------------

    def add_replay(self, replay: ReplaySet, ratio: float, seed: int = 0) -> None:
        """Mix ``ratio`` of ``replay``'s training frames per new one into every training epoch
        (:class:`MixedSampler`, seeded by ``seed``) and validate on its validation frames as a
        second loader. Raises ValueError for a bad ``ratio`` or no replay training frames."""
        self.setup()
        if not len(replay.train):
            raise ValueError(f"{', '.join(replay.files)}: no replay frames to train on")
        self.replay_sampler = MixedSampler(
            len(self.splits["train"]), len(replay.train), ratio, seed, self.shuffle
        )
        self.replay = replay

    def train_dataloader(self) -> DataLoader:
        """Batches of the training split (and of the replay frames drawn for the epoch)."""
        self.setup()
        if self.replay is None:
            return self._loader(self.splits["train"], self.batch_size, shuffle=self.shuffle)
        mixed = ConcatDataset([self.splits["train"], self.replay.train])
        return self._loader(mixed, self.batch_size, sampler=self.replay_sampler)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation split's loader; with replay validation frames, ``[that, the replay
        set's]`` (loader 1 is the replay set's even when loader 0 has no batches)."""
        self.setup()
        new = self._loader(self.splits["val"], self.eval_batch_size)
        if self.replay is None or not len(self.replay.val):
            return new
        return [new, self._loader(self.replay.val, self.eval_batch_size)]

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.splits["test"], self.eval_batch_size)

    def _loader(self, dataset: Dataset, batch_size: int, **options: Any) -> DataLoader:
        """A loader of ``dataset`` (``options``: ``shuffle`` or a ``sampler``)."""
        workers = self.num_workers
        return DataLoader(
            dataset, batch_size, collate_fn=collate, num_workers=workers,
            persistent_workers=workers > 0, **options,
        )  # fmt: skip

    def has(self, name: str) -> bool:
        """Whether split ``name`` (``"train"``, ``"val"``, ``"test"``) holds any frames."""
        self.setup()
        return len(self.splits[name]) > 0

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count (and log the first few of) the bad frames a loader dropped from ``batch``."""
        if isinstance(batch, Data) and SKIPPED in batch:
            for message in batch[SKIPPED]:
                if message not in self.loaded_bad:
                    self.loaded_bad[message] = None
                    if len(self.loaded_bad) <= SHOWN:
                        log.warning("skipped bad frame (on_error=skip): %s", message)
            del batch[SKIPPED]
        return batch

    def describe(self) -> dict:
        """Plain summary of the data (files, frame counts, split, bad frames) for metadata."""
        self.setup()
        held = {name: not self.paths[name] for name in ("val", "test")}
        bad = self.bad.messages[:SHOWN] + list(self.loaded_bad)[:SHOWN]
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
            "num_bad_frames": self.bad.count + len(self.loaded_bad),
            "num_bad_frames_loaded": len(self.loaded_bad),
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
    """Replay frames (the base model's domain) in memory: ``train`` and ``val`` graphs with
    ``describe(i)``, the ``files`` read, and the ``weight`` (> 0) on their loss weights."""

    train: Dataset
    val: Dataset
    files: list[str]
    weight: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"replay weight must be positive and finite, got {self.weight}")


class MixedSampler(Sampler[int]):
    """Indices into ``ConcatDataset([new, replay])``: each epoch every one of the ``num_new`` new
    frames once and ``k = max(1, round(ratio * num_new))`` of the ``num_replay`` replay frames
    (offset by ``num_new``), the next ``k`` of one seeded permutation that runs on across epochs
    and wraps around. An epoch's draw depends on ``(seed, epoch)`` only, so a resumed run draws
    what the uninterrupted one would have; with ``shuffle`` its indices are permuted, without, the
    replay ones spread among the new ones. Lightning calls :meth:`set_epoch` (under DDP through
    its ``DistributedSamplerWrapper``, which shards ``list(self)``); without it, each
    ``__iter__`` is the next epoch."""

    def __init__(
        self, num_new: int, num_replay: int, ratio: float, seed: int = 0, shuffle: bool = True
    ) -> None:
        if num_new < 1 or num_replay < 1:
            raise ValueError(f"need new and replay frames, got {num_new} and {num_replay}")
        if not (math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"replay ratio must be positive and finite, got {ratio}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_new, self.num_replay, self.ratio = int(num_new), int(num_replay), float(ratio)
        self.num_drawn = max(1, round(self.ratio * self.num_new))
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.epoch: int | None = None
        self._iterations = 0  # epochs drawn without set_epoch

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
    """The ``(where, graph)`` pairs of a pass in memory: ``dataset[i]`` is graph ``i``,
    ``describe(i)`` where it comes from (``"file, frame k"``)."""

    def __init__(self, graphs: Iterable[tuple[str, Data]]) -> None:
        self.items = list(graphs)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Data:
        return self.items[index][1]

    def describe(self, index: int) -> str:
        return self.items[index][0]


def collate(items: list[Data | DataError]) -> Batch:
    """A batch of the good graphs of ``items``; the messages of the bad ones (their DataErrors)
    ride along as ``batch.skipped_frames`` for the DataModule to count."""
    graphs = [item for item in items if isinstance(item, Data)]
    skipped = [str(item) for item in items if isinstance(item, DataError)]
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
    """Frames ``indices`` of a split's ``source``: ``split[i]`` is the graph of frame
    ``indices[i]``, checked by :func:`check_graph` unless a pass before training has read every
    frame (``checked``); a bad one raises :class:`DataError` (``on_error="raise"``) or is returned
    (``"skip"``) for :func:`collate` to drop. Holds the index array, never a streamed frame."""

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
        self.species = species  # sorted atomic numbers, or None: any real element
        self.required = tuple(required)
        self.on_error = on_error
        self.min_distance = float(min_distance)
        self.checked = False

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Data | DataError:
        index = int(self.indices[i])
        try:
            graph = self.source[index]
            if not self.checked:
                allowed = allowed_elements(self.species)
                problem = check_graph(
                    graph, allowed, self.required, self.species, self.min_distance
                )
                if problem:
                    raise DataError(f"{self.source.describe(index)}: {problem}")
        except DataError as err:
            if self.on_error == "raise":
                raise
            return err
        return graph

    def describe(self, i: int) -> str:
        """Where the ``i``-th frame of the split comes from (``"file, frame k"``)."""
        return self.source.describe(int(self.indices[i]))


def _as_paths(paths: Paths | None) -> list[str]:
    return [
        os.fspath(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths or [])
    ]


__all__ = ["DataModule", "FrameIndex", "MemoryGraphs", "MixedSampler", "ReplaySet", "collate"]
