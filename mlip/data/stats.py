"""The one statistics pass: what a dataset holds, and what a potential takes from it.

:class:`StatisticsPass` adds one graph at a time (memory stays flat: E0s come from the normal
equations ``XᵀX e = Xᵀy`` of the element counts, |F| percentiles from a fixed log-spaced
histogram) and gives one :class:`DatasetStatistics`, exact on data of any size. Training stores
its E0s and force scale in :class:`~mlip.nn.potential.Potential` and its mean neighbour count in
the model's ``avg_num_neighbors``; ``mlip data stats`` prints it. Units: eV, Å, eV/Å.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from mlip import keys
from mlip.data.graph import edge_lengths
from mlip.data.records import BadFrames, LabelKeys, OnError
from mlip.data.sources import MAX_Z, file_graphs, symbol
from mlip.errors import DataError

_FORCE_BINS = np.logspace(-6, 4, 1001)  # |F| histogram edges, eV/Å: 1000 bins of 2.3 % width
_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class DatasetStatistics:
    """What one pass over a dataset found (elements by atomic number).

    The potential takes ``species`` (sorted; the model's order), ``e0`` (eV, one per species),
    ``avg_num_neighbors`` (directed edges per atom within the cutoff) and ``scale`` (RMS of the
    force components, eV/Å; 1.0 without forces). ``e0`` of isolated-atom frames (one atom, no
    neighbour within the cutoff) are those frames' energies; the others come from least squares
    of the total energies on the element counts (minimum-norm where the compositions do not
    determine them, 0 for an element with no energy); ``e0_source`` says which (``"isolated"``,
    ``"least_squares"`` or ``"mixed"``). ``e0_residual_rms`` is the RMS of ``E - Σ e0`` per
    frame; ``force_norm`` holds |F| percentiles (to the 2.3 % bin) and the exact maximum.
    Isolated-atom frames count in ``num_frames``, ``num_atoms`` and ``element_counts`` only.
    """

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
    num_unreadable: int = 0
    """Files not read to their end (each counted once in ``num_bad``)."""

    def e0_for(self, species: Sequence[int]) -> list[float]:
        """``e0`` in the order of ``species`` (0.0 for an element the data never had)."""
        by_z = dict(zip(self.species, self.e0, strict=True))
        return [by_z.get(int(z), 0.0) for z in species]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (with ``e0`` also keyed by element symbol, for humans)."""
        out = asdict(self)
        out["e0_by_element"] = dict(zip(map(symbol, self.species), self.e0, strict=True))
        return out


def is_isolated(graph: Data) -> bool:
    """Whether a graph is an isolated-atom reference: one atom and no neighbour within the cutoff
    (its periodic images included). Its energy is then its element's E0 exactly, whatever the
    model; a single atom with images within the cutoff is a crystal and is trained on."""
    return int(graph.num_nodes) == 1 and graph.edge_index.shape[1] == 0


class StatisticsPass:
    """Accumulates :class:`DatasetStatistics` one graph at a time (graphs of
    :func:`~mlip.data.graph.atoms_to_graph` with ``labels=True``); frames whose max |F| exceeds
    ``force_threshold`` eV/Å or whose closest atoms are nearer than ``min_distance`` Å are kept
    and reported as outliers (the first ``keep`` named)."""

    def __init__(
        self,
        force_threshold: float | None = None,
        min_distance: float | None = None,
        keep: int = 10_000,
    ) -> None:
        self.force_threshold = force_threshold
        self.min_distance_threshold = min_distance
        self.keep = keep
        self.stats = DatasetStatistics()
        self.isolated: dict[int, float] = {}
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
        self.num_atoms = 0  # of the frames that are not isolated atoms

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
        if is_isolated(graph) and bool(graph[keys.HAS_ENERGY]):
            self._add_isolated(int(graph.z[0]), float(graph.energy), where)
            return
        self.num_atoms += n
        if bool(graph[keys.HAS_ENERGY]):
            self._add_energy(float(graph.energy), count, n)
        if bool(graph[keys.HAS_FORCES]) and n:
            self._add_forces(np.linalg.norm(graph.forces.numpy().astype(np.float64), axis=1), where)
        self.num_edges += int(graph.edge_index.shape[1])
        if graph.edge_index.shape[1]:
            lengths = edge_lengths(graph)
            k = int(lengths.argmin())
            stats.min_distance = min(stats.min_distance, float(lengths[k]))
            limit = self.min_distance_threshold
            if limit is not None and lengths[k] < limit:
                j, i = graph.edge_index.numpy()[:, k]
                message = f"{where}: atoms {i} and {j} {lengths[k]:.4g} Å apart, below {limit:g}"
                self._outlier(message)

    def _add_isolated(self, z: int, energy: float, where: str) -> None:
        """An isolated-atom energy: its element's E0; a second one must agree to 1 meV."""
        self.stats.num_isolated += 1
        known = self.isolated.setdefault(z, energy)
        if abs(known - energy) > 1e-3:
            raise DataError(
                f"{where}: isolated {symbol(z)} atom with energy {energy} eV, but another gave "
                f"{known} eV (E0s must agree to 1 meV)"
            )

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

    def fit_e0(self, fixed: Mapping[int, float]) -> dict[int, float]:
        """E0s (eV by atomic number) of every element seen, with those of ``fixed`` held at its
        values and the others fitted to the total energies around them."""
        fixed = {int(z): float(e) for z, e in fixed.items()}
        free = sorted(set(np.flatnonzero(np.diag(self.xtx)).tolist()) - set(fixed))
        return self._e0(fixed, free)

    def _e0(self, fixed: Mapping[int, float], free: list[int]) -> dict[int, float]:
        """E0s (eV) with the elements of ``fixed`` held at its values and those of ``free``
        (elements of frames with an energy) fitted by least squares of what remains of the total
        energies, ``A_ff e_f = b_f - A_fF e_F`` in the normal equations (minimum-norm where
        compositions do not determine them); 0 for any other element seen."""
        e0 = dict.fromkeys(np.flatnonzero(self.counts).tolist(), 0.0) | dict(fixed)
        if free:
            given = np.array(sorted(fixed), dtype=np.int64)
            values = np.array([fixed[z] for z in given.tolist()])
            rhs = self.xty[free] - self.xtx[np.ix_(free, given)] @ values
            solution = np.linalg.lstsq(self.xtx[np.ix_(free, free)], rhs, rcond=None)[0]
            e0.update({z: float(e) for z, e in zip(free, solution, strict=True)})
        return e0

    def result(
        self,
        species: Sequence[int] | None = None,
        isolated: Mapping[int, float] | None = None,
        bad: BadFrames | None = None,
    ) -> DatasetStatistics:
        """The statistics so far. ``species``: the elements the model knows (default: those
        seen); ``isolated``: more isolated-atom energies (eV, e.g. from a file of them; the
        frames' own win where both give one); ``bad``: the bad frames of the pass."""
        stats = self.stats
        present = np.flatnonzero(self.counts)
        stats.element_counts = {int(z): int(self.counts[z]) for z in present}
        fixed = {int(z): float(e) for z, e in (isolated or {}).items()} | self.isolated
        seen = set(stats.element_counts) | set(fixed)
        stats.species = sorted(seen if species is None else {int(z) for z in species})
        fixed = {z: e for z, e in fixed.items() if z in stats.species}
        free = sorted(set(np.flatnonzero(np.diag(self.xtx)).tolist()) - set(fixed))
        e0 = self._e0(fixed, free)
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
            norm = {}
            for q in _PERCENTILES:
                k = int(np.searchsorted(cumulative, q / 100 * cumulative[-1]))
                norm[f"p{q:g}"] = float(
                    min(_FORCE_BINS[min(k, len(_FORCE_BINS) - 1)], self.force_max)
                )
            norm["max"] = self.force_max
            stats.force_norm = norm
        rms = stats.force_rms
        stats.scale = rms if np.isfinite(rms) and rms > 0 else 1.0
        stats.avg_num_neighbors = self.num_edges / self.num_atoms if self.num_atoms else 1.0
        if bad is not None:
            stats.num_bad, stats.bad = bad.count, list(bad.messages)
            stats.num_unreadable = bad.unreadable
        return stats


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
) -> DatasetStatistics:
    """:class:`DatasetStatistics` of data files (``mlip data stats`` / ``check``), outliers
    included (see :func:`~mlip.data.sources.file_graphs` for reading and sampling)."""
    bad = BadFrames(on_error)
    accumulator = StatisticsPass(force_threshold, min_distance)
    graphs = file_graphs(
        paths, cutoff, keys, required, torch.float64, max_frames, seed, bad, elements, progress
    )
    for where, graph in graphs:
        accumulator.add(graph, where)
    return accumulator.result(bad=bad)
