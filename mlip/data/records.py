"""What every reader and pass shares: the names under which files store labels, and what happens to
a bad frame. Imports nothing else of :mod:`mlip.data`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mlip.errors import UnreadableRest

OnError = Literal["raise", "skip"]


@dataclass
class BadFrames:
    """Frames left out of a pass (``on_error="skip"``): all counted, the first ``keep`` kept."""

    count: int = 0
    messages: list[str] = field(default_factory=list)
    keep: int = 10_000
    indices: list[int] = field(default_factory=list)
    """Dataset indices of all bad frames, where the pass knew them (:func:`dataset_graphs`)."""
    unreadable: int = 0
    """How many of the errors are an :class:`UnreadableRest`: a file not read past that point."""

    def add(self, error: Exception, on_error: OnError, index: int | None = None) -> None:
        """Raise ``error`` (``on_error="raise"``) or count it (with the frame's ``index``)."""
        if on_error == "raise":
            raise error
        if on_error != "skip":
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.count += 1
        self.unreadable += isinstance(error, UnreadableRest)
        if len(self.messages) < self.keep:
            self.messages.append(str(error))
        if index is not None:
            self.indices.append(int(index))


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
