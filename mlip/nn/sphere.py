"""Functions on the sphere: real spherical harmonics, Clebsch-Gordan blocks and the
Gauss-Legendre grid with its projection matrices.

Irreps follow e3nn: degree ``l`` has ``2l + 1`` components and, for the spherical harmonics and
all node features here, parity ``(-1)^l`` (0e, 1o, 2e, 3o). A block of all degrees up to ``L`` is
stored as ``[..., (L + 1)^2]`` with degree ``l`` at ``l^2 : (l + 1)^2``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from e3nn import o3
from torch import Tensor, nn


def spherical_harmonics(l_max: int, vectors: Tensor) -> Tensor:
    """Real spherical harmonics of the directions of ``vectors [..., 3]`` -> ``[..., (l_max+1)^2]``.

    Component normalisation: each degree has mean square 1 over the sphere per component.
    """
    return o3.spherical_harmonics(
        list(range(l_max + 1)), vectors, normalize=True, normalization="component"
    )


def irrep_slice(l: int) -> slice:
    """Columns of degree ``l`` in a ``[..., (L+1)^2]`` block."""
    return slice(l * l, (l + 1) * (l + 1))


def clebsch_gordan(l1: int, l2: int, l3: int) -> Tensor:
    """Real Clebsch-Gordan block ``[2l1+1, 2l2+1, 2l3+1]`` (e3nn's Wigner 3j, Frobenius norm 1)."""
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


def gauss_legendre_grid(n_beta: int, n_alpha: int) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre product grid on the unit sphere.

    ``n_beta`` latitudes at the Gauss-Legendre nodes of ``cos(beta)`` times ``n_alpha`` equally
    spaced longitudes. Returns unit vectors ``[P, 3]`` and quadrature weights ``[P]`` (summing to
    4 pi), float64. The quadrature integrates spherical polynomials of degree up to
    ``min(2 n_beta - 1, n_alpha - 1)`` exactly.
    """
    cos_beta, w_beta = np.polynomial.legendre.leggauss(n_beta)
    alpha = 2 * np.pi * np.arange(n_alpha) / n_alpha
    sin_beta = np.sqrt(1.0 - cos_beta**2)
    x = sin_beta[:, None] * np.cos(alpha)[None, :]
    y = sin_beta[:, None] * np.sin(alpha)[None, :]
    z = np.broadcast_to(cos_beta[:, None], x.shape)
    points = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    weights = np.broadcast_to(w_beta[:, None] * (2 * np.pi / n_alpha), x.shape).reshape(-1)
    return torch.tensor(points), torch.tensor(np.ascontiguousarray(weights))


def default_grid_size(l_max: int) -> tuple[int, int]:
    """Our default grid for features up to ``l_max``: ``n_beta = 2 l_max + 6``, ``n_alpha = 2 n_beta - 1``.

    With SiLU and unit-variance inputs this keeps one mixing layer's equivariance error near 1e-7
    for ``l_max = 2`` (see facet.md); it is exact for polynomials of degree ``q`` while
    ``q l_max + l_max + 1 <= n_alpha`` and ``<= 2 n_beta``.
    """
    n_beta = 2 * l_max + 6
    return n_beta, 2 * n_beta - 1


def exact_grid_size(l_max: int, degree: int, l_out: int | None = None) -> tuple[int, int]:
    """Smallest grid on which a pointwise polynomial of ``degree`` in functions of degree
    ``<= l_max`` is projected back exactly onto degrees ``<= l_out`` (default ``l_max``).

    The projection integrates a spherical polynomial of degree ``degree * l_max + l_out``, which
    needs ``n_alpha >= band`` and ``2 n_beta >= band`` for ``band = degree * l_max + l_out + 1``.
    """
    band = degree * l_max + (l_max if l_out is None else l_out) + 1
    return math.ceil(band / 2), band


class SphericalGrid(nn.Module):
    """Projection of degree-``<= l_max`` coefficients onto a Gauss-Legendre grid and back.

    ``to_grid``: ``[..., (l_max+1)^2] -> [..., P]`` evaluates ``f(s) = sum_lm x_lm Y_lm(s) / sqrt(D)``;
    ``from_grid``: ``[..., P] -> [..., (l_out+1)^2]`` integrates against the harmonics of degree
    ``<= l_out`` (default ``l_max``) with the quadrature weights. ``from_grid(to_grid(x))`` is
    ``x`` on the degrees up to ``min(l_max, l_out)``, exactly.
    """

    def __init__(self, l_max: int, n_beta: int, n_alpha: int, l_out: int | None = None) -> None:
        super().__init__()
        points, weights = gauss_legendre_grid(n_beta, n_alpha)
        l_out = l_max if l_out is None else l_out
        dim = (l_max + 1) ** 2
        y = o3.spherical_harmonics(
            list(range(max(l_max, l_out) + 1)), points, normalize=True, normalization="integral"
        ) * math.sqrt(4 * math.pi)  # orthonormal under the sphere average
        dtype = torch.get_default_dtype()
        y_in, y_out = y[:, :dim], y[:, : (l_out + 1) ** 2]
        self.register_buffer("to_matrix", (y_in.T / math.sqrt(dim)).to(dtype).contiguous())
        self.register_buffer(
            "from_matrix",
            (y_out * (weights / (4 * math.pi)).unsqueeze(-1) * math.sqrt(dim))
            .to(dtype)
            .contiguous(),
        )
        self.l_max = l_max
        self.num_points = points.shape[0]

    def to_grid(self, x: Tensor) -> Tensor:
        return x @ self.to_matrix

    def from_grid(self, g: Tensor) -> Tensor:
        return g @ self.from_matrix
