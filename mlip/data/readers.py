"""Data files -> labelled ``ase.Atoms``, the one reading door: ``.db`` (ASE SQLite), ``.aselmdb``
or a folder of them, MPtrj or ASE ``.json``, anything else through ``ase.io``. Labels come back on
a ``SinglePointCalculator``: ``energy`` (eV), ``forces`` ([N, 3] eV/Å), ``stress`` ([6] eV/Å³,
Voigt, ASE sign); ``info["charge"]`` (e) and ``info["spin"]`` (2S+1) as floats."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from io import StringIO
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io.extxyz import read_xyz
from ase.io.formats import filetype, string2index
from ase.stress import full_3x3_to_voigt_6_stress

from mlip.data.extxyz import MalformedFrame, frame_texts
from mlip.data.lmdb import AseLmdbRows, row_atoms
from mlip.data.mptrj import is_mptrj, iter_mptrj
from mlip.data.records import LabelKeys
from mlip.errors import DataError, UnreadableRest, one_line

LABELS = ("energy", "forces", "stress", "charge", "spin")
"""Canonical label names, the values ``required`` may contain."""

PLAUSIBLE = {"energy": 1e6, "forces": 1e5, "stress": 1e3}
"""Largest |energy| per atom (eV), max |force| (eV/Å) and max |stress component| (eV/Å³) a frame
may have: larger ones are unit or parsing errors, not data."""

Record = tuple[str, "Atoms | DataError"]
"""``(where, atoms | error)``: ``where`` is ``"file, frame k"``, or the file for an error ending it."""

_WHOLE = {"do_not_split_by_at_sign": True}  # a file name with an @ is not a selection

Index = int | slice | str
"""A frame selection as ``ase.io.read`` takes it: ``3``, ``-1``, ``":"``, ``"10:20:2"``, a slice."""


def records(
    path: str | Path,
    index: Index = ":",
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
) -> Iterator[Record]:
    """``(where, labelled atoms)`` for every frame ``index`` selects, or ``(where, DataError)``
    for a bad one (a file unreadable past a frame ends with an :class:`UnreadableRest`).
    ``required``: the labels every frame must have. A bad path, an empty file or no frame where a
    good file has one (one integer index, or all) raise :class:`DataError`."""
    unknown = sorted(set(required) - set(LABELS))
    if unknown:
        raise ValueError(f"required labels must be among {LABELS}, got {unknown}")
    path, keys, required = Path(path), keys or LabelKeys(), tuple(required)
    if isinstance(index, str):
        index = string2index(index)
    selection = slice(index, index + 1 or None) if isinstance(index, int) else index
    if path.is_dir() or path.suffix == ".aselmdb":
        frames = _rows(AseLmdbRows(path), selection)
    else:
        _check_file(path)
        if path.suffix == ".db":
            frames = _database_frames(path, selection)
        elif path.suffix == ".json" and is_mptrj(path):
            frames = iter_mptrj(path, selection, energy=keys.energy)
            keys = LabelKeys()  # MPtrj labels come under canonical names; keys.energy chose one
        else:
            frames = _file_frames(path, selection)
    return _labelled_records(frames, keys, required, path, index)


def iter_frames(path: str | Path, index: Index = ":", **options: Any) -> Iterator[Atoms]:
    """The frames of :func:`records` (``options``: ``keys``, ``required``), lazily, raising the
    first bad one's :class:`DataError`."""
    for _, atoms in records(path, index, **options):
        if isinstance(atoms, DataError):
            raise atoms
        yield atoms


def read_frames(path: str | Path, index: Index = ":", **options: Any) -> list[Atoms]:
    """All frames ``index`` selects from ``path`` as a list (see :func:`iter_frames`)."""
    return list(iter_frames(path, index, **options))


class IndexedFrames:
    """Labelled frames of ASE-LMDB files (and folders of them) by index, read on demand (a bad
    one raises :class:`DataError`); ``describe(i)`` is ``"file, frame k"``."""

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        keys: LabelKeys | None = None,
        required: Sequence[str] = ("energy", "forces"),
    ) -> None:
        self.rows = AseLmdbRows(paths)
        self.keys = keys or LabelKeys()
        self.required = tuple(required)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Atoms:
        return _labelled(self.rows.atoms(index), self.describe(index), self.keys, self.required)

    def describe(self, index: int) -> str:
        return self.rows.describe(index)


def _check_file(path: Path) -> None:
    """Raise :class:`DataError` if ``path`` is missing, empty, or (but a database) blank."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    if path.suffix != ".db":
        with open(path, "rb") as file:
            while block := file.read(1 << 20):
                if block.strip():
                    return
        raise DataError(f"{path}: contains no frames (only blank lines)")


def _rows(rows: AseLmdbRows, selection: slice) -> Iterator[Record]:
    with rows:
        for position in range(len(rows))[selection]:
            try:
                yield rows.describe(position), rows.atoms(position)
            except DataError as err:
                yield rows.describe(position), err


def _labelled_records(
    frames: Iterator[Record], keys: LabelKeys, required: tuple[str, ...], path: Path, index: Any
) -> Iterator[Record]:
    """``frames`` labelled; their end raises :class:`DataError` if there were none where a good
    file has some (``index`` one integer, or everything)."""
    empty = True
    for where, atoms in frames:
        empty = False
        if not isinstance(atoms, DataError):
            try:
                atoms = _labelled(atoms, where, keys, required)
            except DataError as err:
                atoms = err
        yield where, atoms
    if empty and isinstance(index, int):
        raise DataError(f"{path}: no frame {index}")
    if empty and index == slice(None):
        raise DataError(f"{path}: contains no frames")


def _positions(index: slice, count: Callable[[], int]) -> range:
    """Positions in a file of the frames ``index`` selects; ``count()`` (the number of frames) is
    asked only where the selection has negative parts."""
    start, stop, step = index.start, index.stop, index.step
    if all(v is None or v >= 0 for v in (start, stop, step)):
        return range(start or 0, sys.maxsize if stop is None else stop, step or 1)
    return range(count())[index]


def _file_frames(path: Path, index: slice) -> Iterator[Record]:
    """Frames of a file ``ase.io`` reads (extxyz: :func:`_xyz_frames`); a parse error ends the
    file with an :class:`UnreadableRest` (naming no frame if it comes before the first one)."""
    try:
        extxyz = filetype(str(path)) == "extxyz"
    except Exception:  # ase.io.iread below says what it makes of the file
        extxyz = False
    if extxyz:
        yield from _xyz_frames(path, index)
        return
    try:  # counting the frames where the selection has negative parts
        numbers = _positions(index, lambda: sum(1 for _ in ase.io.iread(path, ":", **_WHOLE)))
    except Exception as err:
        yield str(path), UnreadableRest(f"{path}: cannot parse: {err}")
        return
    frames = ase.io.iread(path, index, **_WHOLE)
    for k, number in enumerate(numbers):
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as err:
            if not k:  # the first frame read: the failing one is not known
                yield str(path), UnreadableRest(f"{path}: cannot parse: {one_line(err)}")
                return
            message = f"{path}, frame {number}: cannot parse: {one_line(err)}"
            yield str(path), UnreadableRest(f"{message} (frames {number}.. not read)")
            return
        yield f"{path}, frame {number}", atoms


def _xyz_frames(path: Path, index: slice) -> Iterator[Record]:
    """The frames ``index`` selects from an extxyz file, each parsed by ASE alone."""
    wanted = _positions(index, lambda: sum(1 for _ in frame_texts(path)))
    if wanted.step > 0:
        texts: Iterator[tuple[int, str | MalformedFrame]] = frame_texts(path)
    else:  # backwards: keep the texts selected, then go through them in order
        kept = dict(item for item in frame_texts(path) if item[0] in wanted)
        texts = ((frame, kept[frame]) for frame in wanted)
    for frame, text in texts:
        if wanted.step > 0 and frame >= wanted.stop:
            return
        if frame not in wanted:
            continue
        where = f"{path}, frame {frame}"
        if isinstance(text, MalformedFrame):
            error = UnreadableRest if text.ends_file else DataError
            yield (str(path) if text.ends_file else where), error(f"{where}: {text}")
            continue
        try:
            yield where, next(read_xyz(StringIO(text), 0))
        except Exception as err:
            yield where, DataError(f"{where}: cannot parse: {one_line(err)}")


def _database_frames(path: Path, index: slice) -> Iterator[Record]:
    """Rows of an ASE (SQLite) database (see :func:`~mlip.data.lmdb.row_atoms`); the connection
    is closed when the iteration ends, fails or is closed."""
    try:
        database = ase.db.connect(str(path), type="db", use_lock_file=False)
        ids = sorted(row.id for row in database.select(columns=["id"], include_data=False))
    except Exception as err:
        yield str(path), UnreadableRest(f"{path}: cannot open as an ASE database: {err}")
        return
    with database:
        for frame in range(len(ids))[index]:
            where = f"{path}, frame {frame}"
            try:
                atoms = row_atoms(database.get(id=ids[frame]))
            except Exception as err:
                yield where, DataError(f"{where}: cannot read row: {err}")
                continue
            yield where, atoms


def _labelled(atoms: Atoms, where: str, keys: LabelKeys, required: tuple[str, ...]) -> Atoms:
    """``atoms`` (fresh from a reader) with canonical labels, the file's label keys removed;
    ``where`` ("file, frame k") starts every error message."""
    found: dict[str, Any] = {}
    if (energy := _find(atoms, keys.energy)) is not None:
        found["energy"] = _scalar(energy, keys.energy, where)
    if (forces := _find(atoms, keys.forces)) is not None:
        found["forces"] = _finite(forces, keys.forces, where)
        if found["forces"].shape != (len(atoms), 3):
            shape = found["forces"].shape
            raise DataError(f"{where}: {keys.forces} has shape {shape}, expected ({len(atoms)}, 3)")
    stress, virial = _find(atoms, keys.stress), _find(atoms, keys.virial)
    if stress is not None:
        found["stress"] = _voigt(stress, keys.stress, where)
    elif virial is not None:
        if not atoms.cell.volume > 0:
            raise DataError(f"{where}: {keys.virial} needs a cell with non-zero volume")
        found["stress"] = -_voigt(virial, keys.virial, where) / atoms.cell.volume
    for name in ("charge", "spin"):
        if (value := _find(atoms, getattr(keys, name))) is not None:
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
    results = {name: found[name] for name in ("energy", "forces", "stress") if name in found}
    atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    return atoms


def _check_plausible(found: dict[str, Any], num_atoms: int, where: str) -> None:
    """Refuse labels beyond :data:`PLAUSIBLE`: they would set the E0s and force scale of a run."""
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
    """The value under ``key`` in the calculator results, ``info`` or ``arrays``, or None."""
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
    """A stress-like tensor given as Voigt-6, 9 numbers or 3x3, as Voigt-6 [6] (off-diagonal pairs
    of a full tensor averaged)."""
    array = _finite(value, key, where)
    if array.shape == (6,):
        return array
    if array.shape in ((9,), (3, 3)):
        return full_3x3_to_voigt_6_stress(array.reshape(3, 3))
    raise DataError(f"{where}: {key} has shape {array.shape}, expected (6,), (9,) or (3, 3)")
