"""Radial functions: per-edge weights from interatomic distances.

``SplineRadial`` (the Facet choice) is linear in a cubic B-spline basis times a smooth envelope:
one ``[E, K] x [K, W]`` product. ``BesselMLPRadial`` (the MACE/NequIP choice) feeds sine-Bessel
functions through an MLP; it is kept for ablations and for the MACE-like model.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn


def polynomial_envelope(r: Tensor, r_max: float, p: int = 5) -> Tensor:
    """Smooth cutoff ``u(r)``: 1 at r=0, and 0 with zero first and second derivative at ``r_max``.

    ``r`` in Å, any shape; returns the same shape (DimeNet's polynomial of degree ``p + 2``).
    """
    x = r / r_max
    u = (
        1.0
        - (p + 1) * (p + 2) / 2 * x**p
        + p * (p + 2) * x ** (p + 1)
        - p * (p + 1) / 2 * x ** (p + 2)
    )
    return u * (x < 1.0)


def cubic_bspline_basis(r: Tensor, r_max: float, num_basis: int) -> Tensor:
    """Uniform cubic B-splines centred on ``num_basis`` knots spread over ``[0, r_max]``.

    ``r [E]`` in Å -> ``[E, num_basis]``; at most four entries per row are non-zero and the basis
    is twice continuously differentiable.
    """
    spacing = r_max / (num_basis - 1)
    centres = torch.arange(num_basis, dtype=r.dtype, device=r.device) * spacing
    t = ((r.unsqueeze(-1) - centres) / spacing).abs()
    inner = 2.0 / 3.0 - t**2 + 0.5 * t**3
    outer = (2.0 - t).clamp(min=0.0) ** 3 / 6.0
    return torch.where(t < 1.0, inner, outer)


class SplineRadial(nn.Module):
    """Per-edge weights linear in a cubic B-spline basis, times a smooth envelope.

    Args:
        r_max: cutoff radius, Å.
        num_out: number of weights per edge (paths x channels).
        num_basis: number of B-spline knots ``K``.
    """

    def __init__(self, r_max: float, num_out: int, num_basis: int = 10) -> None:
        super().__init__()
        self.r_max = float(r_max)
        self.num_basis = num_basis
        self.weight = nn.Parameter(torch.randn(num_basis, num_out) * math.sqrt(3.0 / num_basis))

    def features(self, r: Tensor) -> Tensor:
        """``r [E]`` Å -> B-spline basis times envelope ``[E, num_basis]``.

        ``forward(r) == features(r) @ matrix``; layers that need only some of the outputs, or
        each output repeated, multiply by the matching columns of :attr:`matrix` instead.
        """
        basis = cubic_bspline_basis(r, self.r_max, self.num_basis)
        return basis * polynomial_envelope(r, self.r_max).unsqueeze(-1)

    @property
    def matrix(self) -> Tensor:
        """The linear map ``[num_basis, num_out]`` from :meth:`features` to the weights."""
        return self.weight

    def forward(self, r: Tensor) -> Tensor:
        """``r [E]`` Å -> weights ``[E, num_out]``."""
        return self.features(r) @ self.weight


class BesselMLPRadial(nn.Module):
    """MACE-style radial weights: sine-Bessel functions times the envelope, then a bias-free MLP
    with variance-preserving initialisation and normalised SiLU. The MLP maps 0 to 0, so the
    weights vanish with two zero derivatives at ``r_max``.

    Args:
        r_max: cutoff radius, Å.
        num_out: number of weights per edge.
        num_basis: number of Bessel functions.
        hidden: hidden widths of the MLP, e.g. ``(64, 64, 64)``.
    """

    def __init__(
        self,
        r_max: float,
        num_out: int,
        num_basis: int = 8,
        hidden: tuple[int, ...] | list[int] = (64, 64, 64),
    ) -> None:
        super().__init__()
        self.r_max = float(r_max)
        self.register_buffer(
            "frequencies",
            torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi,
            persistent=False,
        )
        widths = [num_basis, *hidden, num_out]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(w_in, w_out)) for w_in, w_out in itertools.pairwise(widths)
        )

    def features(self, r: Tensor) -> Tensor:
        """``r [E]`` Å -> the last hidden layer ``[E, hidden[-1]]``; ``forward == features @ matrix``."""
        x = r.unsqueeze(-1)
        y = math.sqrt(2.0 / self.r_max) * torch.sin(self.frequencies * x / self.r_max) / x
        y = y * polynomial_envelope(x, self.r_max)
        for w in self.weights[:-1]:
            y = SILU_NORM * nn.functional.silu(y @ w / math.sqrt(w.shape[0]))
        return y

    @property
    def matrix(self) -> Tensor:
        """The output layer ``[hidden[-1], num_out]``, normalisation included."""
        w = self.weights[-1]
        return w / math.sqrt(w.shape[0])

    def forward(self, r: Tensor) -> Tensor:
        """``r [E]`` Å -> weights ``[E, num_out]``."""
        return self.features(r) @ self.matrix


# SiLU scaled to unit second moment for unit-normal inputs (e3nn's normalised activation)
SILU_NORM = 1.6765


def make_radial(
    kind: str,
    r_max: float,
    num_out: int,
    num_basis: int,
    hidden: tuple[int, ...] | list[int] = (64, 64, 64),
) -> nn.Module:
    """Radial module by name: ``"spline"`` or ``"bessel_mlp"`` (``hidden``: its MLP widths)."""
    if kind == "spline":
        return SplineRadial(r_max, num_out, num_basis)
    if kind == "bessel_mlp":
        return BesselMLPRadial(r_max, num_out, num_basis, hidden)
    raise ValueError(f"unknown radial {kind!r}: expected 'spline' or 'bessel_mlp'")
