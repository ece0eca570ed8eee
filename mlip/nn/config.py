"""Constructor configs: what a model file stores to rebuild a model without Hydra or pickled code."""

from __future__ import annotations

from typing import Any


def constructor_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able constructor arguments from ``locals()`` taken at the top of ``__init__``.

    Tuples become lists; anything that is not a plain number, string, bool, None, list or dict
    raises, so a config can never smuggle an object into a model file.
    """
    config = {k: v for k, v in arguments.items() if k not in ("self", "__class__")}
    return {k: _plain(v, k) for k, v in config.items()}


def _plain(value: Any, name: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, name) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, name) for k, v in value.items()}
    raise TypeError(f"constructor argument {name!r} is a {type(value).__name__}, not a plain value")
