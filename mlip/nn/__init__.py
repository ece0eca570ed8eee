"""Neural-network models: per-atom energies from species and edge vectors."""

from mlip.nn.facet import Facet

__all__ = ["Facet"]
