"""Atoms -> graph: the only place that builds neighbour lists (vesin, periodic images, mixed pbc),
and what makes a graph unfit for training (:func:`check_graph`)."""

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
"""Å: the smallest interatomic distance the commands accept by default (closer: an input error)."""
MAX_Z = 118


def neighbour_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list within ``cutoff`` Å, periodic images included: centres ``i [E]``,
    neighbours ``j [E]`` and integer image offsets ``shifts [E, 3]``, ``r_ij = pos[j] - pos[i] +
    shifts @ cell``, each pair in both directions. Non-periodic directions need no cell vector.
    Raises :class:`GeometryError` for non-finite positions or cell, or a cell without volume."""
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
    """The cell of the neighbour search (:func:`_complete_cell`), positions and cell checked to
    be finite and the periodic vectors independent."""
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
    """``cell`` with a vector spanning the structure in every non-periodic direction that has
    none (its image shifts are zero: it only makes the cell-list box non-singular)."""
    cell = cell.copy()
    for axis in np.flatnonzero(~pbc):
        if np.linalg.norm(cell[axis]) > 0:
            continue
        normal = np.cross(*np.delete(cell, axis, axis=0))  # of the other two vectors
        if np.linalg.norm(normal) == 0:
            normal = np.eye(3)[axis]
        unit = normal / np.linalg.norm(normal)
        cell[axis] = unit * (np.ptp(positions @ unit) + 2 * cutoff + 1.0)
    return cell


def local_coordinates(
    atoms: Atoms, i: np.ndarray, j: np.ndarray, shifts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(positions [N, 3], shifts [E, 3])`` of the same pairs with the structure next to the
    origin (float64): an atom more than half a cell outside the cell moved in by a lattice vector
    (its shifts changed to match), non-periodic directions centred. Pair vectors stay the same,
    but float32 ones keep their precision far from the origin."""
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
    """The error naming the closest of the pairs ``(i, j)`` (``distances [E]`` Å) if it is nearer
    than ``min_distance`` Å (0: no check), else None; ``numbers [N]``: atomic numbers."""
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
    """Total charge (e) and spin multiplicity ``2S + 1`` from ``atoms.info`` (default 0 and 1)."""
    return float(atoms.info.get(keys.CHARGE, 0.0)), float(atoms.info.get(keys.SPIN, 1.0))


def pairs_to_graph(
    atoms: Atoms,
    i: np.ndarray,
    j: np.ndarray,
    shifts: np.ndarray,
    dtype: torch.dtype | None = None,
    min_distance: float = 0.0,
) -> Data:
    """One structure as a ``Data`` with the unlabelled fields of :mod:`mlip.keys`, from pairs
    ``(i [E], j [E], shifts [E, 3])`` as :func:`neighbour_list` gives them (no neighbour search),
    in :func:`local_coordinates`; floats in ``dtype`` (default: torch's). Raises
    :class:`AtomsTooCloseError` for two atoms closer than ``min_distance`` Å (0: no check)."""
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
    """One structure as a ``Data`` with the fields of :mod:`mlip.keys`: :func:`pairs_to_graph`
    of its :func:`neighbour_list` within ``cutoff`` Å. With ``labels``, energy (eV), forces (eV/Å),
    stress (eV/Å³) and the loss weight from ``atoms.calc.results`` and ``atoms.info``; absent ones
    zero-filled and flagged by ``has_energy`` / ``has_forces`` / ``has_stress`` ([1] bool)."""
    dtype = dtype or torch.get_default_dtype()
    data = pairs_to_graph(atoms, *neighbour_list(atoms, cutoff), dtype, min_distance)
    if not labels:
        return data
    results = atoms.calc.results if atoms.calc is not None else {}
    energy, forces, stress = (results.get(name) for name in keys.LABELS)
    for name in keys.LABELS:
        data[keys.HAS[name]] = torch.tensor([results.get(name) is not None])
    data[keys.ENERGY] = torch.tensor([0.0 if energy is None else float(energy)], dtype=dtype)
    forces = np.zeros((len(atoms), 3)) if forces is None else forces
    data[keys.FORCES] = torch.tensor(np.asarray(forces), dtype=dtype)
    stress = np.zeros((3, 3)) if stress is None else np.asarray(stress, dtype=np.float64)
    stress = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress
    data[keys.STRESS] = torch.tensor(stress, dtype=dtype).reshape(1, 3, 3)
    data[keys.WEIGHT] = torch.tensor([float(atoms.info.get(keys.WEIGHT, 1.0))], dtype=dtype)
    return data


def atoms_to_batch(
    atoms_list: Sequence[Atoms] | Atoms,
    cutoff: float,
    dtype: torch.dtype | None = None,
    labels: bool = False,
) -> Batch:
    """Several structures as one ``Batch`` (see :func:`atoms_to_graph`)."""
    if isinstance(atoms_list, Atoms):
        atoms_list = [atoms_list]
    return Batch.from_data_list([atoms_to_graph(a, cutoff, dtype, labels) for a in atoms_list])


def check_graph(
    graph: Data,
    allowed: Sequence[int] | None = None,
    required: Sequence[str] = (),
    species: Sequence[int] | None = None,
    min_distance: float = 0.0,
    max_force: float | None = None,
) -> str | None:
    """What makes ``graph`` unfit for training, or None: no atoms, a NaN, atoms closer than
    ``min_distance`` Å, a ``required`` label missing, a force component above ``max_force`` eV/Å
    (an absurd label), or an element outside ``allowed`` (atomic numbers; None: any real element)."""
    if graph.num_nodes == 0:
        return "frame has no atoms"
    if not (torch.isfinite(graph.pos).all() and torch.isfinite(graph.cell).all()):
        return "positions or cell contain NaN or inf"
    if min_distance > 0:
        j, i = graph.edge_index.numpy()
        error = too_close(graph.z.numpy(), i, j, edge_lengths(graph), min_distance)
        if error is not None:
            return f"{error} (data.min_distance)"
    for name in keys.LABELS:
        present = bool(graph[keys.HAS[name]])
        if name in required and not present:
            return f"{name} missing"
        if present and not torch.isfinite(graph[name]).all():
            return f"{name} contains NaN or inf"
    if max_force is not None and bool(graph[keys.HAS["forces"]]) and graph.forces.numel():
        largest = float(graph.forces.abs().max())
        if largest > max_force:
            return f"a force of {largest:.4g} eV/Å, above data.max_force={max_force:g}"
    numbers = graph.z.numpy()
    known = (numbers >= 1) & (numbers <= MAX_Z)
    if allowed is not None:
        known &= np.isin(numbers, list(allowed))
    if known.all():
        return None
    names = ", ".join(sorted({symbol(int(z)) for z in numbers[~known]}))
    if species is None:
        return f"unknown element(s) {names}"
    return f"element(s) {names} not among the species ({', '.join(map(symbol, species))})"


def symbol(z: int) -> str:
    """The chemical symbol of atomic number ``z`` (``"Z=200"`` beyond the table)."""
    return chemical_symbols[z] if 0 <= z <= MAX_Z else f"Z={z}"  # 0 is "X"
