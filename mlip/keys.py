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

HAS_ENERGY = "has_energy"  # [B] bool: the structure has an energy label (else zero-filled)
HAS_FORCES = "has_forces"  # [B] bool
HAS_STRESS = "has_stress"  # [B] bool

LABELS = (ENERGY, FORCES, STRESS)
HAS = {ENERGY: HAS_ENERGY, FORCES: HAS_FORCES, STRESS: HAS_STRESS}
"""The presence flag of each label."""

UNITS = {"length": "Å", ENERGY: "eV", FORCES: "eV/Å", STRESS: "eV/Å³"}
"""Units of positions, labels and predictions (model files record them)."""
ERROR_UNITS = {ENERGY: "meV/atom", FORCES: "meV/Å", STRESS: "meV/Å³"}
"""Units of errors: tables of ``mlip eval`` and, spelt in ASCII (:func:`metric_unit`), metric names."""


def metric_unit(label: str) -> str:
    """:data:`ERROR_UNITS` of ``label`` as metric names spell it: ``meV_per_atom``, ``meV_per_A``."""
    unit = ERROR_UNITS[label].replace("/", "_per_")
    return unit.replace("Å³", "A3").replace("Å", "A")
