"""Structure files -> ``ase.Atoms`` for relaxation and MD, with one-line errors.

Any format ASE reads is accepted; a CIF or POSCAR/CONTCAR that ASE cannot read is given to pymatgen.
A CIF must describe an ordered structure: a partly occupied site, or two atom sites at one
position, is refused rather than rounded or merged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io.cif import CIFBlock, parse_cif
from ase.io.formats import string2index

from mlip.errors import StructureFileError, one_line


def is_bulk(atoms: Atoms) -> bool:
    """Whether ``atoms`` is periodic in all three directions with a cell of non-zero volume."""
    return bool(atoms.pbc.all() and atoms.cell.rank == 3)


_PYMATGEN_FORMATS = ("cif", "vasp")

_FULL_OCCUPANCY = 0.01
"""A CIF site is fully occupied when its occupancy is within this of 1."""
_SAME_SITE = 1e-3
"""Two CIF sites closer than this in every fractional coordinate are one site (as ASE merges)."""
_ORDER_IT = (
    "mlip needs an ordered structure: make one first, e.g. with pymatgen's "
    "OrderDisorderedStructureTransformation or a supercell tool such as `supercell`"
)


def read_structure(path: str | os.PathLike, index: int | str = -1) -> Atoms:
    """The structure in ``path`` (the last frame of a multi-frame file, unless ``index`` says).

    Raises :class:`StructureFileError` naming the file and the problem.
    """
    return _read(Path(path), index)[-1]


def read_frames(path: str | os.PathLike) -> list[Atoms]:
    """Every structure (frame) in ``path``, in file order.

    Raises :class:`StructureFileError` naming the file (and the frame) and the problem.
    """
    return _read(Path(path), ":")


def _read(path: Path, index: int | str) -> list[Atoms]:
    """The frames of ``path`` that ``index`` selects, each checked (see :func:`read_structure`)."""
    if not path.exists():
        raise StructureFileError(f"{path}: no such file")
    if path.is_dir():
        raise StructureFileError(f"{path}: is a directory, not a structure file")
    if path.stat().st_size == 0:
        raise StructureFileError(f"{path}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a file that reads needs no parser chatter
            frames = ase.io.read(path, index=index)
    except Exception as err:  # ASE raises many types for a file it cannot parse
        frames = _read_with_pymatgen(path, err)
    else:
        if structure_format(path) == "cif":
            _check_cif_sites(path, index)
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise StructureFileError(f"{path}: holds no structures")
    for k, atoms in enumerate(frames):
        where = f"{path} (frame {k})" if len(frames) > 1 else str(path)
        if len(atoms) == 0:
            raise StructureFileError(f"{where}: holds no atoms")
        if atoms.pbc.any() and atoms.cell.rank < int(atoms.pbc.sum()):
            raise StructureFileError(f"{where}: periodic structure with a degenerate cell")
        # the CIF reader's bookkeeping would otherwise be copied into every output frame
        atoms.arrays.pop("spacegroup_kinds", None)
        for key in ("spacegroup", "unit_cell", "occupancy"):
            atoms.info.pop(key, None)
    return frames


def structure_format(path: str | os.PathLike) -> str | None:
    """ASE's name for the format of ``path`` (e.g. ``"cif"``, ``"vasp"``), or None if unknown."""
    try:
        return ase.io.formats.filetype(str(path), read=Path(path).exists())
    except Exception:
        return None


def _check_cif_sites(path: Path, index: int | str) -> None:
    """Refuse the CIF blocks ``index`` selects where a site is partly occupied or two
    ``_atom_site`` rows coincide (see :func:`_check_cif_block`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blocks = [block for block in parse_cif(str(path)) if block.has_structure()]
    chosen = blocks[string2index(index) if isinstance(index, str) else index]
    for block in chosen if isinstance(chosen, list) else [chosen]:
        _check_cif_block(path, block)


def _check_cif_block(path: Path, block: CIFBlock) -> None:
    """Refuse a CIF block where a site is partly occupied or two ``_atom_site`` rows coincide.

    Rows coincide when one lies on a symmetry image of the other (ASE's reader keeps only the
    first). That is refused when they are at the same position or hold different elements; rows
    of one element related by a symmetry operation are a redundant listing (e.g. a full cell
    written with its space group) and are merged as ASE does.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sites = block.get_unsymmetrized_structure()
        symbols = sites.get_chemical_symbols()
        labels = [str(label) for label in block.get("_atom_site_label", symbols)]
        occupancies = block.get("_atom_site_occupancy", [1.0] * len(sites))
        coincident = _coincident_sites(block, sites) if sites.cell.rank == 3 else {}
    for i, occupancy in enumerate(occupancies):
        if isinstance(occupancy, int | float) and abs(occupancy - 1) > _FULL_OCCUPANCY:
            sharing = [i] + [j for pair in coincident if i in pair for j in pair if j != i]
            if len(sharing) > 1:
                names = " and ".join(
                    f"{labels[k]} ({symbols[k]}, occupancy {occupancies[k]:g})" for k in sharing
                )
                raise StructureFileError(f"{path}: sites {names} share one position; {_ORDER_IT}")
            raise StructureFileError(
                f"{path}: site {labels[i]} ({symbols[i]}) has occupancy {occupancy:g}; {_ORDER_IT}"
            )
    for (i, j), (same_place, distance) in coincident.items():
        if same_place or symbols[i] != symbols[j]:
            how = "at the same position" if same_place else "on symmetry-equivalent positions"
            raise StructureFileError(
                f"{path}: atom sites {labels[i]} ({symbols[i]}) and {labels[j]} ({symbols[j]}) "
                f"are {how} ({distance:.3g} Å apart): remove one of them"
            )


def _coincident_sites(block: CIFBlock, sites: Atoms) -> dict[tuple[int, int], tuple[bool, float]]:
    """``(i, j) -> (same position, distance in Å)`` for the rows ``i < j`` of a CIF block where
    row ``j`` lies on a symmetry image of row ``i`` (a lattice translation included)."""
    operations = block.get_spacegroup(subtrans_included=True).get_symop()
    rotations = np.array([rotation for rotation, _ in operations])  # [ops, 3, 3]
    translations = np.array([translation for _, translation in operations])  # [ops, 3]
    scaled = sites.cell.scaled_positions(sites.positions)
    found = {}
    for i, position in enumerate(scaled[:-1]):
        later = scaled[i + 1 :]
        offset = later[None] - (rotations @ position + translations)[:, None]  # [ops, later, 3]
        offset -= np.rint(offset)
        close = (np.abs(offset) < _SAME_SITE).all(axis=2)
        direct = later - position - np.rint(later - position)
        for k in np.flatnonzero(close.any(axis=0)):
            op = int(np.flatnonzero(close[:, k])[0])
            distance = float(np.linalg.norm(offset[op, k] @ sites.cell.array))
            found[(i, i + 1 + int(k))] = (bool((np.abs(direct[k]) < _SAME_SITE).all()), distance)
    return found


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
                structure = Structure.from_file(path)
            except Exception as err:
                details = [one_line(err)] + [one_line(w.message, 120) for w in caught[:1]]
                raise StructureFileError(
                    f"{path}: cannot parse as {(fmt or 'a structure').upper()} "
                    f"(ASE: {ase_says}; pymatgen: {' '.join(details)})"
                ) from None
        for site in structure:  # pymatgen keeps partial occupancies: refuse them
            if not site.is_ordered:
                species = ", ".join(f"{el} {occ:g}" for el, occ in site.species.items())
                raise StructureFileError(
                    f"{path}: site {site.label} is partly occupied ({species}); {_ORDER_IT}"
                )
        return AseAtomsAdaptor.get_atoms(structure)
    raise StructureFileError(f"{path}: cannot parse: {ase_says}") from None


def snapshot(atoms: Atoms, drop: Sequence[type] = ()) -> Atoms:
    """A copy of ``atoms`` whose ``SinglePointCalculator`` holds the current energy, forces and
    stress (what extxyz writes); constraints of the types in ``drop`` are left out."""
    copy = atoms.copy()
    copy.set_constraint([c for c in atoms.constraints if not isinstance(c, tuple(drop))])
    kept = ("energy", "free_energy", "forces", "stress")
    results = {k: v for k, v in (atoms.calc.results if atoms.calc else {}).items() if k in kept}
    copy.calc = SinglePointCalculator(copy, **results)
    return copy
