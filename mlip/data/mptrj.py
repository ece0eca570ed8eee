"""MPtrj JSON (``{mp_id: {frame_id: frame}}``, CHGNet's layout) -> ``ase.Atoms``: the chosen
energy (eV), ``force`` and ``stress`` (kBar, VASP sign) in ASE units on a ``SinglePointCalculator``,
``magmom`` in ``arrays``, ids and scalars in ``info``. The file is parsed at once (``json.load``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.errors import DataError, UnreadableRest

ENERGY_LABELS = ("uncorrected_total_energy", "corrected_total_energy", "energy_per_atom")
"""Energy labels a frame may be read with (``energy_per_atom`` times the atom count); plain
``"energy"`` means :data:`DEFAULT_ENERGY`."""

DEFAULT_ENERGY = "uncorrected_total_energy"
"""Raw VASP, consistent with the forces."""

KBAR_VASP_TO_EV_A3 = -0.1 * units.GPa
"""From a VASP stress in kBar (positive = compressive) to ASE's eV/Å³ (positive = tensile)."""

_SCALAR = str | int | float | bool


def is_mptrj(path: str | Path) -> bool:
    """Whether a JSON file looks like MPtrj, not an ASE JSON database: its first MiB holds a
    ``"structure"`` and no ``"numbers"`` (which every ASE row has)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    return b'"structure"' in head and b'"numbers"' not in head


def iter_mptrj(
    path: str | Path, index: slice = slice(None), energy: str = "energy"
) -> Iterator[tuple[str, Atoms | DataError]]:
    """``("file, frame k", atoms)`` for the frames ``index`` selects (numbered over all groups, in
    file order); a bad frame comes as a :class:`DataError`, an unreadable file as one
    :class:`UnreadableRest`. ``energy``: one of :data:`ENERGY_LABELS`, or ``"energy"``."""
    label = DEFAULT_ENERGY if energy == "energy" else energy
    if label not in ENERGY_LABELS:
        choices = ", ".join(("energy",) + ENERGY_LABELS)
        raise DataError(f"MPtrj energy label must be one of {choices}; got {energy!r}")
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError) as err:
        yield str(path), UnreadableRest(f"{path}: cannot parse as JSON: {err}")
        return
    if not isinstance(content, dict) or not all(isinstance(v, dict) for v in content.values()):
        expected = "{mp_id: {frame_id: frame}} expected"
        yield str(path), UnreadableRest(f"{path}: not MPtrj JSON ({expected})")
        return
    entries = [(mp_id, frame_id) for mp_id, group in content.items() for frame_id in group]
    for number in range(len(entries))[index]:
        mp_id, frame_id = entries[number]
        where = f"{path}, frame {number}"
        try:
            atoms = frame_to_atoms(content[mp_id][frame_id], label)
        except (ValueError, KeyError, TypeError) as err:
            yield where, DataError(f"{where} ({mp_id} {frame_id}): {err}")
            continue
        atoms.info.update(mp_id=mp_id, frame_id=frame_id)
        yield where, atoms


def frame_to_atoms(frame: dict[str, Any], energy: str = DEFAULT_ENERGY) -> Atoms:
    """One MPtrj frame as ``ase.Atoms`` with labels in ASE units (absent or null ones left out)."""
    try:
        from pymatgen.core import Structure
        from pymatgen.io.ase import AseAtomsAdaptor
    except ImportError as err:
        raise ValueError("reading MPtrj JSON needs pymatgen (pip install pymatgen)") from err
    if not isinstance(frame, dict) or "structure" not in frame:
        raise ValueError("frame has no 'structure'")
    try:
        structure = Structure.from_dict(frame["structure"])
    except Exception as err:  # pymatgen raises many kinds on a malformed dict
        raise ValueError(f"cannot build the pymatgen structure: {err!r}") from err
    atoms = AseAtomsAdaptor.get_atoms(structure, msonable=False)
    n = len(atoms)
    per_atom = energy == "energy_per_atom"
    scale = {energy: n if per_atom else 1, "force": 1, "stress": KBAR_VASP_TO_EV_A3}
    results = {  # shapes and values are checked where the frame is labelled
        name: scale[key] * np.asarray(frame[key], dtype=np.float64)
        for key, name in ((energy, "energy"), ("force", "forces"), ("stress", "stress"))
        if frame.get(key) is not None
    }
    if frame.get("magmom") is not None:  # ASE checks its length
        atoms.new_array("magmom", frame["magmom"], np.float64)
    for key, item in frame.items():
        if key not in ("structure", "force", "stress", "magmom") and isinstance(item, _SCALAR):
            atoms.info[key] = item
    atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    return atoms
