"""Data: readers (files -> ase.Atoms) and graphs (ase.Atoms -> torch_geometric batches)."""

from mlip.data.graph import atoms_to_batch, atoms_to_graph, neighbour_list

__all__ = ["atoms_to_batch", "atoms_to_graph", "neighbour_list"]
