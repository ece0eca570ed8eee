"""MPtrj JSON (``{mp_id: {frame_id: {...}}}``, CHGNet's ``StructureJsonData`` layout) -> ``ase.Atoms``.

Per frame: ``structure`` (pymatgen ``Structure.as_dict()``), energies ``uncorrected_total_energy``
(eV, raw VASP), ``corrected_total_energy`` (eV, MP2020-corrected), ``energy_per_atom`` (eV/atom,
corrected), ``force`` ([N, 3] eV/Å), ``stress`` ([3, 3] kBar with VASP's sign, positive =
compressive), ``magmom`` ([N] μB or null) and scalars such as ``bandgap`` or ``ef_per_atom``.
Frames come back with the chosen energy (a total, eV), forces and stress (Voigt-6 eV/Å³, ASE
sign) on a ``SinglePointCalculator``, ``magmom`` in ``atoms.arrays``, and ``mp_id``, ``frame_id``
and the other scalars (original names and units) in ``atoms.info``.

:func:`mlip.data.readers.iter_frames` sends ``.json`` files that look like MPtrj here; its
``LabelKeys.energy`` picks the energy label (see :data:`ENERGY_LABELS`). The whole file is parsed
at once (``json.load``), so memory grows with the file: convert a full MPtrj once to ASE-LMDB
(``mlip data convert``) and train from that.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from mlip.errors import DataError, UnreadableRest

ENERGY_LABELS = ("uncorrected_total_energy", "corrected_total_energy", "energy_per_atom")
"""Energy labels a frame may be read with; ``energy_per_atom`` is multiplied by the atom count."""

DEFAULT_ENERGY = "uncorrected_total_energy"
"""The label used when the caller asks for plain ``"energy"``: raw VASP, consistent with forces."""

KBAR_VASP_TO_EV_A3 = -0.1 * units.GPa
"""Factor from a VASP stress in kBar (positive = compressive) to ASE's eV/Å³ (positive = tensile)."""

_SNIFF_BYTES = 1 << 20


def is_mptrj(path: str | Path) -> bool:
    """Whether the JSON file ``path`` looks like MPtrj rather than an ASE JSON database.

    Looks at the first MiB only: MPtrj frames hold a ``"structure"`` dict and no ``"numbers"``
    array, which every ASE database row has.
    """
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    return b'"structure"' in head and b'"numbers"' not in head


def iter_mptrj(
    path: str | Path, index: slice = slice(None), energy: str = "energy"
) -> Iterator[tuple[str, Atoms | DataError]]:
    """Frames of an MPtrj JSON file as ``("file, frame k", atoms)``, in file order; a bad frame
    comes as a :class:`DataError` in place of its atoms, an unreadable file as one
    :class:`UnreadableRest`.

    ``index`` selects by frame number (counting over all ``mp_id`` groups); ``energy`` is one of
    :data:`ENERGY_LABELS`, or ``"energy"`` for :data:`DEFAULT_ENERGY`.
    """
    return _frames(Path(path), index, _energy_label(energy))


def _frames(path: Path, index: slice, label: str) -> Iterator[tuple[str, Atoms | DataError]]:
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
        atoms.info["mp_id"] = mp_id
        atoms.info["frame_id"] = frame_id
        yield where, atoms


def frame_to_atoms(frame: dict[str, Any], energy: str = DEFAULT_ENERGY) -> Atoms:
    """One MPtrj frame dict as ``ase.Atoms`` with labels in ASE units (see the module docstring).

    Labels that are absent or ``null`` are left out; checking them is the reader's job.
    """
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
    results: dict[str, Any] = {}
    value = frame.get(energy)
    if value is not None:
        results["energy"] = float(value) * (n if energy == "energy_per_atom" else 1)
    if frame.get("force") is not None:
        results["forces"] = np.asarray(frame["force"], dtype=np.float64)
    if frame.get("stress") is not None:
        stress = np.asarray(frame["stress"], dtype=np.float64)
        if stress.shape != (3, 3):
            raise ValueError(f"stress has shape {stress.shape}, expected (3, 3)")
        results["stress"] = full_3x3_to_voigt_6_stress(KBAR_VASP_TO_EV_A3 * stress)
    if frame.get("magmom") is not None:
        magmom = np.asarray(frame["magmom"], dtype=np.float64)
        if magmom.shape != (n,):
            raise ValueError(f"magmom has shape {magmom.shape}, expected ({n},)")
        atoms.arrays["magmom"] = magmom
    for key, item in frame.items():
        if key not in ("structure", "force", "stress", "magmom") and _is_scalar(item):
            atoms.info[key] = item
    atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    return atoms


def _energy_label(energy: str) -> str:
    if energy == "energy":
        return DEFAULT_ENERGY
    if energy not in ENERGY_LABELS:
        choices = ", ".join(("energy",) + ENERGY_LABELS)
        raise DataError(f"MPtrj energy label must be one of {choices}; got {energy!r}")
    return energy


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)
