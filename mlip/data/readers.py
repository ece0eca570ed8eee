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
from io import StringIO
from itertools import accumulate, count
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db.core import Database
from ase.io.extxyz import read_xyz
from ase.io.formats import filetype, string2index
from ase.stress import full_3x3_to_voigt_6_stress
from ase_db_backends.aselmdb import LMDBDatabase

from mlip.data.extxyz import MalformedFrame, frame_texts
from mlip.data.mptrj import is_mptrj, iter_mptrj
from mlip.data.records import LabelKeys
from mlip.errors import DataError, UnreadableRest, one_line

LABELS = ("energy", "forces", "stress", "charge", "spin")
"""Canonical label names, the values ``required`` may contain."""

_CALCULATOR_LABELS = ("energy", "forces", "stress")

PLAUSIBLE = {"energy": 1e6, "forces": 1e5, "stress": 1e3}
"""Largest label magnitudes a frame may have: |energy| per atom (eV; all-electron total energies
of the heaviest elements are below 8e5 eV/atom), max |force| (eV/Å) and max |stress component|
(eV/Å³, 160,000 GPa). Larger values are read as errors, not data."""

Index = int | slice | str
"""A frame selection as ``ase.io.read`` takes it: ``3``, ``-1``, ``":"``, ``"10:20:2"``, a slice."""


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
    else:
        check_file(path)
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


def check_file(path: Path) -> None:
    """Raise :class:`DataError` if ``path`` is missing, empty, or (unless a database) only
    whitespace."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    if path.suffix not in (".db", ".aselmdb") and _blank(path):
        raise DataError(f"{path}: contains no frames (only blank lines)")


def _blank(path: Path) -> bool:
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            if block.strip():
                return False
    return True


def _labelled_frames(
    frames: Iterator[tuple[Path, int, Atoms | DataError]],
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
        if isinstance(atoms, DataError):
            raise atoms
        yield _labelled(atoms, f"{file}, frame {frame}", keys, required)
    if empty and isinstance(index, int):
        raise DataError(f"{path}: no frame {index}")
    if empty and index == slice(None):
        raise DataError(f"{path}: contains no frames")


def _file_frames(path: Path, index: slice) -> Iterator[tuple[Path, int, Atoms | DataError]]:
    """Frames of a file ``ase.io`` reads, as ``(path, position in the file, atoms)``.

    A bad frame comes as a :class:`DataError` in place of its atoms. An extxyz file is split into
    frames here (:func:`_xyz_frames`), so that reading goes on past a bad one; in other formats a
    parse error ends the file with an :class:`UnreadableRest` (one that names no frame when it
    comes before the first frame is returned: the whole file is unreadable).
    """
    try:
        extxyz = filetype(str(path)) == "extxyz"
    except Exception:  # ase.io.iread below says what it makes of the file
        extxyz = False
    if extxyz:
        yield from _xyz_frames(path, index)
        return
    numbers = _frame_numbers(path, index)
    frames = ase.io.iread(path, index, do_not_split_by_at_sign=True)
    for k in count():
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as err:
            if not k:  # the first frame read: the failing one is not known
                yield path, -1, UnreadableRest(f"{path}: cannot parse: {one_line(err)}")
                return
            message = f"{path}, frame {numbers[k]}: cannot parse: {one_line(err)}"
            yield path, numbers[k], UnreadableRest(f"{message} (frames {numbers[k]}.. not read)")
            return
        yield path, numbers[k], atoms


def _xyz_frames(path: Path, index: slice) -> Iterator[tuple[Path, int, Atoms | DataError]]:
    """The frames ``index`` selects from an extxyz file, as :func:`_file_frames` gives them.

    :func:`mlip.data.extxyz.frame_texts` splits the file at its atom-count lines; each frame is
    then parsed alone by ASE, so that a frame that does not parse is one bad frame.
    """
    start, stop, step = index.start, index.stop, index.step
    if all(v is None or v >= 0 for v in (start, stop, step)):
        wanted = range(start or 0, sys.maxsize if stop is None else stop, step or 1)
        texts: Iterator[tuple[int, str | MalformedFrame]] = frame_texts(path)
    else:  # negative parts: count the frames first; the selection may run backwards
        wanted = range(sum(1 for _ in frame_texts(path)))[index]
        kept = dict(item for item in frame_texts(path) if item[0] in wanted)
        texts = ((frame, kept[frame]) for frame in wanted)
    for frame, text in texts:
        if wanted.step > 0 and frame >= wanted.stop:
            return
        if frame not in wanted:
            continue
        if isinstance(text, MalformedFrame):
            error = UnreadableRest if text.ends_file else DataError
            yield path, frame, error(f"{path}, frame {frame}: {text}")
            continue
        try:
            atoms = next(read_xyz(StringIO(text), 0))
        except Exception as err:
            yield path, frame, DataError(f"{path}, frame {frame}: cannot parse: {one_line(err)}")
            continue
        yield path, frame, atoms


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
    _check_plausible(found, len(atoms), where)

    for key in (keys.energy, keys.stress, keys.virial, keys.charge, keys.spin):
        atoms.info.pop(key, None)
    atoms.arrays.pop(keys.forces, None)
    atoms.info.update({name: found[name] for name in ("charge", "spin") if name in found})
    results = {name: found[name] for name in _CALCULATOR_LABELS if name in found}
    atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    return atoms


def _check_plausible(found: dict[str, Any], num_atoms: int, where: str) -> None:
    """Refuse labels no calculation gives (:data:`PLAUSIBLE`): a unit or parsing error, which
    would otherwise set the E0s and force scale of a run (one 1e30 eV frame gives E0s of 1e27)."""
    sizes = {}
    if "energy" in found and num_atoms:
        sizes["energy"] = (abs(found["energy"]) / num_atoms, "eV/atom", f"{found['energy']:.4g} eV")
    if "forces" in found and num_atoms:
        largest = float(np.linalg.norm(found["forces"], axis=1).max())
        sizes["forces"] = (largest, "eV/Å", f"max |F| {largest:.4g} eV/Å")
    if "stress" in found:
        largest = float(np.abs(found["stress"]).max())
        sizes["stress"] = (largest, "eV/Å³", f"max |stress| {largest:.4g} eV/Å³")
    for name, (size, unit, shown) in sizes.items():
        if size > PLAUSIBLE[name]:
            raise DataError(
                f"{where}: {name} {shown} is beyond any DFT label (above {PLAUSIBLE[name]:g} "
                f"{unit}): check its units and the file"
            )


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
