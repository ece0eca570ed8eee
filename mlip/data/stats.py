"""The one statistics pass: :class:`StatisticsPass` adds one graph at a time (memory stays flat:
E0s from the normal equations ``XᵀX e = Xᵀy`` of the element counts, |F| percentiles from a
log-spaced histogram) and gives :class:`DatasetStatistics`, what a potential takes from the data
and ``mlip data stats`` prints. Units: eV, Å, eV/Å."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch_geometric.data import Data

from mlip import keys
from mlip.data.graph import MAX_Z, edge_lengths, symbol
from mlip.data.readers import file_graphs
from mlip.data.records import BadFrames, OnError
from mlip.errors import DataError

_FORCE_BINS = np.logspace(-6, 4, 1001)  # |F| histogram edges, eV/Å: 1000 bins of 2.3 % width
_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class DatasetStatistics:
    """What one pass found: ``species`` (sorted atomic numbers), ``e0`` (eV per species, from
    isolated atoms or least squares: ``e0_source``), ``avg_num_neighbors``, ``scale`` (force RMS,
    eV/Å; 1.0 without forces) and what ``mlip data stats`` prints."""

    species: list[int] = field(default_factory=list)
    e0: list[float] = field(default_factory=list)
    e0_source: str = "least_squares"
    avg_num_neighbors: float = 1.0
    scale: float = 1.0
    shift: float = 0.0
    num_frames: int = 0
    num_atoms: int = 0
    num_isolated: int = 0
    element_counts: dict[int, int] = field(default_factory=dict)
    frames_with: dict[str, int] = field(default_factory=dict)
    charges: dict[float, int] = field(default_factory=dict)
    spins: dict[float, int] = field(default_factory=dict)
    e0_residual_rms: float = float("nan")
    energy_per_atom: dict[str, float] = field(default_factory=dict)
    force_rms: float = float("nan")
    force_norm: dict[str, float] = field(default_factory=dict)
    min_distance: float = float("inf")
    num_outliers: int = 0
    outliers: list[str] = field(default_factory=list)
    num_bad: int = 0
    bad: list[str] = field(default_factory=list)
    num_unreadable: int = 0  # files not read to their end (each counted once in num_bad)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (with ``e0`` also keyed by element symbol, for humans)."""
        out = asdict(self)
        out["e0_by_element"] = dict(zip(map(symbol, self.species), self.e0, strict=True))
        return out


def is_isolated(graph: Data) -> bool:
    """Whether a graph is an isolated-atom reference (its energy is its element's E0): one atom and
    no neighbour within the cutoff, periodic images included."""
    return int(graph.num_nodes) == 1 and graph.edge_index.shape[1] == 0


class StatisticsPass:
    """Accumulates :class:`DatasetStatistics` one labelled graph at a time; frames whose max |F|
    exceeds ``force_threshold`` eV/Å or with atoms nearer than ``min_distance`` Å are kept and
    reported as outliers (the first 10,000 named)."""

    def __init__(self, force_threshold: float | None = None, min_distance: float | None = None):
        self.force_threshold = force_threshold
        self.min_distance_threshold = min_distance
        self.outliers = BadFrames("skip")  # counted, the first 10,000 named
        self.stats = DatasetStatistics()
        self.isolated: dict[int, float] = {}
        self.counts = np.zeros(MAX_Z + 1, dtype=np.int64)
        self.xtx = np.zeros((MAX_Z + 1, MAX_Z + 1))
        self.xty = np.zeros(MAX_Z + 1)
        self.yty, self.num_energies = 0.0, 0
        self.energy_per_atom = [np.inf, 0.0, -np.inf]  # min, sum, max
        self.force_histogram = np.zeros(len(_FORCE_BINS) + 1, dtype=np.int64)
        self.force_square_sum, self.force_max, self.num_force_atoms = 0.0, 0.0, 0
        self.num_edges, self.num_atoms = 0, 0  # num_atoms: of the frames not isolated atoms

    def add(self, graph: Data, where: str) -> None:
        """Count one graph; ``where`` ("file, frame k") names it in messages."""
        # numpy, not torch: torch's intra-op threads make these tiny operations slow on a busy CPU
        stats, n = self.stats, int(graph.num_nodes)
        stats.num_frames += 1
        stats.num_atoms += n
        count = np.bincount(graph.z.numpy(), minlength=MAX_Z + 1)
        self.counts += count
        for name in ("energy", "forces", "stress"):
            if bool(graph[keys.HAS[name]]):
                stats.frames_with[name] = stats.frames_with.get(name, 0) + 1
        for values, value in ((stats.charges, graph.charge), (stats.spins, graph.spin)):
            values[float(value)] = values.get(float(value), 0) + 1
        energy = float(graph.energy)
        if is_isolated(graph) and bool(graph[keys.HAS_ENERGY]):  # its element's E0
            stats.num_isolated += 1
            z = int(graph.z[0])
            known = self.isolated.setdefault(z, energy)
            if abs(known - energy) > 1e-3:
                raise DataError(
                    f"{where}: isolated {symbol(z)} atom with energy {energy} eV, but another gave "
                    f"{known} eV (E0s must agree to 1 meV)"
                )
            return
        self.num_atoms += n
        if bool(graph[keys.HAS_ENERGY]):
            self.xtx += np.outer(count, count)
            self.xty += count * energy
            self.yty += energy**2
            self.num_energies += 1
            if n:
                low, total, high = self.energy_per_atom
                per_atom = energy / n
                self.energy_per_atom = [min(low, per_atom), total + per_atom, max(high, per_atom)]
        if bool(graph[keys.HAS_FORCES]) and n:
            norms = np.linalg.norm(graph.forces.numpy().astype(np.float64), axis=1)
            bins = np.searchsorted(_FORCE_BINS, norms)
            self.force_histogram += np.bincount(bins, minlength=len(_FORCE_BINS) + 1)
            self.force_square_sum += float((norms**2).sum())
            self.num_force_atoms += len(norms)
            largest = float(norms.max())
            self.force_max = max(self.force_max, largest)
            if self.force_threshold is not None and largest > self.force_threshold:
                message = f"{where}: max |F| {largest:.4g} eV/Å above {self.force_threshold:g}"
                self.outliers.add(DataError(message))
        self.num_edges += int(graph.edge_index.shape[1])
        if graph.edge_index.shape[1]:
            lengths = edge_lengths(graph)
            k = int(lengths.argmin())
            stats.min_distance = min(stats.min_distance, float(lengths[k]))
            limit = self.min_distance_threshold
            if limit is not None and lengths[k] < limit:
                j, i = graph.edge_index.numpy()[:, k]
                message = f"{where}: atoms {i} and {j} {lengths[k]:.4g} Å apart, below {limit:g}"
                self.outliers.add(DataError(message))

    def fit_e0(self, fixed: Mapping[int, float]) -> dict[int, float]:
        """E0s (eV by atomic number) of every element seen: ``fixed`` held, those of frames with an
        energy fitted (minimum-norm least squares of the rest of the energies), 0 for any other."""
        fixed = {int(z): float(e) for z, e in fixed.items()}
        free = self._free(fixed)
        e0 = dict.fromkeys(np.flatnonzero(self.counts).tolist(), 0.0) | fixed
        if free:
            given = np.array(sorted(fixed), dtype=np.int64)
            values = np.array([fixed[z] for z in given.tolist()])
            rhs = self.xty[free] - self.xtx[np.ix_(free, given)] @ values
            solution = np.linalg.lstsq(self.xtx[np.ix_(free, free)], rhs, rcond=None)[0]
            e0.update({z: float(e) for z, e in zip(free, solution, strict=True)})
        return e0

    def _free(self, fixed: Mapping[int, float]) -> list[int]:
        """The elements of frames with an energy that ``fixed`` leaves to fit."""
        return sorted(set(np.flatnonzero(np.diag(self.xtx)).tolist()) - set(fixed))

    def result(
        self,
        species: Sequence[int] | None = None,
        isolated: Mapping[int, float] | None = None,
        bad: BadFrames | None = None,
    ) -> DatasetStatistics:
        """The statistics so far for the model's ``species`` (default: those seen), with more
        ``isolated``-atom energies (eV; the frames' own win) and the ``bad`` frames of the pass."""
        stats = self.stats
        stats.element_counts = {int(z): int(self.counts[z]) for z in np.flatnonzero(self.counts)}
        fixed = {int(z): float(e) for z, e in (isolated or {}).items()} | self.isolated
        seen = set(stats.element_counts) | set(fixed)
        stats.species = sorted(seen if species is None else {int(z) for z in species})
        fixed = {z: e for z, e in fixed.items() if z in stats.species}
        e0, free = self.fit_e0(fixed), self._free(fixed)
        stats.e0 = [e0.get(z, 0.0) for z in stats.species]
        stats.e0_source = "least_squares" if not fixed else ("isolated" if not free else "mixed")
        if self.num_energies:
            vector = np.zeros(MAX_Z + 1)
            vector[list(e0)] = list(e0.values())
            residual = self.yty - 2 * vector @ self.xty + vector @ self.xtx @ vector
            stats.e0_residual_rms = float(np.sqrt(max(residual, 0.0) / self.num_energies))
            low, total, high = self.energy_per_atom
            stats.energy_per_atom = {"min": low, "mean": total / self.num_energies, "max": high}
        if self.num_force_atoms:
            stats.force_rms = float(np.sqrt(self.force_square_sum / (3 * self.num_force_atoms)))
            cumulative = np.cumsum(self.force_histogram)
            for q in _PERCENTILES:
                k = int(np.searchsorted(cumulative, q / 100 * cumulative[-1]))
                edge = _FORCE_BINS[min(k, len(_FORCE_BINS) - 1)]
                stats.force_norm[f"p{q:g}"] = float(min(edge, self.force_max))
            stats.force_norm["max"] = self.force_max
            stats.scale = stats.force_rms if 0 < stats.force_rms < np.inf else 1.0
        stats.avg_num_neighbors = self.num_edges / self.num_atoms if self.num_atoms else 1.0
        stats.num_outliers, stats.outliers = self.outliers.count, list(self.outliers.messages)
        if bad is not None:
            stats.num_bad, stats.bad = bad.count, list(bad.messages)
            stats.num_unreadable = bad.unreadable
        return stats


def scan_files(
    paths: Sequence[str | Path],
    cutoff: float = 5.0,
    on_error: OnError = "skip",
    force_threshold: float | None = None,
    min_distance: float | None = None,
    **reading: Any,
) -> DatasetStatistics:
    """:class:`DatasetStatistics` of data files, outliers (:class:`StatisticsPass`) included
    (``mlip data stats`` and ``check``); ``reading``: the options of
    :func:`~mlip.data.readers.file_graphs` (``keys``, ``required``, ``max_frames``, ...)."""
    bad = BadFrames(on_error)
    accumulator = StatisticsPass(force_threshold, min_distance)
    for where, graph in file_graphs(paths, cutoff, bad=bad, **reading):
        accumulator.add(graph, where)
    return accumulator.result(bad=bad)
