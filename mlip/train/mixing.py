"""Replay frames mixed into fine-tuning: a :class:`ReplaySet` (read by
:func:`~mlip.train.replay.replay_set`) drawn into every training epoch by a :class:`MixedSampler`,
wired into a data module by :func:`add_replay` through :meth:`DataModule.mix
<mlip.data.datamodule.DataModule.mix>`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset, Sampler

from mlip.data.datamodule import DataModule

_ORDER, _EPOCH = 0, 1
"""Tags that keep :class:`MixedSampler`'s two random streams apart."""


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


def add_replay(
    datamodule: DataModule, replay: ReplaySet, ratio: float, seed: int = 0
) -> MixedSampler:
    """Mix ``ratio`` of ``replay``'s training frames per new one into every training epoch of
    ``datamodule`` (a :class:`MixedSampler` seeded by ``seed``, returned) and validate on its
    validation frames as a second loader. Raises ValueError for a bad ``ratio`` or no replay
    training frames."""
    datamodule.setup()
    if not len(replay.train):
        raise ValueError(f"{', '.join(replay.files)}: no replay frames to train on")
    num_new = len(datamodule.splits["train"])
    sampler = MixedSampler(num_new, len(replay.train), ratio, seed, datamodule.shuffle)
    summary = {
        "num_replay_train_frames": len(replay.train),
        "num_replay_val_frames": len(replay.val),
        "replay_files": list(replay.files),
        "replay_ratio": sampler.ratio,
        "replay_weight": replay.weight,
    }
    datamodule.mix(replay.train, sampler, replay.val if len(replay.val) else None, summary)
    return sampler


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


__all__ = ["MixedSampler", "ReplaySet", "add_replay"]
