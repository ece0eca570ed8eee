"""Data files -> labelled ``ase.Atoms`` -> graphs, the one reading door: ``.db`` (ASE SQLite),
``.aselmdb`` or a folder of them, MPtrj or ASE ``.json``, extxyz (cut into frames first, so that
one bad frame is one bad frame), anything else through ``ase.io``; files in one pass
(:func:`file_graphs`), indexed ones by index (:class:`LMDBDataset`), whole or sampled
(:func:`dataset_graphs`). Labels come back on a ``SinglePointCalculator``: ``energy`` (eV),
``forces`` ([N, 3] eV/Å), ``stress`` ([6] eV/Å³, Voigt, ASE sign); ``info["charge"]`` (e) and
``info["spin"]`` (2S+1) as floats. Passes show a progress bar and hand a bad frame to
:class:`~mlip.data.records.BadFrames`; nothing else is dropped."""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from io import StringIO
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.io.extxyz import read_xyz
from ase.io.formats import filetype, string2index
from torch.utils.data import Dataset
from torch_geometric.data import Data
from tqdm import tqdm

from mlip.data.graph import atoms_to_graph, check_graph
from mlip.data.lmdb import AseLmdbRows, GraphLMDBDataset, row_atoms
from mlip.data.mptrj import is_mptrj, iter_mptrj
from mlip.data.records import LABELS, BadFrames, LabelKeys, labelled
from mlip.errors import DataError, UnreadableRest, one_line

Record = tuple[str, "Atoms | DataError"]
"""``(where, atoms | error)``: ``where`` is ``"file, frame k"``, or the file for an error ending it."""

Index = int | slice | str
"""A frame selection as ``ase.io.read`` takes it: ``3``, ``-1``, ``":"``, ``"10:20:2"``, a slice."""
GRAPH_CACHE_SUFFIX = ".lmdb"


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


def read_frames(path: str | Path, index: Index = ":", **options: Any) -> list[Atoms]:
    """The frames of :func:`records` (``options``: ``keys``, ``required``) as a list, raising the
    first bad one's :class:`DataError`."""
    return [atoms for _, atoms in BadFrames().sift(records(path, index, **options))]


class LMDBDataset(AseLmdbRows, Dataset):
    """Frames of ASE-LMDB files (and folders of them) as graphs (``cutoff`` Å, floats in
    ``dtype``), read on demand; :meth:`frame` is the labelled ``ase.Atoms``. A bad frame raises
    :class:`DataError` naming file and frame."""

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        cutoff: float,
        keys: LabelKeys | None = None,
        dtype: torch.dtype | None = None,
        required: Sequence[str] = ("energy", "forces"),
    ) -> None:
        super().__init__(paths)
        self.cutoff, self.keys, self.required = float(cutoff), keys or LabelKeys(), tuple(required)
        self.dtype = dtype or torch.get_default_dtype()

    def frame(self, index: int) -> Atoms:
        return labelled(self.atoms(index), self.describe(index), self.keys, self.required)

    def __getitem__(self, index: int) -> Data:
        return frame_graph(self.frame(index), self.describe(index), self.cutoff, self.dtype)


def file_graphs(
    paths: Sequence[str | Path],
    cutoff: float,
    keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
    dtype: torch.dtype = torch.float64,
    max_frames: int | None = None,
    seed: int = 0,
    bad: BadFrames | None = None,
    elements: Sequence[int] | None = None,
    progress: bool = True,
    index: Index = ":",
) -> Iterator[tuple[str, Data]]:
    """``(where, graph)`` for the frames ``index`` selects from files of any readable format, or
    (``max_frames`` per path) a seeded sample, by index where files are indexed; a bad frame
    (unreadable, no graph, an element outside ``elements``) is raised or counted in ``bad``."""
    bad = bad if bad is not None else BadFrames()

    def fit(where: str, graph: Data) -> bool:
        problem = check_graph(graph, elements)
        if problem:
            bad.add(DataError(f"{where}: {problem}"))
        return not problem

    for path in map(Path, paths):
        cache = path.suffix == GRAPH_CACHE_SUFFIX  # a cache has its own cutoff
        if cache or (max_frames is not None and (path.is_dir() or path.suffix == ".aselmdb")):
            if cache:
                dataset = GraphLMDBDataset(path, dtype)
            else:
                dataset = LMDBDataset(path, cutoff, keys, dtype, required)
            with dataset:
                graphs = dataset_graphs(dataset, max_frames, seed, bad, progress, path.name)
                yield from ((w, g) for _, w, g in graphs if fit(w, g))
            continue
        good = bad.sift(bar(records(path, index, keys, required), progress, path.name))
        if max_frames is not None:
            good = _reservoir(good, max_frames, seed)
        for where, atoms in good:
            try:
                graph = frame_graph(atoms, where, cutoff, dtype)
            except DataError as err:
                bad.add(err)
                continue
            if fit(where, graph):
                yield where, graph


def dataset_graphs(
    dataset: Dataset,
    max_frames: int | None = None,
    seed: int = 0,
    bad: BadFrames | None = None,
    progress: bool = True,
    desc: str = "frames",
) -> Iterator[tuple[int, str, Data]]:
    """``(index, where, graph)`` for every index of a ``dataset`` of graphs, or a seeded sample of
    ``max_frames`` (in order); a frame that raises or is a :class:`DataError` goes to ``bad``."""
    bad = bad if bad is not None else BadFrames()
    size = len(dataset)
    indices: Iterable[int] = range(size)
    if max_frames is not None and max_frames < size:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(size, size=max_frames, replace=False)).tolist()
    describe = getattr(dataset, "describe", lambda i: f"frame {i}")
    for index in bar(indices, progress, desc, total=min(size, max_frames or size)):
        try:
            graph = dataset[index]
        except DataError as err:
            graph = err
        if isinstance(graph, DataError):
            bad.add(graph, index)
            continue
        yield index, describe(index), graph


def frame_graph(atoms: Any, where: str, cutoff: float, dtype: torch.dtype | None) -> Data:
    """The labelled graph of one frame; a structure with no graph raises :class:`DataError`."""
    try:
        return atoms_to_graph(atoms, cutoff, dtype=dtype, labels=True)
    except (ValueError, RuntimeError) as err:
        raise DataError(f"{where}: cannot build its graph: {err}") from err


def bar(iterable: Iterable, progress: bool, desc: str, total: int | None = None) -> Iterable:
    """``iterable`` behind a progress bar on stderr (none if not ``progress`` or not a terminal)."""
    return tqdm(
        iterable, desc=desc, total=total, unit="frame", disable=None if progress else True,
        file=sys.stderr, mininterval=0.5, dynamic_ncols=True, leave=False,
    )  # fmt: skip


def _reservoir(items: Iterable[Any], size: int, seed: int) -> list[Any]:
    """A uniform seeded sample of ``size`` items of a stream, in stream order: those with the
    ``size`` smallest random keys (a heap of ``size`` held)."""
    rng = np.random.default_rng(seed)
    keyed = ((rng.random(), position, item) for position, item in enumerate(items))
    return [item for _, _, item in sorted(heapq.nsmallest(size, keyed), key=lambda k: k[1])]


def _check_file(path: Path) -> None:
    """Raise :class:`DataError` if ``path`` is missing, empty or blank (no SQLite file is)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
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
                atoms = labelled(atoms, where, keys, required)
            except DataError as err:
                atoms = err
        yield where, atoms
    if empty and isinstance(index, int):
        raise DataError(f"{path}: no frame {index}")
    if empty and index == slice(None):
        raise DataError(f"{path}: contains no frames")


def _file_frames(path: Path, index: slice) -> Iterator[Record]:
    """The frames ``index`` selects from a file ``ase.io`` reads, an extxyz file cut at its frames
    (:func:`_frame_texts`) and each parsed by ASE alone; a parse error elsewhere ends the file with
    an :class:`UnreadableRest`."""
    try:
        extxyz = filetype(str(path)) == "extxyz"
    except Exception:  # ase.io.iread says what it makes of the file
        extxyz = False
    for position, item in _select(partial(_frame_texts if extxyz else _ase_frames, path), index):
        where = f"{path}, frame {position}"
        if isinstance(item, str):
            try:
                item = next(read_xyz(StringIO(item), 0))
            except Exception as err:
                item = DataError(f"{where}: cannot parse: {one_line(err)}")
        yield (str(path) if isinstance(item, UnreadableRest) else where), item


def _select(frames: Callable[[], Iterator[tuple[int, Any]]], index: slice) -> Iterator[Any]:
    """The ``(position, item)`` pairs of ``frames()`` (in file order) that ``index`` selects, in
    its order, and an :class:`UnreadableRest` before the last selected frame; ``frames()`` is
    run twice (once to count) where the selection has negative parts."""
    negative = any(v is not None and v < 0 for v in (index.start, index.stop, index.step))
    wanted = range(*index.indices(sum(1 for _ in frames()) if negative else sys.maxsize))
    last, backwards = (max(wanted[0], wanted[-1]) if wanted else -1), wanted.step < 0
    kept, rest = [], []  # backwards: the selected frames, given in reverse at the end
    for position, item in frames():
        if position > last or isinstance(item, UnreadableRest):
            rest = [(position, item)] if position <= last else []
            break
        if position in wanted and backwards:
            kept.append((position, item))
        elif position in wanted:
            yield position, item
    yield from reversed(kept)
    yield from rest


def _ase_frames(path: Path) -> Iterator[tuple[int, Atoms | UnreadableRest]]:
    """``(position, atoms)`` for the frames of a file ``ase.io`` reads, a parse error ending it
    (naming no frame if it comes before the first one)."""
    position = 0
    try:
        for atoms in ase.io.iread(path, ":", do_not_split_by_at_sign=True):  # @: part of the name
            yield position, atoms
            position += 1
    except Exception as err:  # not GeneratorExit: a consumer that stops early closes this
        where = f"{path}, frame {position}" if position else str(path)
        rest = f" (frames {position}.. not read)" if position else ""
        yield position, UnreadableRest(f"{where}: cannot parse: {one_line(err)}{rest}")


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
                atoms = DataError(f"{where}: cannot read row: {err}")
            yield where, atoms


def _frame_texts(path: Path) -> Iterator[tuple[int, str | DataError]]:
    """``(frame, text)`` for every frame of an extxyz file (a count line, a comment, that many atom
    lines of 4+ fields, ``VEC`` lines), or ``(frame, DataError)`` where its atom count does not fit
    (ASE's reader checks every header before the first frame and names no frame in its errors);
    reading resumes at the next well-formed frame. A line that is not UTF-8 ends the file."""
    with open(path, encoding="utf-8") as file:
        ahead, frame, lost = _Ahead(file), 0, False  # lost: after a bad frame, until a good one
        try:
            while (line := ahead.peek(0)) is not None:
                if not line.strip():
                    ahead.take(1)
                    continue
                lines, problem = _frame_lines(ahead)
                if problem is None:
                    frame += lost  # the bad frame's number was taken once reading resumed
                    yield frame, ahead.take(lines)
                    frame, lost = frame + 1, False
                    continue
                if not lost:  # lost, a line that starts no frame is taken alone
                    yield frame, DataError(f"{path}, frame {frame}: {problem}")
                ahead.take(1 if lost else lines)
                lost = True
        except UnicodeDecodeError as err:
            message = f"not UTF-8 text ({err}) (frames {frame}.. not read)"
            yield frame, UnreadableRest(f"{path}, frame {frame}: {message}")


class _Ahead:
    """A text file's lines read ahead: ``peek(k)`` is the ``k``-th line not yet taken (None past
    the end); ``number`` counts the lines taken."""

    def __init__(self, file: Any) -> None:
        self.file, self.lines, self.number = file, [], 0

    def peek(self, k: int) -> str | None:
        while len(self.lines) <= k:
            if not (line := self.file.readline()):
                return None
            self.lines.append(line)
        return self.lines[k]

    def take(self, n: int) -> str:
        text = "".join(self.lines[:n])
        del self.lines[:n]
        self.number += n
        return text


def _frame_lines(ahead: _Ahead) -> tuple[int, str | None]:
    """How many lines the frame starting at the next line spans (nothing is taken) and what is
    wrong with it: its count is not a number or does not match its atom lines (None: nothing)."""
    line, header = ahead.number + 1, ahead.peek(0)
    natoms = _atom_count(header)
    if natoms is None:
        return 1, f"line {line} should be the number of atoms, not {_clip(header)}"
    says = f"the atom count on line {line} is {natoms}"
    if ahead.peek(1) is None:
        return 1, f"{says}, but the file ends there"
    for k in range(natoms):
        atom = ahead.peek(2 + k)
        if atom is None or len(atom.split()) < 4:
            end = (
                f"(line {line + 2 + k} is {_clip(atom)})" if atom else "before the end of the file"
            )
            return 2 + k, f"{says}, but only {k} atom lines follow {end}"
    n = 2 + natoms
    while (after := ahead.peek(n)) is not None and after.lstrip().startswith("VEC"):
        n += 1
    if after is not None and _atom_count(after) is None and len(after.split()) >= 4:
        return n, f"{says}, but more atom lines follow (line {line + n})"
    return n, None


def _atom_count(line: str | None) -> int | None:
    """The number a line holds alone (a frame's atom count), or None."""
    text = (line or "").strip()
    return int(text) if text.isdecimal() else None


def _clip(line: str, limit: int = 40) -> str:
    text = line.strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
