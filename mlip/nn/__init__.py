"""Neural-network models: per-atom energies from species and edge vectors."""

import torch

# e3nn 0.4.4 (the version mace-torch pins) loads its constants with a plain torch.load, which
# torch >= 2.6 refuses under weights_only unless `slice` is an allowed global. `slice` carries no
# code. This package is imported before any of its modules, hence before e3nn.
torch.serialization.add_safe_globals([slice])

from mlip.nn.facet import Facet  # noqa: E402

__all__ = ["Facet"]
