"""Field names of the graph batch, with shapes and units (N atoms, E edges, B structures).

Conventions: energies in eV, lengths in Å, forces in eV/Å, stress in eV/Å³ with ASE's sign
(positive = tensile), cell rows are lattice vectors, edge ``(j -> i)`` has vector
``r_ij = pos[j] - pos[i] + shifts @ cell``.
"""

POS = "pos"  # [N, 3] Å
Z = "z"  # [N] long, atomic numbers
BATCH = "batch"  # [N] long, structure index of every atom
CELL = "cell"  # [B, 3, 3] Å, rows are lattice vectors; zeros when non-periodic
PBC = "pbc"  # [B, 3] bool
EDGE_INDEX = "edge_index"  # [2, E] long; row 0 = neighbour j (source), row 1 = centre i (target)
SHIFTS = "shifts"  # [E, 3] integer-valued image offsets (stored in the position dtype)

ENERGY = "energy"  # [B] eV
FORCES = "forces"  # [N, 3] eV/Å
STRESS = "stress"  # [B, 3, 3] eV/Å³
NODE_ENERGY = "node_energy"  # [N] eV
CHARGE = "charge"  # [B] total charge, e
SPIN = "spin"  # [B] spin multiplicity 2S+1
WEIGHT = "weight"  # [B] per-structure loss weight

LABELS = (ENERGY, FORCES, STRESS)
