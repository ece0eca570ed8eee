"""The Lightning DataModule: data files -> splits -> checks and statistics -> batches, one rule
for splits, isolated atoms and bad frames for both frame sources (README, "Your own data").
Loaders are map-style, so Lightning's ``DistributedSampler`` shards them under DDP."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler
from torch_geometric.data import Batch, Data

from mlip.data.graph import MIN_DISTANCE, check_graph
from mlip.data.lmdb import GraphLMDBDataset
from mlip.data.readers import GRAPH_CACHE_SUFFIX, LMDBDataset, dataset_graphs, file_graphs
from mlip.data.records import BadFrames, LabelKeys, OnError
from mlip.data.stats import DatasetStatistics, StatisticsPass, is_isolated
from mlip.errors import DataError

Paths = str | os.PathLike | Sequence[str | os.PathLike]
SHOWN = 10
"""Bad frames named in the log and in ``describe()`` (all are counted)."""
DESCRIBED = ("cutoff", "min_distance", "max_force", "stats_max_frames", "stats_seed", "on_error")
"""The settings :meth:`DataModule.describe` reports as they are."""
SKIPPED = "skipped_frames"
"""Batch attribute through which a loader's collate passes the bad frames it dropped."""

log = logging.getLogger(__name__)


@dataclass(eq=False)
class DataModule(pl.LightningDataModule):
    """Train/validation/test graphs of data files, in memory or (``stream``) as indices into
    ASE-LMDB files or one graph cache (``.lmdb``, built with the same ``cutoff``, Å). The fields
    are the keys of ``conf/data/*.yaml``, which say what each does: ``val`` / ``test`` files, else
    seeded fractions of ``train``; ``species`` (atomic numbers; None: those of the data);
    ``stats_max_frames`` (None: every frame read and checked before training; N: statistics from a
    sample, the other frames checked as loaded); ``min_distance`` (Å); ``max_force`` (eV/Å);
    ``on_error``."""

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
    max_force: float | None = None
    on_error: OnError = "raise"
    batch_size: int = 4
    eval_batch_size: int | None = None
    shuffle: bool = True
    num_workers: int = 0
    dtype: str | torch.dtype = "float32"
    progress: bool = True

    def __post_init__(self) -> None:
        super().__init__()
        casts = {"float": float, "int": int, "bool": bool}
        for option in fields(self):  # each value as annotated (Hydra gives 5 for a cutoff of 5.0)
            if option.type in casts:
                setattr(self, option.name, casts[option.type](getattr(self, option.name)))
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        if (most := self.stats_max_frames) is not None and most < 1:
            raise ValueError(f"stats_max_frames must be None or positive, got {most}")
        if self.stream and self.index != ":":
            raise ValueError(f"index={self.index!r} selects frames read into memory (stream=false)")
        self.paths: dict[str, list[str]] = {}
        for name in ("train", "val", "test", "isolated_atoms"):
            paths = getattr(self, name)
            paths = [paths] if isinstance(paths, str | os.PathLike) else paths or []
            self.paths[name] = [os.fspath(p) for p in paths]
        if self.species is not None:
            self.species = sorted({int(z) for z in self.species})
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
        self.mixed: tuple[Dataset, Sampler[int]] | None = None  # see mix()
        self.mixed_val: Dataset | None = None
        self.summary: dict = {}

    # -- splits, passes and statistics ----------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Open, split, the passes before training and the statistics (once)."""
        if self.statistics is not None:
            return
        train = self._open("train")
        order = np.random.default_rng(self.split_seed).permutation(len(train))
        for name in ("test", "val"):
            if self.paths[name]:
                source = self._open(name)
                self.splits[name] = self._index(source, np.arange(len(source)))
                continue
            fraction = getattr(self, f"{name}_fraction")  # one frame at least, if one is left
            n = max(round(fraction * len(train)), int(fraction > 0 and len(order) > 1))
            self.splits[name], order = self._index(train, np.sort(order[:n])), order[n:]
        self.splits["train"] = self._index(train, np.sort(order))

        accumulator = self._pass("train", self.stats_max_frames)
        isolated = self._isolated_energies() | accumulator.isolated  # the training frames' win
        seen = set(np.flatnonzero(accumulator.counts).tolist()) | set(isolated)
        species = self.species or sorted(seen)
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
        """The frame source of split ``name``: its graphs in memory, or (``stream``) ASE-LMDB files
        and folders, or one graph cache (``.lmdb``) built with the same ``cutoff``, by index."""
        paths, cutoff, keys = self.paths[name], self.cutoff, self.label_keys
        if not self.stream:
            graphs = file_graphs(
                paths, cutoff, keys, self.required, self.dtype, bad=self.bad,
                progress=self.progress, index=self.index,
            )  # fmt: skip
            return MemoryGraphs(graphs)
        paths = [Path(p) for p in paths]
        for path in paths:
            if not path.is_dir() and path.suffix not in (".aselmdb", GRAPH_CACHE_SUFFIX):
                raise DataError(
                    f"{path}: streamed data (stream: true) is .aselmdb files, folders of them or a "
                    "graph cache (.lmdb); convert it with `mlip data convert`, or read it into "
                    "memory (stream: false)"
                )
        if not any(p.suffix == GRAPH_CACHE_SUFFIX for p in paths):
            return LMDBDataset(paths, cutoff, keys, self.dtype, self.required)
        if len(paths) > 1:
            names = ", ".join(map(str, paths))
            raise DataError(f"{names}: a graph cache ({GRAPH_CACHE_SUFFIX}) comes alone")
        dataset = GraphLMDBDataset(paths[0], self.dtype)
        if abs(dataset.cutoff - cutoff) > 1e-9:
            raise DataError(
                f"{paths[0]}: graph cache built with cutoff {dataset.cutoff} Å, this run uses "
                f"{cutoff} Å (rebuild it with `mlip data preprocess --cutoff {cutoff}`)"
            )
        return dataset

    def _index(self, source: Dataset, indices: np.ndarray) -> FrameIndex:
        return FrameIndex(
            source, indices, self.species, self.required, self.on_error, self.min_distance,
            self.max_force,
        )  # fmt: skip

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

    def mix(
        self,
        train: Dataset,
        sampler: Sampler[int],
        val: Dataset | None = None,
        summary: dict | None = None,
    ) -> None:
        """Train on ``ConcatDataset([training split, train])`` in the order ``sampler`` gives
        (indices of ``train`` offset by the split's length), validate on ``val`` as a second
        loader (loader 1, even when loader 0 has no batches) and add ``summary`` to
        :meth:`describe`."""
        self.setup()
        self.mixed, self.mixed_val, self.summary = (train, sampler), val, dict(summary or {})

    def train_dataloader(self) -> DataLoader:
        """Batches of the training split (and of the frames :meth:`mix` draws for the epoch)."""
        self.setup()
        if self.mixed is None:
            return self._loader(self.splits["train"], self.batch_size, shuffle=self.shuffle)
        train, sampler = self.mixed
        dataset = ConcatDataset([self.splits["train"], train])
        return self._loader(dataset, self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation split's loader; after :meth:`mix` with ``val``, ``[that, val's]``."""
        self.setup()
        loader = self._loader(self.splits["val"], self.eval_batch_size)
        if self.mixed_val is None:
            return loader
        return [loader, self._loader(self.mixed_val, self.eval_batch_size)]

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
        """Plain summary of the data (files, frame counts, split, bad frames) for metadata, with
        the ``summary`` of :meth:`mix`."""
        self.setup()
        out = {f"{name}_files": list(self.paths[name]) for name in ("train", "val", "test")}
        out["isolated_atom_files"] = list(self.paths["isolated_atoms"])
        out |= {name: getattr(self, name) for name in ("stream", "index", "split_seed")}
        for name in ("val", "test"):  # a fraction splits only where no file is given
            fraction = getattr(self, f"{name}_fraction")
            out[f"{name}_fraction"] = None if self.paths[name] else fraction
        out |= {name: getattr(self, name) for name in DESCRIBED}
        out |= {
            "statistics_frames": self.statistics.num_frames,
            "num_isolated_atoms": self.statistics.num_isolated,
            "e0_residual_rms_eV": self.statistics.e0_residual_rms,
            "num_bad_frames": self.bad.count + len(self.loaded_bad),
            "num_bad_frames_loaded": len(self.loaded_bad),
            "bad_frames": (self.bad.messages + list(self.loaded_bad))[:SHOWN],
        }
        out |= {f"num_{name}_frames": len(split) for name, split in self.splits.items()}
        return out | self.summary


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


@dataclass(eq=False)
class FrameIndex(Dataset):
    """Frames ``indices`` of a split's ``source``: ``split[i]`` is the graph of frame
    ``indices[i]``, checked by :func:`check_graph` (``species``: sorted atomic numbers, or None:
    any real element) unless a pass before training has read every frame (``checked``); a bad
    one raises :class:`DataError` (``on_error="raise"``) or is returned (``"skip"``) for
    :func:`collate` to drop. Holds the index array, never a streamed frame."""

    source: Dataset
    indices: np.ndarray
    species: Sequence[int] | None
    required: tuple[str, ...]
    on_error: OnError
    min_distance: float = 0.0
    max_force: float | None = None
    checked: bool = False

    def __post_init__(self) -> None:
        # int32 where it will do: at 10^8 frames the index is 400 MB, not 800 MB, per process
        dtype = np.int32 if len(self.source) < 2**31 else np.int64
        self.indices = np.asarray(self.indices, dtype=dtype)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Data | DataError:
        index = int(self.indices[i])
        try:
            graph = self.source[index]
            species, required = self.species, self.required
            problem = not self.checked and check_graph(
                graph, species, required, species, self.min_distance, self.max_force
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


__all__ = ["DataModule", "FrameIndex", "MemoryGraphs", "collate"]
