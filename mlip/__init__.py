"""mlip: fast E(3)-equivariant machine-learned interatomic potentials."""

import torch

# e3nn 0.4.4 (the version mace-torch pins) loads its constants with a plain torch.load, which
# torch >= 2.6 refuses under weights_only unless `slice` is an allowed global. `slice` carries no code.
torch.serialization.add_safe_globals([slice])

__version__ = "0.1.0"

from mlip.export import load_model, save_model  # noqa: E402
from mlip.nn.potential import Potential  # noqa: E402

__all__ = ["MLIPCalculator", "Potential", "load_model", "save_model", "__version__"]


def __getattr__(name: str):
    # the ASE calculator is imported on first use, so `import mlip` stays light
    if name == "MLIPCalculator":
        from mlip.calculator import MLIPCalculator

        return MLIPCalculator
    raise AttributeError(f"module 'mlip' has no attribute {name!r}")
