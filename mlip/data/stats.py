"""Statistics of a training set that the model stores: E0s, mean neighbour count, force scale.

These are computed once at fit time from the training frames (never typed into a config) and end up
in the model: E0s and the scale in :class:`~mlip.nn.potential.Potential`, the mean neighbour count in
the model's ``avg_num_neighbors``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from torch_geometric.data import Data

from mlip import keys
from mlip.data.graph import neighbour_list
from mlip.data.records import BadFrames
from mlip.errors import DataError

ISOLATED_CONFIG_TYPES = ("isolated_atom", "IsolatedAtom", "isolated")
"""``atoms.info["config_type"]`` values that mark an isolated-atom reference frame."""


@dataclass(frozen=True)
class DatasetStatistics:
    """What a potential takes from its training data.

    Attributes:
        species: atomic numbers, sorted; the model's species order.
        e0: isolated-atom energy of each species, eV (same order as ``species``).
        e0_source: ``"isolated"``, ``"least_squares"`` or ``"mixed"`` (isolated atoms for some
            elements, least squares for the rest).
        avg_num_neighbors: mean number of neighbours within the cutoff per atom.
        scale: RMS of the force components, eV/Å (1.0 without forces); the model output scale.
        shift: per-atom energy shift, eV (0: the E0s take the mean).
    """

    species: list[int]
    e0: list[float]
    e0_source: str
    avg_num_neighbors: float
    scale: float
    shift: float = 0.0

    def as_dict(self) -> dict:
        """Plain JSON-able dict (with ``e0`` also keyed by element symbol, for humans)."""
        out = asdict(self)
        out["e0_by_element"] = {
            chemical_symbols[z]: e for z, e in zip(self.species, self.e0, strict=True)
        }
        return out


def is_isolated_atom(atoms: Atoms, cutoff: float) -> bool:
    """True for a single-atom reference frame: one atom, and ``config_type`` says so, or the
    structure is non-periodic, or its periodic images are all farther than ``cutoff`` Å."""
    if len(atoms) != 1:
        return False
    if atoms.info.get("config_type") in ISOLATED_CONFIG_TYPES or not atoms.pbc.any():
        return True
    return len(neighbour_list(atoms, cutoff)[0]) == 0


def element_counts(frames: Sequence[Atoms], species: Sequence[int]) -> np.ndarray:
    """Number of atoms of each species in each frame, ``[len(frames), len(species)]``."""
    column = {z: k for k, z in enumerate(species)}
    counts = np.zeros((len(frames), len(species)))
    for row, atoms in enumerate(frames):
        for z, n in zip(*np.unique(atoms.numbers, return_counts=True), strict=True):
            counts[row, column[int(z)]] = n
    return counts


def isolated_atom_energies(frames: Sequence[Atoms]) -> dict[int, float]:
    """``{Z: energy}`` of single-atom frames (eV); an element given twice must agree to 1 meV."""
    energies: dict[int, float] = {}
    for atoms in frames:
        if len(atoms) != 1 or atoms.calc is None or "energy" not in atoms.calc.results:
            raise ValueError(f"isolated-atom frame {atoms.get_chemical_formula()} has no energy")
        z, energy = int(atoms.numbers[0]), float(atoms.calc.results["energy"])
        if z in energies and abs(energies[z] - energy) > 1e-3:
            raise ValueError(
                f"two isolated-atom energies for {chemical_symbols[z]}: {energies[z]} and {energy} eV"
            )
        energies[z] = energy
    return energies


def fit_e0(
    frames: Sequence[Atoms],
    species: Sequence[int],
    isolated: Mapping[int, float] | None = None,
) -> tuple[list[float], str]:
    """Per-species reference energies (eV) and how they were obtained.

    Elements in ``isolated`` take those energies; the others are fitted by least squares of the
    frames' total energies (minus the fixed elements' share) on their element counts, which puts
    the mean energy per atom into the E0s. Frames without an energy are ignored.
    """
    isolated = dict(isolated or {})
    fixed = [k for k, z in enumerate(species) if z in isolated]
    free = [k for k, z in enumerate(species) if z not in isolated]
    e0 = np.array([isolated.get(z, 0.0) for z in species], dtype=np.float64)
    if free:
        labelled = [a for a in frames if a.calc is not None and "energy" in a.calc.results]
        if not labelled:
            raise ValueError("no frame has an energy: cannot fit E0s")
        counts = element_counts(labelled, species)
        energies = np.array([a.calc.results["energy"] for a in labelled], dtype=np.float64)
        energies -= counts[:, fixed] @ e0[fixed]
        solution, *_ = np.linalg.lstsq(counts[:, free], energies, rcond=None)
        e0[free] = solution
    source = "least_squares" if not fixed else ("isolated" if not free else "mixed")
    return e0.tolist(), source


def average_num_neighbors(num_edges: Sequence[int], num_atoms: Sequence[int]) -> float:
    """Mean neighbour count: total directed edges over total atoms (1.0 for an empty set)."""
    atoms = float(np.sum(num_atoms))
    return float(np.sum(num_edges)) / atoms if atoms > 0 else 1.0


def force_rms(frames: Sequence[Atoms]) -> float:
    """RMS of all force components of the frames that have forces, eV/Å (1.0 if none do)."""
    squares, count = 0.0, 0
    for atoms in frames:
        if atoms.calc is not None and "forces" in atoms.calc.results:
            forces = np.asarray(atoms.calc.results["forces"], dtype=np.float64)
            squares += float(np.sum(forces**2))
            count += forces.size
    rms = float(np.sqrt(squares / count)) if count else 0.0
    return rms if rms > 0 else 1.0


def compute_statistics(
    frames: Sequence[Atoms],
    num_edges: Sequence[int],
    isolated: Sequence[Atoms] = (),
    species: Sequence[int] | None = None,
) -> DatasetStatistics:
    """All statistics of a training set.

    Args:
        frames: training frames (isolated-atom frames excluded).
        num_edges: number of directed edges of each frame's graph (same order as ``frames``).
        isolated: isolated-atom frames giving E0s of their elements.
        species: atomic numbers the model must know (default: all elements in ``frames`` and
            ``isolated``).
    """
    present = {int(z) for atoms in [*frames, *isolated] for z in atoms.numbers}
    species = sorted(present if species is None else {int(z) for z in species} | present)
    e0, source = fit_e0(frames, species, isolated_atom_energies(isolated))
    return DatasetStatistics(
        species=species,
        e0=e0,
        e0_source=source,
        avg_num_neighbors=average_num_neighbors(num_edges, [len(a) for a in frames]),
        scale=force_rms(frames),
    )


__all__ = [
    "DatasetStatistics",
    "average_num_neighbors",
    "compute_statistics",
    "element_counts",
    "fit_e0",
    "force_rms",
    "is_isolated_atom",
    "isolated_atom_energies",
]


MAX_Z = 118


_FORCE_BINS = np.logspace(-6, 4, 1001)  # |F| histogram edges, eV/Å: 1000 bins of 2.3 % width


_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


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
            if bool(graph[keys.HAS[name]]):
                stats.frames_with[name] = stats.frames_with.get(name, 0) + 1
        for values, value in ((stats.charges, graph.charge), (stats.spins, graph.spin)):
            values[float(value)] = values.get(float(value), 0) + 1
        if bool(graph[keys.HAS_ENERGY]):
            self._add_energy(float(graph.energy), count, n)
        if bool(graph[keys.HAS_FORCES]) and n:
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
