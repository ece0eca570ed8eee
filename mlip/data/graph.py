"""Atoms -> graph: the only place that builds neighbour lists (vesin, periodic images, mixed pbc)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from ase.stress import voigt_6_to_full_3x3_stress
from torch_geometric.data import Batch, Data
from vesin import NeighborList

from mlip import keys
from mlip.errors import AtomsTooCloseError, GeometryError

MIN_DISTANCE = 0.5
"""Å: the smallest interatomic distance the commands accept by default (training, evaluation,
relaxation and MD); closer atoms are an input error, not a structure to score."""


def neighbour_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list of ``atoms`` within ``cutoff`` Å, periodic images included.

    Returns ``(i, j, shifts)``: centres ``i [E]``, neighbours ``j [E]`` and integer image offsets
    ``shifts [E, 3]`` with ``r_ij = pos[j] - pos[i] + shifts @ cell``. Each pair appears in both
    directions. Directions without periodicity need no cell vector (molecules may have a zero cell).
    Raises :class:`GeometryError` for non-finite positions or cell and for periodic cell vectors
    that span no volume.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    positions = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    if len(atoms) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros((0, 3), dtype=np.int64)
    cell = _checked_cell(atoms, cutoff)
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = calculator.compute(
        points=positions, box=cell, periodic=pbc.tolist(), quantities="ijS"
    )
    return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)


def _checked_cell(atoms: Atoms, cutoff: float) -> np.ndarray:
    """The cell vectors the neighbour search uses (see :func:`_complete_cell`), after checking that
    positions and cell are finite and that the periodic vectors are independent."""
    formula = atoms.get_chemical_formula()
    positions, cell = atoms.positions, np.array(atoms.cell.array, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if len(bad):
        raise GeometryError(f"{formula}: position of atom {bad[0]} is not finite (NaN or inf)")
    if not np.isfinite(cell).all():
        raise GeometryError(f"{formula}: the cell is not finite (NaN or inf)")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return cell
    periodic = cell[pbc]
    lengths = np.linalg.norm(periodic, axis=1)
    if (lengths == 0).any():
        axis = "abc"[int(np.flatnonzero(pbc)[np.argmin(lengths)])]
        raise GeometryError(f"{formula}: periodic along {axis} but its cell vector is zero")
    # independent periodic vectors: the singular values of the unit vectors stay away from 0
    singular = np.linalg.svd(periodic / lengths[:, None], compute_uv=False)
    if singular.min() < 1e-6:
        lattice = ", ".join(f"{v:.4g}" for v in atoms.cell.cellpar())
        raise GeometryError(
            f"{formula}: the periodic cell vectors are linearly dependent (cell lengths and angles "
            f"{lattice}; volume {abs(np.linalg.det(cell)):.3g} Å^3)"
        )
    return _complete_cell(cell, pbc, positions, cutoff)


def _complete_cell(
    cell: np.ndarray, pbc: np.ndarray, positions: np.ndarray, cutoff: float
) -> np.ndarray:
    """Give every non-periodic direction with a zero vector one that spans the structure.

    Image shifts along such directions are always zero, so the vector only has to make the box
    non-singular and large enough for the cell-list search.
    """
    cell = cell.copy()
    for axis in np.flatnonzero(~pbc):
        if np.linalg.norm(cell[axis]) > 0:
            continue
        others = cell[[a for a in range(3) if a != axis]]
        normal = np.cross(others[0], others[1])
        if np.linalg.norm(normal) == 0:
            normal = np.eye(3)[axis]
        extent = np.ptp(positions @ (normal / np.linalg.norm(normal)))
        cell[axis] = normal / np.linalg.norm(normal) * (extent + 2 * cutoff + 1.0)
    return cell


def local_coordinates(
    atoms: Atoms, i: np.ndarray, j: np.ndarray, shifts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The same structure with its positions next to the origin: ``(positions [N, 3], shifts
    [E, 3])`` for the pairs ``(i, j, shifts)`` of :func:`neighbour_list`.

    Along periodic directions an atom more than half a cell outside the cell is moved into it by a
    lattice vector (its pairs' image shifts change to match; atoms near the faces stay where they
    are, so that a crystal is not cut open at its faces); along the others the structure is
    centred. Every pair vector, hence the energy, forces and stress, stays the same, but float32
    edge vectors no longer lose precision when a structure sits far from the origin (1e6 Å away,
    float32 positions are only good to 0.06 Å). Computed in float64.
    """
    positions = np.asarray(atoms.positions, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if len(atoms) == 0:
        return positions, shifts
    if not pbc.any():
        return positions - positions.mean(axis=0), shifts
    cell = np.array(atoms.cell.array, dtype=np.float64)
    box = _complete_cell(cell, pbc, positions, 0.0)
    fractional = positions @ np.linalg.inv(box)
    images = np.where(pbc & ((fractional < -0.5) | (fractional >= 1.5)), np.floor(fractional), 0.0)
    centre = fractional[:, ~pbc].mean(axis=0) @ box[~pbc] if not pbc.all() else 0.0
    local = positions - images @ cell - centre
    images = images.astype(np.int64)
    return local, shifts + images[j] - images[i]


def too_close(
    numbers: np.ndarray, i: np.ndarray, j: np.ndarray, distances: np.ndarray, min_distance: float
) -> AtomsTooCloseError | None:
    """The error naming the closest pair if it is nearer than ``min_distance`` Å, else None
    (``numbers [N]``: atomic numbers; ``distances [E]`` of the pairs ``(i, j)``; 0: no check)."""
    if min_distance <= 0 or not len(distances) or distances.min() >= min_distance:
        return None
    k = int(np.argmin(distances))
    a, b = sorted((int(i[k]), int(j[k])))
    return AtomsTooCloseError(
        f"atoms {a} ({chemical_symbols[numbers[a]]}) and {b} ({chemical_symbols[numbers[b]]}) are "
        f"{distances[k]:.3f} Å apart, closer than the minimum distance {min_distance:g} Å"
    )


def edge_lengths(graph: Data) -> np.ndarray:
    """``[E]`` lengths (Å, float64) of the edges of one graph of :func:`atoms_to_graph`."""
    j, i = graph.edge_index.numpy()
    pos = graph.pos.numpy().astype(np.float64)
    vectors = pos[j] - pos[i] + graph.shifts.numpy() @ graph.cell.numpy()[0].astype(np.float64)
    return np.linalg.norm(vectors, axis=1)


def charge_spin(atoms: Atoms) -> tuple[float, float]:
    """Total charge (e) and spin multiplicity (``2S + 1``) of ``atoms``, from ``atoms.info``
    (defaults 0 and 1)."""
    return float(atoms.info.get(keys.CHARGE, 0.0)), float(atoms.info.get(keys.SPIN, 1.0))


def pairs_to_graph(
    atoms: Atoms,
    i: np.ndarray,
    j: np.ndarray,
    shifts: np.ndarray,
    dtype: torch.dtype | None = None,
    min_distance: float = 0.0,
) -> Data:
    """One structure as a ``torch_geometric`` ``Data`` with the unlabelled fields of
    :mod:`mlip.keys`, from its pairs ``(i [E], j [E], shifts [E, 3])`` as :func:`neighbour_list`
    gives them (found here or earlier, e.g. by a Verlet list): no neighbour search.

    Positions and shifts are those of :func:`local_coordinates` (computed in float64), then cast to
    ``dtype`` (default: torch's default) with the cell, charge and spin. Raises
    :class:`AtomsTooCloseError` for two atoms closer than ``min_distance`` Å (0: no check).
    """
    dtype = dtype or torch.get_default_dtype()
    positions, shifts = local_coordinates(atoms, i, j, shifts)
    if min_distance > 0:
        distances = np.linalg.norm(positions[j] - positions[i] + shifts @ atoms.cell.array, axis=1)
        error = too_close(atoms.numbers, i, j, distances, min_distance)
        if error is not None:
            raise error
    charge, spin = charge_spin(atoms)
    data = Data(
        pos=torch.tensor(positions, dtype=dtype),
        z=torch.tensor(atoms.numbers, dtype=torch.long),
        cell=torch.tensor(atoms.cell.array, dtype=dtype).unsqueeze(0),
        pbc=torch.tensor(atoms.pbc, dtype=torch.bool).unsqueeze(0),
        edge_index=torch.stack([torch.from_numpy(j), torch.from_numpy(i)]),
        shifts=torch.from_numpy(shifts).to(dtype),
        num_nodes=len(atoms),
    )
    data[keys.CHARGE] = torch.tensor([charge], dtype=dtype)
    data[keys.SPIN] = torch.tensor([spin], dtype=dtype)
    return data


def atoms_to_graph(
    atoms: Atoms,
    cutoff: float,
    dtype: torch.dtype | None = None,
    labels: bool = False,
    min_distance: float = 0.0,
) -> Data:
    """One structure as a ``torch_geometric`` ``Data`` with the fields of :mod:`mlip.keys`: its
    :func:`neighbour_list` within ``cutoff`` Å through :func:`pairs_to_graph`.

    ``dtype`` (default: torch's default) is used for positions, cell and labels. Positions are
    those of :func:`local_coordinates` (periodic structures wrapped into their cell, others
    centred). With ``labels=True`` energy (eV), forces (eV/Å), stress (eV/Å³), charge and spin are
    read from ``atoms.calc.results`` and ``atoms.info``; absent ones are zero-filled and flagged by
    ``has_energy`` / ``has_forces`` / ``has_stress`` ([1] bool). Raises :class:`GeometryError` for
    a structure no graph can be built from and :class:`AtomsTooCloseError` for two atoms closer
    than ``min_distance`` Å (0: no check).
    """
    dtype = dtype or torch.get_default_dtype()
    i, j, shifts = neighbour_list(atoms, cutoff)
    data = pairs_to_graph(atoms, i, j, shifts, dtype, min_distance)
    if labels:
        _attach_labels(data, atoms, dtype)
    return data


def _attach_labels(data: Data, atoms: Atoms, dtype: torch.dtype) -> None:
    results = atoms.calc.results if atoms.calc is not None else {}
    n = len(atoms)
    energy = results.get("energy")
    forces = results.get("forces")
    stress = results.get("stress")
    data[keys.HAS_ENERGY] = torch.tensor([energy is not None])
    data[keys.HAS_FORCES] = torch.tensor([forces is not None])
    data[keys.HAS_STRESS] = torch.tensor([stress is not None])
    data[keys.ENERGY] = torch.tensor([0.0 if energy is None else float(energy)], dtype=dtype)
    data[keys.FORCES] = (
        torch.zeros(n, 3, dtype=dtype) if forces is None else torch.tensor(forces, dtype=dtype)
    )
    if stress is None:
        stress3 = np.zeros((3, 3))
    else:
        stress = np.asarray(stress, dtype=np.float64)
        stress3 = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress
    data[keys.STRESS] = torch.tensor(stress3, dtype=dtype).reshape(1, 3, 3)
    data[keys.WEIGHT] = torch.tensor([float(atoms.info.get(keys.WEIGHT, 1.0))], dtype=dtype)


def atoms_to_batch(
    atoms_list: Sequence[Atoms] | Atoms,
    cutoff: float,
    dtype: torch.dtype | None = None,
    labels: bool = False,
    min_distance: float = 0.0,
) -> Batch:
    """Several structures as one ``torch_geometric`` ``Batch`` (see :func:`atoms_to_graph`)."""
    if isinstance(atoms_list, Atoms):
        atoms_list = [atoms_list]
    graphs = [atoms_to_graph(a, cutoff, dtype, labels, min_distance) for a in atoms_list]
    return Batch.from_data_list(graphs)
