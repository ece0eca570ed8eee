"""An extxyz file cut into the text of each frame at its atom-count lines (checked against the
atom lines that follow), so that one bad frame is one bad frame: ASE's own reader checks every
header before the first frame and names no frame in its errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any


class MalformedFrame(Exception):
    """A frame whose atom count does not fit its ``lines`` lines; with ``ends_file`` the rest of
    the file cannot be read either."""

    def __init__(self, message: str, ends_file: bool = False, lines: int = 1) -> None:
        super().__init__(message)
        self.ends_file, self.lines = ends_file, lines


def frame_texts(path: Path) -> Iterator[tuple[int, str | MalformedFrame]]:
    """``(frame, text)`` for every frame of an extxyz file (a count line, a comment, that many atom
    lines of 4+ fields, ``VEC`` lines), or ``(frame, MalformedFrame)``; after a bad frame reading
    resumes at the next well-formed one. A line that is not UTF-8 ends the file."""
    with open(path, encoding="utf-8") as file:
        ahead, frame, lost = _Ahead(file), 0, False  # lost: after a bad frame, until a good one
        try:
            while (line := ahead.peek(0)) is not None:
                if not line.strip():
                    ahead.take(1)
                    continue
                try:
                    text = ahead.take(_frame_lines(ahead))
                except MalformedFrame as err:
                    if not lost:  # lost, a line that starts no frame is taken alone
                        yield frame, err
                    ahead.take(1 if lost else err.lines)
                    lost = True
                    continue
                frame += lost  # the bad frame's number was taken once reading resumed
                yield frame, text
                frame, lost = frame + 1, False
        except UnicodeDecodeError as err:
            message = f"not UTF-8 text ({err}) (frames {frame}.. not read)"
            yield frame, MalformedFrame(message, ends_file=True)


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


def _frame_lines(ahead: _Ahead) -> int:
    """How many lines the frame starting at the next line spans (nothing is taken); raises
    :class:`MalformedFrame` where its count is not a number or does not match its atom lines."""
    line, header = ahead.number + 1, ahead.peek(0)
    natoms = _atom_count(header)
    if natoms is None:
        raise MalformedFrame(f"line {line} should be the number of atoms, not {_clip(header)}")
    says = f"the atom count on line {line} is {natoms}"
    if ahead.peek(1) is None:
        raise MalformedFrame(f"{says}, but the file ends there")
    for k in range(natoms):
        atom = ahead.peek(2 + k)
        if atom is None:
            end = "before the end of the file"
            raise MalformedFrame(f"{says}, but only {k} atom lines follow {end}", lines=2 + k)
        if len(atom.split()) < 4:
            where = f"line {line + 2 + k} is {_clip(atom)}"
            raise MalformedFrame(f"{says}, but only {k} atom lines follow ({where})", lines=2 + k)
    n = 2 + natoms
    while (after := ahead.peek(n)) is not None and after.lstrip().startswith("VEC"):
        n += 1
    if after is not None and _atom_count(after) is None and len(after.split()) >= 4:
        raise MalformedFrame(f"{says}, but more atom lines follow (line {line + n})", lines=n)
    return n


def _atom_count(line: str | None) -> int | None:
    try:
        natoms = int(line)
    except (TypeError, ValueError):
        return None
    return natoms if natoms >= 0 else None


def _clip(line: str, limit: int = 40) -> str:
    text = line.strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
