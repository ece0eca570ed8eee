"""Constructor configs (what a model file stores to rebuild a model without Hydra or pickled code)
and the dtype models are built in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def constructor_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able constructor arguments from ``locals()`` taken at the top of ``__init__``.

    Tuples become lists; anything that is not a plain number, string, bool, None, list or dict
    raises, so a config can never smuggle an object into a model file.
    """
    config = {k: v for k, v in arguments.items() if k not in ("self", "__class__")}
    return {k: _plain(v, k) for k, v in config.items()}


@contextmanager
def default_dtype(dtype: torch.dtype | str) -> Iterator[None]:
    """Build modules in ``dtype`` (``torch.float32``, ``"float64"``, ...): torch's default dtype
    is set inside the block and restored after it."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _plain(value: Any, name: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, name) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, name) for k, v in value.items()}
    raise TypeError(f"constructor argument {name!r} is a {type(value).__name__}, not a plain value")
