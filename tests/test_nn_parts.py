"""Radial bases, the spherical grid and single equivariant layers."""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3

from mlip.nn.layers import Convolution, EquivariantNorm, GridMixing
from mlip.nn.radial import cubic_bspline_basis, polynomial_envelope
from mlip.nn.sphere import (
    SphericalGrid,
    default_grid_size,
    exact_grid_size,
    gauss_legendre_grid,
    spherical_harmonics,
)

from .conftest import default_dtype


def test_bspline_partition_of_unity_and_smoothness():
    r = torch.linspace(1.0, 5.0, 101, dtype=torch.float64, requires_grad=True)
    basis = cubic_bspline_basis(r, 6.0, 13)  # interior knots cover [1, 5] fully
    assert torch.allclose(basis.sum(-1), torch.ones_like(r), atol=1e-12)
    assert int((basis > 0).sum(-1).max()) <= 4
    (d2,) = torch.autograd.grad(basis[:, 6].sum(), r, create_graph=True)
    (dd2,) = torch.autograd.grad(d2.sum(), r)
    assert dd2.abs().max() < 10.0  # C2: a finite, bounded second derivative


def test_envelope_vanishes_smoothly_at_cutoff():
    r = torch.tensor([0.0, 5.999999, 6.0, 7.0], dtype=torch.float64, requires_grad=True)
    u = polynomial_envelope(r, 6.0)
    (du,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (ddu,) = torch.autograd.grad(du.sum(), r)
    assert float(u[0]) == 1.0 and float(u[2]) == 0.0 and float(u[3]) == 0.0
    assert abs(float(u[1])) < 1e-12 and abs(float(du[1])) < 1e-8 and abs(float(ddu[1])) < 1e-4


@pytest.mark.parametrize("n_beta, n_alpha", [(4, 7), (10, 19)])
def test_quadrature_integrates_polynomials_exactly(n_beta, n_alpha):
    points, weights = gauss_legendre_grid(n_beta, n_alpha)
    assert weights.sum().item() == pytest.approx(4 * math.pi, abs=1e-12)
    x, y, z = points.T
    degree = min(2 * n_beta - 1, n_alpha - 1)
    # integral of z^2k over the sphere is 4 pi / (2k + 1); x^2 y^2 integrates to 4 pi / 15
    for k in range(degree // 2 + 1):
        assert float((weights * z ** (2 * k)).sum()) == pytest.approx(
            4 * math.pi / (2 * k + 1), abs=1e-12
        )
    assert float((weights * x**2 * y**2).sum()) == pytest.approx(4 * math.pi / 15, abs=1e-12)


def test_grid_round_trip_is_exact():
    with default_dtype(torch.float64):
        grid = SphericalGrid(3, *default_grid_size(3))
    x = torch.randn(5, 16, dtype=torch.float64)
    assert torch.allclose(grid.from_grid(grid.to_grid(x)), x, atol=1e-12)


def _wigner(rotation, l_max=2):
    # in float64: e3nn >= 0.5 builds the D matrices from generators in the default dtype
    with default_dtype(torch.float64):
        return [o3.Irrep(l, (-1) ** l).D_from_matrix(rotation) for l in range(l_max + 1)]


def _rotate(h, d):
    return [torch.einsum("ij,ncj->nci", d[l], x) for l, x in enumerate(h)]


def _error(a, b) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b, strict=True))


def test_layers_are_equivariant_including_reflections():
    torch.manual_seed(0)
    channels = [8, 4, 4]
    with default_dtype(torch.float64):
        exact = GridMixing(channels, 4, 8, 2, exact_grid_size(2, 2), "poly2")
        silu = GridMixing(channels, 4, 8, 2, default_grid_size(2), "silu")
        norm = EquivariantNorm(channels)
        conv = Convolution(channels, channels, 2, 5.0)
    h = [torch.randn(6, c, 2 * l + 1, dtype=torch.float64) for l, c in enumerate(channels)]
    vec = torch.randn(20, 3, dtype=torch.float64) * 2
    edges = torch.randint(0, 6, (2, 20))
    for rotation in (o3.rand_matrix(dtype=torch.float64), -o3.rand_matrix(dtype=torch.float64)):
        d = _wigner(rotation)
        assert _error(exact(_rotate(h, d)), _rotate(exact(h), d)) < 1e-12
        assert _error(norm(_rotate(h, d)), _rotate(norm(h), d)) < 1e-12
        assert _error(silu(_rotate(h, d)), _rotate(silu(h), d)) < 1e-4  # aliasing, measured ~5e-6
        one = torch.tensor(1.0, dtype=torch.float64)
        sh, sh_rot = spherical_harmonics(2, vec), spherical_harmonics(2, vec @ rotation.T)
        out = conv(_rotate(h, d), sh_rot, vec.norm(dim=1), edges, one)
        assert _error(out, _rotate(conv(h, sh, vec.norm(dim=1), edges, one), d)) < 1e-12
    # the pseudo-vector path (1o x 1o -> 1e) is excluded: mirror images are not distinguished
    assert all((l1 + l2 + l3) % 2 == 0 for l1, paths in conv.groups for l2, l3 in paths)


def test_poly2_default_grid_is_the_smallest_exact_one():
    """Facet's default grid for ``poly2`` is exact_grid_size's 4 x 7 (for l_max 2): mixing on it is
    equivariant to rounding, and on one longitude fewer it is not."""
    from mlip.nn.facet import Facet

    torch.manual_seed(0)
    with default_dtype(torch.float64):
        facet = Facet(2, channels=[8, 4, 4], grid_channels=4, grid_activation="poly2")
        small = GridMixing([8, 4, 4], 4, 16, 2, (4, 6), "poly2")
    grid = facet.mixings[0].grid
    assert (grid.num_points, exact_grid_size(2, 2)) == (28, (4, 7))
    weights = {k: v for k, v in facet.mixings[0].state_dict().items() if not k.startswith("grid.")}
    small.load_state_dict(weights, strict=False)  # the same weights on the smaller grid
    h = [torch.randn(6, c, 2 * l + 1, dtype=torch.float64) * 2 for l, c in enumerate([8, 4, 4])]
    d = _wigner(o3.rand_matrix(dtype=torch.float64))
    exact = facet.mixings[0]
    assert _error(exact(_rotate(h, d)), _rotate(exact(h), d)) < 1e-12
    assert _error(small(_rotate(h, d)), _rotate(small(h), d)) > 1e-6


@pytest.mark.parametrize("message_degree, grid", [(None, (3, 5)), (3, (4, 7))])
def test_last_layer_mixes_scalars_only_on_its_smaller_exact_grid(message_degree, grid):
    """The readout sees only scalars, so Facet's last layer projects the grid back onto l = 0
    alone: exact on 3 x 5 for degree-2 inputs (4 x 7 for degree 3), aliasing on one longitude
    fewer; its output, norm and residual gates are scalars only."""
    from mlip.nn.facet import Facet

    l_in = 2 if message_degree is None else message_degree
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        facet = Facet(
            2, channels=[8, 4, 4], l_sh=3, num_layers=2, grid_channels=4, grid_heads=1,
            grid_activation="poly2", message_degree=message_degree,
        )  # fmt: skip
        small = GridMixing(
            [8], 4, 16, 1, (grid[0], grid[1] - 1), "poly2", channels_in=[8, 4, 4, 4][: l_in + 1]
        )
    last = facet.mixings[-1]
    assert exact_grid_size(l_in, 2, 0) == grid
    assert last.grid.num_points == grid[0] * grid[1] < facet.mixings[0].grid.num_points
    weights = {k: v for k, v in last.state_dict().items() if not k.startswith("grid.")}
    small.load_state_dict(weights, strict=False)  # the same weights on the smaller grid
    h = [
        torch.randn(6, c, 2 * l + 1, dtype=torch.float64) * 2
        for l, c in enumerate([8, 4, 4, 4][: l_in + 1])
    ]
    rotation = -o3.rand_matrix(dtype=torch.float64)  # with a reflection
    d = _wigner(rotation, l_in)
    out = last(h)
    assert [x.shape[1:] for x in out] == [(8, 1)]
    assert _error(last(_rotate(h, d)), out) < 1e-12
    assert _error(small(_rotate(h, d)), small(h)) > 1e-6
    assert [g.shape[0] for g in facet.gammas] == [2, 1, 1]
    assert [len(norm.scales) for norm in facet.norms] == [3, 1]


@pytest.mark.parametrize("kind", ["spline", "bessel_mlp"])
def test_radial_weights_vanish_smoothly_at_cutoff(kind):
    from mlip.nn.radial import make_radial

    torch.manual_seed(0)
    with default_dtype(torch.float64):
        radial = make_radial(kind, 5.0, 7, 8, hidden=[16, 16])
    r = torch.tensor([2.5, 5.0 - 1e-4, 5.0], dtype=torch.float64, requires_grad=True)
    w = radial(r)
    (dw,) = torch.autograd.grad(w[1].sum(), r)
    assert w[0].abs().max() > 1e-2  # not trivially zero inside the cutoff
    assert w[1].abs().max() < 1e-6 and w[2].abs().max() == 0.0
    assert dw.abs().max() < 1e-4
    assert torch.allclose(radial.features(r) @ radial.matrix, w, atol=1e-14)


def test_norm_is_linear_in_vanishing_l_gt_0_features_and_scale_free():
    """Where the ``l > 0`` features vanish (by symmetry, at perfect crystals) the norm is linear in
    them, gain ``1 / sqrt(vector_floor * sigma_0^2)``; scaling all inputs by one factor leaves the
    output unchanged (up to ``eps``). With ``vector_floor=0`` (format <= 2 files) it saturates at ~1e-3 instead."""
    torch.manual_seed(0)
    channels = [8, 4, 4]
    with default_dtype(torch.float64):
        norm, unfloored = EquivariantNorm(channels), EquivariantNorm(channels, vector_floor=0.0)
    h = [torch.randn(5, c, 2 * l + 1, dtype=torch.float64) for l, c in enumerate(channels)]
    sigma_0_sq = (h[0] - h[0].mean(dim=1, keepdim=True)).pow(2).mean(dim=(1, 2))
    gain = torch.rsqrt(0.1 * sigma_0_sq + norm.eps)[:, None, None]
    for t in (1e-8, 1e-6, 1e-4):
        small = [h[0]] + [t * x for x in h[1:]]
        for x, y in zip(norm(small)[1:], h[1:], strict=True):
            assert torch.allclose(x / t, gain * y, rtol=1e-6)
    assert _error(norm([1e3 * x for x in h]), norm(h)) < 1e-5  # up to eps = 1e-6 against sigma^2
    with pytest.raises(ValueError, match="vector_floor"):
        EquivariantNorm(channels, vector_floor=-1.0)

    # from 1e-3 to 1e-1 the output grows almost 100-fold; the old norm's hardly at all
    def growth(layer: EquivariantNorm) -> float:
        size = [layer([h[0]] + [t * x for x in h[1:]])[1].abs().max() for t in (1e-3, 1e-1)]
        return float(size[1] / size[0])

    assert growth(norm) > 50 and growth(unfloored) < 10
