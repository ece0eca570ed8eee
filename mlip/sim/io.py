"""Structure files -> ``ase.Atoms`` for relaxation and MD, with one-line errors.

Any format ASE reads is accepted; a CIF or POSCAR/CONTCAR that ASE cannot read is given to pymatgen.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import ase.io
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.calculator import AtomsTooCloseError, NonFiniteOutputError
from mlip.data.readers import DataError
from mlip.export import ModelFileError
from mlip.nn.potential import UnknownElementError


class StructureFileError(ValueError):
    """A structure file that is missing, empty, unreadable or holds no atoms."""


INPUT_ERRORS = (
    StructureFileError,
    DataError,
    ModelFileError,
    UnknownElementError,
    AtomsTooCloseError,
    NonFiniteOutputError,
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
)
"""Errors caused by what the user gave (files, elements, geometry): the commands report them in one
line, without a traceback."""

_PYMATGEN_FORMATS = ("cif", "vasp")


def read_structure(path: str | os.PathLike, index: int | str = -1) -> Atoms:
    """The structure in ``path`` (the last frame of a multi-frame file, unless ``index`` says).

    Raises :class:`StructureFileError` naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise StructureFileError(f"{path}: no such file")
    if path.is_dir():
        raise StructureFileError(f"{path}: is a directory, not a structure file")
    if path.stat().st_size == 0:
        raise StructureFileError(f"{path}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a file that reads needs no parser chatter
            atoms = ase.io.read(path, index=index)
    except Exception as err:  # ASE raises many types for a file it cannot parse
        atoms = _read_with_pymatgen(path, err)
    if isinstance(atoms, list):
        if not atoms:
            raise StructureFileError(f"{path}: holds no structures")
        atoms = atoms[-1]
    if len(atoms) == 0:
        raise StructureFileError(f"{path}: holds no atoms")
    if atoms.pbc.any() and atoms.cell.rank < int(atoms.pbc.sum()):
        raise StructureFileError(f"{path}: periodic structure with a degenerate cell")
    # the CIF reader's bookkeeping would otherwise be copied into every output frame
    atoms.arrays.pop("spacegroup_kinds", None)
    for key in ("spacegroup", "unit_cell", "occupancy"):
        atoms.info.pop(key, None)
    return atoms


def structure_format(path: str | os.PathLike) -> str | None:
    """ASE's name for the format of ``path`` (e.g. ``"cif"``, ``"vasp"``), or None if unknown."""
    try:
        return ase.io.formats.filetype(str(path), read=Path(path).exists())
    except Exception:
        return None


def _read_with_pymatgen(path: Path, ase_error: Exception) -> Atoms:
    fmt = structure_format(path)
    name = path.name.upper()
    ase_says = "no structure found" if isinstance(ase_error, StopIteration) else one_line(ase_error)
    if fmt in _PYMATGEN_FORMATS or "POSCAR" in name or "CONTCAR" in name:
        from pymatgen.core import Structure
        from pymatgen.io.ase import AseAtomsAdaptor

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return AseAtomsAdaptor.get_atoms(Structure.from_file(path))
            except Exception as err:
                details = [one_line(err)] + [one_line(w.message, 120) for w in caught[:1]]
                raise StructureFileError(
                    f"{path}: cannot parse as {(fmt or 'a structure').upper()} "
                    f"(ASE: {ase_says}; pymatgen: {' '.join(details)})"
                ) from None
    raise StructureFileError(f"{path}: cannot parse: {ase_says}") from None


def one_line(err: BaseException, limit: int = 300) -> str:
    """``err`` as one line for the terminal: its first line, at most ``limit`` characters."""
    lines = str(err).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def snapshot(atoms: Atoms, drop: Sequence[type] = ()) -> Atoms:
    """A copy of ``atoms`` whose ``SinglePointCalculator`` holds the current energy, forces and
    stress (what extxyz writes); constraints of the types in ``drop`` are left out."""
    copy = atoms.copy()
    copy.set_constraint([c for c in atoms.constraints if not isinstance(c, tuple(drop))])
    kept = ("energy", "free_energy", "forces", "stress")
    results = {k: v for k, v in (atoms.calc.results if atoms.calc else {}).items() if k in kept}
    copy.calc = SinglePointCalculator(copy, **results)
    return copy
