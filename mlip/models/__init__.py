"""The bundled default model (``default.pt``), trained by ``scripts/train_default_model.py``."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = Path(__file__).with_name("default.pt")


def default_model_path() -> Path:
    """Path of the bundled default model; raises ``FileNotFoundError`` if it is not installed."""
    if not DEFAULT_MODEL.is_file():
        raise FileNotFoundError(
            f"the bundled default model {DEFAULT_MODEL} is missing: give a model file with "
            "--model, or create it with scripts/train_default_model.py"
        )
    return DEFAULT_MODEL
