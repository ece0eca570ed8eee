"""What every reader and pass shares: where files keep labels (:class:`LabelKeys`) and the
bad-frame policy (:class:`BadFrames`). Imports nothing else of :mod:`mlip.data`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mlip.errors import UnreadableRest

OnError = Literal["raise", "skip"]


@dataclass
class BadFrames:
    """A pass's bad-frame policy and findings: ``"raise"`` raises a bad frame's error, ``"skip"``
    counts it, keeping the first ``keep`` messages, the dataset ``indices`` where known and how
    many are :class:`UnreadableRest` (a file not read past that point)."""

    on_error: OnError = "raise"
    count: int = 0
    messages: list[str] = field(default_factory=list)
    keep: int = 10_000
    indices: list[int] = field(default_factory=list)
    unreadable: int = 0

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def add(self, error: Exception, index: int | None = None) -> None:
        """Raise ``error`` (``on_error="raise"``) or count it (with the frame's ``index``)."""
        if self.on_error == "raise":
            raise error
        self.count += 1
        self.unreadable += isinstance(error, UnreadableRest)
        if len(self.messages) < self.keep:
            self.messages.append(str(error))
        if index is not None:
            self.indices.append(int(index))


@dataclass(frozen=True)
class LabelKeys:
    """Names under which a file keeps each label (calculator results, ``info`` or ``arrays``); a
    ``virial`` (eV; 3x3, 9 numbers or Voigt-6) is read only where no stress is, as
    ``-virial / volume``. A name no frame uses means that label is absent."""

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    virial: str = "virial"
    charge: str = "charge"
    spin: str = "spin"
