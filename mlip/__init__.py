"""mlip: fast E(3)-equivariant machine-learned interatomic potentials.

The names below are imported on first use, so that ``import mlip`` (and with it every ``mlip``
command's start-up) does not wait for torch.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["MLIPCalculator", "Potential", "load_model", "save_model", "__version__"]

_WHERE = {
    "MLIPCalculator": "mlip.calculator",
    "Potential": "mlip.nn.potential",
    "load_model": "mlip.export",
    "save_model": "mlip.export",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mlip' has no attribute {name!r}")
