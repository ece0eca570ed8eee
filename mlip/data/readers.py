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
from collections.abc import Iterator, Sequence
from contextlib import closing
from io import StringIO
from itertools import count
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
from mlip.data.lmdb import AseLmdbRows
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

Record = tuple[str, "Atoms | DataError"]
"""What the reading door yields: where a frame comes from (``"file, frame k"``, or the file for
an error that ends it) and its labelled atoms, or what was wrong with it."""

Index = int | slice | str
"""A frame selection as ``ase.io.read`` takes it: ``3``, ``-1``, ``":"``, ``"10:20:2"``, a slice."""


def records(
    path: str | Path,
    index: Index = ":",
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
) -> Iterator[Record]:
    """The one reading door: ``(where, labelled atoms)`` for every frame ``index`` selects from
    ``path``, or ``(where, DataError)`` for a bad one, so that a pass can go on past it.

    ``where`` is ``"file, frame k"`` (k: the position in that file). ``keys`` names the labels in
    the file (default :class:`LabelKeys`); ``required`` lists the canonical labels (from
    :data:`LABELS`) every frame must have. A file that cannot be parsed any further ends with one
    :class:`~mlip.errors.UnreadableRest` for the rest of it. The path, the arguments and an empty
    file raise :class:`DataError` at once, as does a selection that finds nothing where a good
    file could not (one integer index, or everything).
    """
    unknown = sorted(set(required) - set(LABELS))
    if unknown:
        raise ValueError(f"required labels must be among {LABELS}, got {unknown}")
    path, keys, required = Path(path), keys or LabelKeys(), tuple(required)
    if isinstance(index, str):
        index = string2index(index)
    selection = slice(index, index + 1 or None) if isinstance(index, int) else index
    if path.is_dir() or path.suffix == ".aselmdb":
        frames = _indexed_frames(IndexedFrames(path, keys, required), selection)
    else:
        check_file(path)
        frames = _labelled_frames(path, selection, keys, required)
    return _nonempty(frames, path, index)


def iter_frames(
    path: str | Path,
    index: Index = ":",
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
) -> Iterator[Atoms]:
    """Lazily yield the frames of :func:`records`, raising the first bad one's
    :class:`DataError`."""
    for _, atoms in records(path, index, keys, required):
        if isinstance(atoms, DataError):
            raise atoms
        yield atoms


def read_frames(
    path: str | Path,
    index: Index = ":",
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
) -> list[Atoms]:
    """All frames ``index`` selects from ``path`` as a list (see :func:`iter_frames`)."""
    return list(iter_frames(path, index, keys, required))


class IndexedFrames:
    """Labelled frames of ASE-LMDB files (and folders of them) by index, read on demand.

    ``frames[i]`` is frame ``i`` (numbered across the files) as labelled ``ase.Atoms``; a bad
    one raises :class:`DataError` naming file and frame (:meth:`describe`). Holds an index,
    never a frame, and pickles small (see :class:`~mlip.data.lmdb.AseLmdbRows`).
    """

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
        """Where frame ``index`` comes from: ``"file, frame k"``."""
        return self.rows.describe(index)

    def close(self) -> None:
        """Close this process's connections to the files (reopened on the next access)."""
        self.rows.close()


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


def _indexed_frames(frames: IndexedFrames, selection: slice) -> Iterator[Record]:
    with closing(frames):
        for position in range(len(frames))[selection]:
            try:
                yield frames.describe(position), frames[position]
            except DataError as err:
                yield frames.describe(position), err


def _labelled_frames(
    path: Path, selection: slice, keys: LabelKeys, required: tuple[str, ...]
) -> Iterator[Record]:
    """Labelled frames of one file that is not ASE-LMDB, as ``(where, atoms | DataError)``."""
    if path.suffix == ".db":
        frames = _database_frames(path, selection)
    elif path.suffix == ".json" and is_mptrj(path):
        frames = iter_mptrj(path, selection, energy=keys.energy)
        keys = LabelKeys()  # MPtrj labels come under canonical names; keys.energy chose one
    else:
        frames = _file_frames(path, selection)
    return _label_each(frames, keys, required)


def _label_each(
    frames: Iterator[Record], keys: LabelKeys, required: tuple[str, ...]
) -> Iterator[Record]:
    for where, atoms in frames:
        if isinstance(atoms, DataError):
            yield where, atoms
            continue
        try:
            yield where, _labelled(atoms, where, keys, required)
        except DataError as err:
            yield where, err


def _nonempty(frames: Iterator[Record], path: Path, index: int | slice) -> Iterator[Record]:
    """``frames``; their end raises :class:`DataError` if there were none where a good file
    could not have none (one integer index, or everything)."""
    empty = True
    for record in frames:
        empty = False
        yield record
    if empty and isinstance(index, int):
        raise DataError(f"{path}: no frame {index}")
    if empty and index == slice(None):
        raise DataError(f"{path}: contains no frames")


def _file_frames(path: Path, index: slice) -> Iterator[Record]:
    """Frames of a file ``ase.io`` reads, as ``(where, atoms | DataError)``.

    An extxyz file is split into frames here (:func:`_xyz_frames`), so that reading goes on past a
    bad one; in other formats a parse error ends the file with an :class:`UnreadableRest` (one
    that names no frame when it comes before the first frame is returned: the whole file is
    unreadable).
    """
    try:
        extxyz = filetype(str(path)) == "extxyz"
    except Exception:  # ase.io.iread below says what it makes of the file
        extxyz = False
    if extxyz:
        yield from _xyz_frames(path, index)
        return
    try:
        numbers = _frame_numbers(path, index)
    except DataError as err:
        yield str(path), UnreadableRest(str(err))
        return
    frames = ase.io.iread(path, index, do_not_split_by_at_sign=True)
    for k in count():
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as err:
            if not k:  # the first frame read: the failing one is not known
                yield str(path), UnreadableRest(f"{path}: cannot parse: {one_line(err)}")
                return
            message = f"{path}, frame {numbers[k]}: cannot parse: {one_line(err)}"
            yield str(path), UnreadableRest(f"{message} (frames {numbers[k]}.. not read)")
            return
        yield f"{path}, frame {numbers[k]}", atoms


def _xyz_frames(path: Path, index: slice) -> Iterator[Record]:
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
        where = f"{path}, frame {frame}"
        if isinstance(text, MalformedFrame):
            error = UnreadableRest if text.ends_file else DataError
            yield (str(path) if text.ends_file else where), error(f"{where}: {text}")
            continue
        try:
            yield where, next(read_xyz(StringIO(text), 0))
        except Exception as err:
            yield where, DataError(f"{where}: cannot parse: {one_line(err)}")


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


def _database_frames(path: Path, index: slice) -> Iterator[Record]:
    """Rows of an ASE (SQLite) database as ``(where, atoms | DataError)``;
    ``row.key_value_pairs`` and ``row.data`` (where charge and spin live) go into ``atoms.info``.
    The connection is closed when the iteration ends, fails or is closed."""
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
                row = database.get(id=ids[frame])
                atoms = row.toatoms()
            except Exception as err:
                yield where, DataError(f"{where}: cannot read row: {err}")
                continue
            atoms.info.update(row.key_value_pairs)
            atoms.info.update(row.data)
            yield where, atoms


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
