"""Data files -> labelled ``ase.Atoms``: the one entry point for every format.

The format follows the path: ``.db`` is an ASE (SQLite) database, ``.aselmdb`` an ASE-LMDB database
(fairchem's OMat24/OMol25 format), a directory means all its ``*.aselmdb`` files, sorted and
concatenated, and anything else goes to ``ase.io.iread`` (extxyz first). Every frame comes back as a
fresh ``ase.Atoms`` whose ``SinglePointCalculator`` holds the labels found, under canonical names and
units: ``energy`` (eV), ``forces`` ([N, 3] eV/Å) and ``stress`` ([6] eV/Å³, Voigt order xx, yy, zz,
yz, xz, xy, ASE sign: positive = tensile); ``atoms.info["charge"]`` (e) and ``atoms.info["spin"]``
(multiplicity 2S+1) are floats. Anything wrong raises :class:`DataError` naming file, frame and key.
A ``.json`` file in the MPtrj layout is read by :mod:`mlip.data.mptrj` (``keys.energy`` picks its
energy label); other ``.json`` files are ASE JSON databases, read by ``ase.io``.
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import accumulate, count
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db.core import Database
from ase.io.formats import string2index
from ase.stress import full_3x3_to_voigt_6_stress
from ase_db_backends.aselmdb import LMDBDatabase

from mlip.data.mptrj import is_mptrj, iter_mptrj

LABELS = ("energy", "forces", "stress", "charge", "spin")
"""Canonical label names, the values ``required`` may contain."""

_CALCULATOR_LABELS = ("energy", "forces", "stress")

Index = int | slice | str
"""A frame selection as ``ase.io.read`` takes it: ``3``, ``-1``, ``":"``, ``"10:20:2"``, a slice."""


@dataclass(frozen=True)
class LabelKeys:
    """Names under which a file stores each label (calculator results, ``info`` or ``arrays``).

    ``virial`` (eV; 3x3, 9 numbers or Voigt-6) is used only when no stress is found and becomes
    ``stress = -virial / volume``. A name no frame uses simply means that label is absent.
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    virial: str = "virial"
    charge: str = "charge"
    spin: str = "spin"


class DataError(ValueError):
    """A file that cannot be read, or a frame whose labels are missing or malformed."""


def iter_frames(
    path: str | Path,
    index: Index = ":",
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
) -> Iterator[Atoms]:
    """Lazily yield the frames ``index`` selects from ``path`` as labelled ``ase.Atoms``.

    ``keys`` names the labels in the file (default :class:`LabelKeys`); ``required`` lists the
    canonical labels (from :data:`LABELS`) every frame must have. The path, the arguments and an
    empty file are checked at once; frame problems are raised while iterating. Error messages give
    frame numbers as positions in the file (for a directory, in the file named).
    """
    unknown = sorted(set(required) - set(LABELS))
    if unknown:
        raise ValueError(f"required labels must be among {LABELS}, got {unknown}")
    path = Path(path)
    if isinstance(index, str):
        index = string2index(index)
    selection = slice(index, index + 1 or None) if isinstance(index, int) else index
    if path.is_dir():
        files = sorted(path.glob("*.aselmdb"))
        if not files:
            raise DataError(f"{path}: directory holds no *.aselmdb files")
    elif not path.exists():
        raise DataError(f"{path}: no such file or directory")
    elif path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    else:
        files = [path]
    keys = keys or LabelKeys()
    if path.is_dir() or path.suffix in (".db", ".aselmdb"):
        frames = _database_frames(files, selection)
    elif path.suffix == ".json" and is_mptrj(path):
        frames = iter_mptrj(path, selection, energy=keys.energy)
        keys = LabelKeys()  # MPtrj labels come under canonical names; keys.energy chose one
    else:
        frames = _file_frames(path, selection)
    return _labelled_frames(frames, path, index, keys, tuple(required))


def read_frames(
    path: str | Path,
    index: Index = ":",
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
) -> list[Atoms]:
    """All frames ``index`` selects from ``path`` as a list (see :func:`iter_frames`)."""
    return list(iter_frames(path, index, keys, required))


def read_dataset(
    paths: str | Path | Sequence[str | Path],
    index: Index = ":",
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
) -> list[Atoms]:
    """Frames of one or several paths, concatenated in order; ``index`` applies to each path."""
    if isinstance(paths, str | Path):
        paths = [paths]
    return [atoms for path in paths for atoms in iter_frames(path, index, keys, required)]


def _labelled_frames(
    frames: Iterator[tuple[Path, int, Atoms]],
    path: Path,
    index: int | slice,
    keys: LabelKeys,
    required: tuple[str, ...],
) -> Iterator[Atoms]:
    """Label every raw ``(file, frame number, atoms)``; an empty result is an error where the
    selection could not be empty on a good file (one integer index, or everything)."""
    empty = True
    for file, frame, atoms in frames:
        empty = False
        yield _labelled(atoms, f"{file}, frame {frame}", keys, required)
    if empty and isinstance(index, int):
        raise DataError(f"{path}: no frame {index}")
    if empty and index == slice(None):
        raise DataError(f"{path}: contains no frames")


def _file_frames(path: Path, index: slice) -> Iterator[tuple[Path, int, Atoms]]:
    """Frames of a file ``ase.io`` reads, with their positions in the file.

    A parse error on the first frame read names no frame: extxyz scans every frame header before
    the first frame is returned, so the failing frame is not known.
    """
    numbers = _frame_numbers(path, index)
    frames = ase.io.iread(path, index, do_not_split_by_at_sign=True)
    for k in count():
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as err:
            where = f"{path}, frame {numbers[k]}" if k else str(path)
            raise DataError(f"{where}: cannot parse: {err}") from err
        yield path, numbers[k], atoms


def _frame_numbers(path: Path, index: slice) -> range:
    """Positions in the file of the frames ``index`` selects; counts the frames only when the
    selection has negative parts."""
    start, stop, step = index.start, index.stop, index.step
    if all(v is None or v >= 0 for v in (start, stop, step)):
        return range(start or 0, sys.maxsize if stop is None else stop, 1 if step is None else step)
    try:
        n = sum(1 for _ in ase.io.iread(path, ":", do_not_split_by_at_sign=True))
    except Exception as err:
        raise DataError(f"{path}: cannot parse: {err}") from err
    return range(n)[index]


def _database_frames(files: list[Path], index: slice) -> Iterator[tuple[Path, int, Atoms]]:
    """Rows of one or more ASE databases, concatenated, as ``(file, row position, atoms)``.

    ``row.key_value_pairs`` and ``row.data`` (where charge and spin live) go into ``atoms.info``.
    Connections are closed when the iteration ends, fails or is closed.
    """
    with ExitStack() as stack:
        databases, ids = [], []
        for file in files:
            try:
                database = stack.enter_context(_connect(file))
                ids.append(_row_ids(database))
            except Exception as err:
                raise DataError(f"{file}: cannot open as an ASE database: {err}") from err
            databases.append(database)
        starts = list(accumulate((len(i) for i in ids), initial=0))
        for position in range(starts[-1])[index]:
            k = bisect_right(starts, position) - 1
            frame = position - starts[k]
            try:
                row = databases[k].get(id=ids[k][frame])
                atoms = row.toatoms()
            except Exception as err:
                raise DataError(f"{files[k]}, frame {frame}: cannot read row: {err}") from err
            atoms.info.update(row.key_value_pairs)
            atoms.info.update(row.data)
            yield files[k], frame, atoms


def _connect(file: Path) -> Database:
    if file.suffix == ".aselmdb":
        return ase.db.connect(str(file), type="aselmdb", readonly=True, use_lock_file=False)
    return ase.db.connect(str(file), type="db", use_lock_file=False)


def _row_ids(database: Database) -> list[int]:
    """Row ids in order (ASE-LMDB keeps them in memory; SQLite is asked for the id column)."""
    if isinstance(database, LMDBDatabase):
        return list(database.ids)
    return sorted(row.id for row in database.select(columns=["id"], include_data=False))


def _labelled(atoms: Atoms, where: str, keys: LabelKeys, required: tuple[str, ...]) -> Atoms:
    """``atoms`` (fresh from a reader) with canonical labels; the source label keys are removed.

    ``where`` ("file, frame i") starts every error message.
    """
    found: dict[str, Any] = {}
    energy = _find(atoms, keys.energy)
    if energy is not None:
        found["energy"] = _scalar(energy, keys.energy, where)
    forces = _find(atoms, keys.forces)
    if forces is not None:
        found["forces"] = _finite(forces, keys.forces, where)
        if found["forces"].shape != (len(atoms), 3):
            shape = found["forces"].shape
            raise DataError(f"{where}: {keys.forces} has shape {shape}, expected ({len(atoms)}, 3)")
    stress, virial = _find(atoms, keys.stress), _find(atoms, keys.virial)
    if stress is not None:
        found["stress"] = _voigt(stress, keys.stress, where)
    elif virial is not None:
        volume = atoms.cell.volume
        if not volume > 0:
            raise DataError(f"{where}: {keys.virial} needs a cell with non-zero volume")
        found["stress"] = -_voigt(virial, keys.virial, where) / volume
    for name in ("charge", "spin"):
        value = _find(atoms, getattr(keys, name))
        if value is not None:
            found[name] = _scalar(value, getattr(keys, name), where)
    for name in required:
        if name not in found:
            sought = repr(getattr(keys, name))
            if name == "stress":
                sought = f"{keys.stress!r} or {keys.virial!r}"
            raise DataError(f"{where}: {name} missing (looked for {sought})")

    for key in (keys.energy, keys.stress, keys.virial, keys.charge, keys.spin):
        atoms.info.pop(key, None)
    atoms.arrays.pop(keys.forces, None)
    atoms.info.update({name: found[name] for name in ("charge", "spin") if name in found})
    results = {name: found[name] for name in _CALCULATOR_LABELS if name in found}
    atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    return atoms


def _find(atoms: Atoms, key: str) -> Any:
    """The value stored under ``key`` in the calculator results, ``info`` or ``arrays``, or None."""
    results = atoms.calc.results if atoms.calc is not None else {}
    for source in (results, atoms.info, atoms.arrays):
        if key in source:
            return source[key]
    return None


def _finite(value: Any, key: str, where: str) -> np.ndarray:
    """``value`` as a float64 array, checked to be numeric and finite."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: {key} is not numeric ({err})") from err
    if not np.isfinite(array).all():
        raise DataError(f"{where}: {key} contains NaN or inf")
    return array


def _scalar(value: Any, key: str, where: str) -> float:
    array = _finite(value, key, where)
    if array.size != 1:
        raise DataError(f"{where}: {key} has shape {array.shape}, expected one number")
    return float(array.item())


def _voigt(value: Any, key: str, where: str) -> np.ndarray:
    """A stress-like tensor given as Voigt-6, 9 numbers or 3x3, as Voigt-6 [6] (xx, yy, zz, yz,
    xz, xy); off-diagonal pairs of a full tensor are averaged."""
    array = _finite(value, key, where)
    if array.shape == (6,):
        return array
    if array.shape in ((9,), (3, 3)):
        return full_3x3_to_voigt_6_stress(array.reshape(3, 3))
    raise DataError(f"{where}: {key} has shape {array.shape}, expected (6,), (9,) or (3, 3)")
