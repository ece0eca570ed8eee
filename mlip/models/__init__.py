"""The bundled models, by name: ``si`` (the Si demo model, trained on Zuo et al. 2020 PBE data)
and ``universal`` (distilled from SevenNet-0 across the periodic table, once it is installed);
``default`` is the one used when no model is given (now ``si``). Both are recreated by
``scripts/train_default_model.py``; a model option takes a name or a model file."""

from __future__ import annotations

import os
from pathlib import Path

from mlip.errors import ModelFileError

MODELS_DIR = Path(__file__).parent
BUNDLED = {"default": "si.pt", "si": "si.pt", "universal": "universal.pt"}
"""Names of the bundled models and their files in this package."""


def model_file(model: str | os.PathLike | None = None) -> Path:
    """The file of ``model``: a bundled model's name (None: ``default``), else a path. A file by
    a bundled name in the working directory is that file, not the bundled model. Raises
    :class:`~mlip.errors.ModelFileError` if a bundled model is not installed."""
    if model is None:
        model = "default"
    name = os.fspath(model)
    if name in BUNDLED and not Path(name).exists():
        path = MODELS_DIR / BUNDLED[name]
        if not path.is_file():
            raise ModelFileError(
                f"the bundled model {name!r} ({path}) is missing: give a model file, or create "
                "it with scripts/train_default_model.py"
            )
        return path
    return Path(model)
