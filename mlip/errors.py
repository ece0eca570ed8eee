"""Every error a user can cause, the unknown-element message, and how the commands report them.

The library raises these; the commands turn the ones in :data:`INPUT_ERRORS` (and the training
errors ``mlip train`` knows) into one line, ``mlip <command>: error: <message>``, through
:func:`report_errors`. Messages start with what is at fault (``<file>, frame <k>: ...``). This
module imports nothing heavy, so that any module may raise from it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence

# -- data and structures ---------------------------------------------------------------------------


class DataError(ValueError):
    """A file that cannot be read, or a frame whose labels are missing or malformed."""


class UnreadableRest(DataError):
    """A file that cannot be parsed past one of its frames: that frame and the rest were not read."""


class StructureFileError(ValueError):
    """A structure file that is missing, empty, unreadable, holds no atoms, or (a CIF) holds a
    partly occupied site or two atom sites at one position."""


class GeometryError(ValueError):
    """A structure no graph can be built from: non-finite positions or cell, a periodic cell
    without volume, or (:class:`AtomsTooCloseError`) two atoms closer than allowed."""


class AtomsTooCloseError(GeometryError):
    """Two atoms are closer than the smallest allowed distance."""


class UnknownElementError(ValueError):
    """A structure holds an element that the model was not trained on."""


def unknown_elements(numbers: Iterable[int], known: Sequence[str]) -> str:
    """The one message for atomic numbers ``numbers`` that a model knowing ``known`` (chemical
    symbols) lacks: ``"element Cu, Zn is not known to this model, which knows H, C, O"``."""
    from ase.data import chemical_symbols

    names = ", ".join(chemical_symbols[z] if 0 < z < 119 else f"Z={z}" for z in sorted(numbers))
    return f"element {names} is not known to this model, which knows {', '.join(known)}"


# -- model files and outputs -----------------------------------------------------------------------


class ModelFileError(ValueError):
    """A model file that is missing, corrupt, truncated or from a newer mlip."""


class NonFiniteOutputError(ValueError):
    """The model gave a NaN or infinite energy, force or stress."""


class OutputError(ValueError):
    """An output path the command could not write: checked before the work starts."""


# -- training runs ---------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A config value of the wrong kind, found before any data is read."""


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be read."""


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used: not writable, or (:class:`RunDirectoryInUse`) taken."""


class RunDirectoryInUse(RunDirectoryError):
    """Another live process is training in the same run directory."""


class NonFiniteLossError(RuntimeError):
    """Training stopped: too many consecutive non-finite losses or gradients, or an epoch with no
    finite one."""


class TrainingTerminated(RuntimeError):
    """The run got SIGTERM; its last finished epoch is in ``checkpoints/last.ckpt``."""


class TrainingInterrupted(KeyboardInterrupt):
    """The run got SIGINT (Ctrl+C) while fitting or testing; its last finished epoch is in
    ``checkpoints/last.ckpt``."""


# -- reporting -------------------------------------------------------------------------------------

INPUT_ERRORS = (
    DataError,
    StructureFileError,
    GeometryError,
    UnknownElementError,
    ModelFileError,
    NonFiniteOutputError,
    OutputError,
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
)
"""Errors caused by what the user gave (files, elements, geometry, outputs): the commands report
them in one line, without a traceback."""


def one_line(err: BaseException | str, limit: int = 300) -> str:
    """The first line of an error message, whitespace collapsed, at most ``limit`` characters."""
    lines = str(err).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def report_errors(prog: str, run: Callable[[argparse.Namespace], int], args) -> int:
    """Run a command; a user error (:data:`INPUT_ERRORS`) becomes one line on stderr and exit
    status 1, never a traceback."""
    try:
        return run(args)
    except INPUT_ERRORS as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 1
