"""Lightning DataModule: read and check every file, split, build graphs, compute statistics, batch.

All data is read, checked and turned into graphs in :meth:`AtomsDataModule.setup`, before any
training step: a missing label, a malformed frame, NaN forces or an element that only the test set
holds stops the run with a :class:`~mlip.errors.DataError` naming the file and frame, or,
with ``on_error="skip"``, leaves that frame out and counts it (:meth:`AtomsDataModule.describe`
lists the first few). For data too large to hold in memory see :mod:`mlip.data.streaming`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Batch, Data

from mlip.data.graph import MIN_DISTANCE, atoms_to_graph
from mlip.data.passes import iter_atoms
from mlip.data.records import BadFrames, LabelKeys, OnError
from mlip.data.stats import DatasetStatistics, compute_statistics, is_isolated_atom
from mlip.errors import AtomsTooCloseError, DataError

Paths = str | os.PathLike | Sequence[str | os.PathLike]
SHOWN = 10
"""Bad frames listed by name in the log and in ``describe()`` (all are counted)."""

log = logging.getLogger(__name__)


@dataclass
class Split:
    """Frames of one split with where each came from (``"file, frame k"``) and their graphs."""

    frames: list[Atoms]
    sources: list[str]
    graphs: list[Data]

    def __len__(self) -> int:
        return len(self.frames)

    def select(self, keep: Sequence[int]) -> Split:
        """The frames at positions ``keep``."""
        return Split(
            [self.frames[k] for k in keep],
            [self.sources[k] for k in keep],
            [self.graphs[k] for k in keep],
        )


class SplitDataModule(pl.LightningDataModule):
    """Loaders over the ``"train"``, ``"val"`` and ``"test"`` splits a subclass builds in ``setup``.

    Subclasses set ``batch_size``, ``eval_batch_size``, ``shuffle``, ``num_workers`` and
    ``splits`` (``len()`` per split) and give :meth:`dataset`; :attr:`collate` makes the batch.
    Loaders are plain map-style, so Lightning's ``DistributedSampler`` shards them under DDP.
    """

    batch_size: int
    eval_batch_size: int
    shuffle: bool
    num_workers: int
    splits: dict
    collate = staticmethod(Batch.from_data_list)

    def dataset(self, name: str) -> Dataset | Sequence:
        """What the loader of split ``name`` indexes."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, False)

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        self.setup()
        return DataLoader(
            self.dataset(name),
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def has(self, name: str) -> bool:
        """Whether split ``name`` (``"train"``, ``"val"``, ``"test"``) holds any frames."""
        self.setup()
        return len(self.splits[name]) > 0


class AtomsDataModule(SplitDataModule):
    """Train/validation/test graphs from labelled structure files.

    Validation and test sets come from their own files when given, else from a seeded random
    split of the training files (test first, then validation). Isolated-atom frames (see
    :func:`mlip.data.stats.is_isolated_atom`) in the training files, and all frames of
    ``isolated_atoms``, give per-element E0s and are not trained on; the other elements' E0s are
    fitted by least squares. The statistics (:attr:`statistics`) come from the training split only.

    Args:
        train: training file(s); any format :func:`mlip.data.readers.iter_frames` reads.
        cutoff: neighbour cutoff, Å.
        val: validation file(s), or None to split ``val_fraction`` off the training files.
        test: test file(s), or None to split ``test_fraction`` off the training files.
        val_fraction: fraction of training frames held out for validation (without ``val``).
        test_fraction: fraction of training frames held out for testing (without ``test``).
        split_seed: seed of the random split.
        isolated_atoms: file(s) of isolated-atom frames giving E0s, or None.
        label_keys: names of the labels in the files (default :class:`LabelKeys`).
        required: labels every frame must have (from :data:`mlip.data.readers.LABELS`).
        index: frames to read from each file, as ``ase.io.read`` takes it (``":"``, ``":100"``).
        batch_size: structures per training batch (per process in data-parallel runs).
        eval_batch_size: structures per validation/test batch (default ``2 * batch_size``).
        shuffle: shuffle the training set every epoch.
        num_workers: data-loading worker processes.
        dtype: ``"float32"`` or ``"float64"``, the dtype of positions and labels.
        min_distance: a frame with two atoms closer than this (Å) is bad (0: no check).
        on_error: ``"raise"``: a bad frame (unreadable, a required label missing, NaN or inf, no
            atoms, no graph, two atoms closer than ``min_distance``, an element of the
            validation/test set the training set lacks) stops :meth:`setup` with a
            :class:`DataError` naming file and frame; ``"skip"``: it is left
            out and counted (``describe()["num_bad_frames"]``, the first few named in the log
            and in ``describe()["bad_frames"]``). A file that stops parsing skips its remaining
            frames as one bad entry.
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
        label_keys: LabelKeys | None = None,
        required: Sequence[str] = ("energy", "forces"),
        index: str = ":",
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        num_workers: int = 0,
        dtype: str = "float32",
        min_distance: float = MIN_DISTANCE,
        on_error: OnError = "raise",
    ) -> None:
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= fraction < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {fraction}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        self.train_paths = _as_paths(train)
        self.val_paths = _as_paths(val)
        self.test_paths = _as_paths(test)
        self.isolated_paths = _as_paths(isolated_atoms)
        self.cutoff = float(cutoff)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        self.label_keys = label_keys or LabelKeys()
        self.required = tuple(required)
        self.index = index
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or 2 * batch_size)
        self.shuffle = bool(shuffle)
        self.num_workers = int(num_workers)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.min_distance = float(min_distance)
        self.on_error = on_error
        self.bad = BadFrames(keep=SHOWN)
        self.splits: dict[str, Split] = {}
        self.isolated: list[Atoms] = []
        self.statistics: DatasetStatistics | None = None

    # -- reading and checking -------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Read, check, split and convert everything (once; later calls do nothing)."""
        if self.statistics is not None:
            return
        frames, sources = self._read(self.train_paths, self.required)
        isolated = [k for k, atoms in enumerate(frames) if is_isolated_atom(atoms, self.cutoff)]
        self.isolated = [frames[k] for k in isolated]
        if self.isolated_paths:
            self.isolated += self._read(self.isolated_paths, ("energy",))[0]
        keep = sorted(set(range(len(frames))) - set(isolated))
        frames, sources = [frames[k] for k in keep], [sources[k] for k in keep]
        if not frames:
            raise DataError(f"{_names(self.train_paths)}: no training frames (isolated atoms only)")

        parts = {"test": self.test_paths, "val": self.val_paths}
        fractions = {"test": self.test_fraction, "val": self.val_fraction}
        order = np.random.default_rng(self.split_seed).permutation(len(frames))
        held: dict[str, tuple[list[Atoms], list[str]]] = {}
        for name in ("test", "val"):
            if parts[name]:
                held[name] = self._read(parts[name], self.required)
                continue
            n = int(round(fractions[name] * len(frames)))
            if fractions[name] > 0 and n == 0 and len(order) > 1:
                n = 1
            chosen, order = order[:n], order[n:]
            held[name] = ([frames[k] for k in chosen], [sources[k] for k in chosen])
        rest = sorted(order.tolist())
        held["train"] = ([frames[k] for k in rest], [sources[k] for k in rest])
        if not held["train"][0]:
            raise DataError(
                f"{_names(self.train_paths)}: no frames left for training after the split"
            )

        for name in ("train", "val", "test"):
            self.splits[name] = self._split(*held[name])
        if not self.splits["train"].frames:
            raise DataError(f"{_names(self.train_paths)}: no training frames left (all bad)")
        known = {
            int(z) for atoms in self.splits["train"].frames + self.isolated for z in atoms.numbers
        }
        for name in ("val", "test"):
            split, keep = self.splits[name], []
            for k, (atoms, source) in enumerate(zip(split.frames, split.sources, strict=True)):
                unknown = sorted(set(atoms.numbers.tolist()) - known)
                if not unknown:
                    keep.append(k)
                    continue
                symbols = ", ".join(chemical_symbols[z] for z in unknown)
                error = f"{source}: element {symbols} of the {name} set is not in the training data"
                self.bad.add(DataError(error), self.on_error)
            self.splits[name] = split.select(keep)
        if self.bad.count:
            _log_bad(self.bad)
        train = self.splits["train"]
        self.statistics = compute_statistics(
            train.frames,
            [g.edge_index.shape[1] for g in train.graphs],
            isolated=self.isolated,
        )

    def _read(self, paths: list[str], required: Sequence[str]) -> tuple[list[Atoms], list[str]]:
        """The good frames of ``paths`` and where each came from; bad ones go to ``self.bad``."""
        frames, sources = [], []
        for path in paths:
            for source, atoms in iter_atoms(path, self.label_keys, required, self.index):
                error = atoms if isinstance(atoms, DataError) else _frame_problem(atoms, source)
                if error is not None:
                    self.bad.add(error, self.on_error)
                    continue
                frames.append(atoms)
                sources.append(source)
        return frames, sources

    def _split(self, frames: list[Atoms], sources: list[str]) -> Split:
        """The frames whose graphs could be built, with those graphs."""
        split = Split([], [], [])
        for atoms, source in zip(frames, sources, strict=True):
            try:
                graph = atoms_to_graph(atoms, self.cutoff, self.dtype, True, self.min_distance)
            except AtomsTooCloseError as err:
                self.bad.add(DataError(f"{source}: {err} (data.min_distance)"), self.on_error)
                continue
            except (ValueError, RuntimeError) as err:
                error = DataError(f"{source}: cannot build its graph: {err}")
                self.bad.add(error, self.on_error)
                continue
            split.frames.append(atoms)
            split.sources.append(source)
            split.graphs.append(graph)
        return split

    def dataset(self, name: str) -> list[Data]:
        """The graphs of split ``name``."""
        return self.splits[name].graphs

    def describe(self) -> dict:
        """Plain summary of the data (files, frame counts, split) for model-file metadata."""
        self.setup()
        out = {
            "train_files": [str(p) for p in self.train_paths],
            "val_files": [str(p) for p in self.val_paths],
            "test_files": [str(p) for p in self.test_paths],
            "isolated_atom_files": [str(p) for p in self.isolated_paths],
            "index": self.index,
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction if not self.val_paths else None,
            "test_fraction": self.test_fraction if not self.test_paths else None,
            "cutoff": self.cutoff,
            "min_distance": self.min_distance,
            "num_isolated_atoms": len(self.isolated),
            "on_error": self.on_error,
            "num_bad_frames": self.bad.count,
            "bad_frames": self.bad.messages[:SHOWN],
        }
        for name, split in self.splits.items():
            out[f"num_{name}_frames"] = len(split)
            out[f"num_{name}_atoms"] = int(sum(len(a) for a in split.frames))
        return out


def _as_paths(paths: Paths | None) -> list[str]:
    if paths is None:
        return []
    if isinstance(paths, str | os.PathLike):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def _names(paths: list[str]) -> str:
    return ", ".join(paths)


def _frame_problem(atoms: Atoms, source: str) -> DataError | None:
    """What makes a labelled frame unusable (non-finite positions or cell, no atoms), if anything."""
    if not np.isfinite(atoms.positions).all() or not np.isfinite(atoms.cell.array).all():
        return DataError(f"{source}: positions or cell contain NaN or inf")
    if len(atoms) == 0:
        return DataError(f"{source}: frame has no atoms")
    return None


def _log_bad(bad: BadFrames) -> None:
    """Log how many frames were skipped as bad, naming the first :data:`SHOWN`."""
    shown = "\n  ".join(bad.messages[:SHOWN])
    more = f"\n  ... and {bad.count - SHOWN} more" if bad.count > SHOWN else ""
    log.warning("skipped %d bad frame(s) (on_error=skip):\n  %s%s", bad.count, shown, more)


__all__ = ["AtomsDataModule", "Split", "SplitDataModule"]
