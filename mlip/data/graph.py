"""Atoms -> graph: the only place that builds neighbour lists (vesin, periodic images, mixed pbc)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress
from torch_geometric.data import Batch, Data
from vesin import NeighborList

from mlip import keys


def neighbour_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list of ``atoms`` within ``cutoff`` Å, periodic images included.

    Returns ``(i, j, shifts)``: centres ``i [E]``, neighbours ``j [E]`` and integer image offsets
    ``shifts [E, 3]`` with ``r_ij = pos[j] - pos[i] + shifts @ cell``. Each pair appears in both
    directions. Directions without periodicity need no cell vector (molecules may have a zero cell).
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    positions = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    if len(atoms) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros((0, 3), dtype=np.int64)
    cell = np.array(atoms.cell.array, dtype=np.float64)
    if pbc.any():
        if abs(np.linalg.det(cell)) < 1e-9 * max(np.abs(cell).max(), 1.0) ** 3 and pbc.all():
            raise ValueError(
                f"periodic structure {atoms.get_chemical_formula()} has a singular cell"
            )
        cell = _complete_cell(cell, pbc, positions, cutoff)
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = calculator.compute(
        points=positions, box=cell, periodic=pbc.tolist(), quantities="ijS"
    )
    return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)


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


def atoms_to_graph(
    atoms: Atoms,
    cutoff: float,
    dtype: torch.dtype | None = None,
    labels: bool = False,
) -> Data:
    """One structure as a ``torch_geometric`` ``Data`` with the fields of :mod:`mlip.keys`.

    ``cutoff`` is in Å; ``dtype`` (default: torch's default) is used for positions, cell and
    labels. With ``labels=True`` energy (eV), forces (eV/Å), stress (eV/Å³), charge and spin are
    read from ``atoms.calc.results`` and ``atoms.info``; absent ones are zero-filled and flagged
    by ``has_energy`` / ``has_forces`` / ``has_stress`` ([1] bool).
    """
    dtype = dtype or torch.get_default_dtype()
    i, j, shifts = neighbour_list(atoms, cutoff)
    data = Data(
        pos=torch.tensor(atoms.positions, dtype=dtype),
        z=torch.tensor(atoms.numbers, dtype=torch.long),
        cell=torch.tensor(atoms.cell.array, dtype=dtype).unsqueeze(0),
        pbc=torch.tensor(atoms.pbc, dtype=torch.bool).unsqueeze(0),
        edge_index=torch.stack([torch.from_numpy(j), torch.from_numpy(i)]),
        shifts=torch.from_numpy(shifts).to(dtype),
        num_nodes=len(atoms),
    )
    data[keys.CHARGE] = torch.tensor([float(atoms.info.get(keys.CHARGE, 0.0))], dtype=dtype)
    data[keys.SPIN] = torch.tensor([float(atoms.info.get(keys.SPIN, 1.0))], dtype=dtype)
    if labels:
        _attach_labels(data, atoms, dtype)
    return data


def _attach_labels(data: Data, atoms: Atoms, dtype: torch.dtype) -> None:
    results = atoms.calc.results if atoms.calc is not None else {}
    n = len(atoms)
    energy = results.get("energy")
    forces = results.get("forces")
    stress = results.get("stress")
    data.has_energy = torch.tensor([energy is not None])
    data.has_forces = torch.tensor([forces is not None])
    data.has_stress = torch.tensor([stress is not None])
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
) -> Batch:
    """Several structures as one ``torch_geometric`` ``Batch`` (see :func:`atoms_to_graph`)."""
    if isinstance(atoms_list, Atoms):
        atoms_list = [atoms_list]
    graphs = [atoms_to_graph(a, cutoff, dtype=dtype, labels=labels) for a in atoms_list]
    return Batch.from_data_list(graphs)
