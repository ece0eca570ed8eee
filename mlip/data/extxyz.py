"""Splitting an extxyz file into the text of each frame, so that one bad frame is one bad frame.

ASE's extxyz reader scans every frame header before it returns the first frame, so a wrong atom
count anywhere fails the whole file with a message that names no frame, and a parse error ends the
file. Here the file is cut at its atom-count lines (checked against the atom lines that follow)
and each frame's text goes to ASE alone (:func:`mlip.data.readers.iter_frames`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class MalformedFrame(Exception):
    """An extxyz frame whose atom count does not fit its lines (the message says how); with
    ``ends_file`` the rest of the file cannot be read either."""

    def __init__(self, message: str, ends_file: bool = False) -> None:
        super().__init__(message)
        self.ends_file = ends_file


def frame_texts(path: Path) -> Iterator[tuple[int, str | MalformedFrame]]:
    """``(frame, text)`` for every frame of an extxyz file, or ``(frame, MalformedFrame)`` for one
    whose atom-count line is not a number or does not match the atom lines that follow.

    A frame is its count line, a comment line, that many atom lines (each of at least 4 fields:
    species and position) and optional ``VEC`` lines; blank lines between frames are skipped.
    After a bad frame, reading resumes at the next line that starts a well-formed frame, and
    frames are counted as if the damage were one frame. A file that is not UTF-8 text cannot be
    read past the first line that is not: a :class:`MalformedFrame` with ``ends_file`` ends it.
    """
    with open(path, encoding="utf-8") as file:
        lines = _Lines(file)
        frame = 0
        try:
            while (line := lines.next()) is not None:
                if not line.strip():
                    continue
                lines.push(line)
                try:
                    text = _xyz_frame(lines)
                except MalformedFrame as err:
                    yield frame, err
                    _resync(lines)
                else:
                    yield frame, text
                frame += 1
        except UnicodeDecodeError as err:
            message = f"not UTF-8 text ({err}) (frames {frame}.. not read)"
            yield frame, MalformedFrame(message, ends_file=True)


class _Lines:
    """The lines of a text file, counted from 1, with lines pushed back to be read again and,
    while ``record`` is a list, a record of the lines read (less those pushed back)."""

    def __init__(self, file: Any) -> None:
        self.file, self.number = file, 0
        self.pushed: deque[str] = deque()
        self.record: list[str] | None = None

    def next(self) -> str | None:
        line = self.pushed.popleft() if self.pushed else self.file.readline() or None
        if line is not None:
            self.number += 1
            if self.record is not None:
                self.record.append(line)
        return line

    def push(self, *lines: str) -> None:
        """Put ``lines`` (the last ones read, in order) back to be read again."""
        self.pushed.extendleft(reversed(lines))
        self.number -= len(lines)
        if self.record is not None and lines:
            del self.record[-len(lines) :]


def _xyz_frame(lines: _Lines) -> str:
    """The text of the frame whose count line comes next; a line after it that may start the
    next frame is left unread. Raises :class:`MalformedFrame` where the count is not a number or does
    not match the atom lines."""
    header = lines.next()
    natoms = _atom_count(header)
    if natoms is None:
        raise MalformedFrame(
            f"line {lines.number} should be the number of atoms, not {_clip(header)}"
        )
    says = f"the atom count on line {lines.number} is {natoms}"
    body = [header, lines.next()]
    if body[1] is None:
        raise MalformedFrame(f"{says}, but the file ends there")
    for k in range(natoms):
        line = lines.next()
        if line is None:
            raise MalformedFrame(
                f"{says}, but only {k} atom lines follow before the end of the file"
            )
        if len(line.split()) < 4:
            lines.push(line)
            where = f"line {lines.number + 1} is {_clip(line)}"
            raise MalformedFrame(f"{says}, but only {k} atom lines follow ({where})")
        body.append(line)
    while (line := lines.next()) is not None and line.lstrip().startswith("VEC"):
        body.append(line)
    if line is not None:
        lines.push(line)
        if _atom_count(line) is None and len(line.split()) >= 4:
            raise MalformedFrame(f"{says}, but more atom lines follow (line {lines.number + 1})")
    return "".join(body)


def _resync(lines: _Lines) -> None:
    """Skip lines up to the start of the next well-formed frame (or the end of the file)."""
    while (line := lines.next()) is not None:
        if _atom_count(line) is None:
            continue
        lines.push(line)
        lines.record = []
        try:
            _xyz_frame(lines)
        except MalformedFrame:
            # a false start (e.g. a comment line that is a number): go on after its first line
            tried, lines.record = lines.record, None
            lines.push(*tried[1:])
            continue
        tried, lines.record = lines.record, None
        lines.push(*tried)  # to be read for real
        return


def _atom_count(line: str | None) -> int | None:
    try:
        natoms = int(line)
    except (TypeError, ValueError):
        return None
    return natoms if natoms >= 0 else None


def _clip(line: str, limit: int = 40) -> str:
    text = line.strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
