"""The MACE-like model: the grid (Gaunt) product against e3nn's Clebsch-Gordan coefficients."""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path

import pytest
import torch
import yaml
from e3nn import o3
from sympy.physics.wigner import wigner_3j as sympy_wigner_3j

from mlip.data import atoms_to_batch
from mlip.nn.mace import MACE, GauntProduct, product_grid_size
from mlip.nn.sphere import SphericalGrid, irrep_slice

from .conftest import CUTOFF, default_dtype, ethanol, make_model

CONFIG = Path(__file__).parents[1] / "conf" / "model" / "mace.yaml"


@functools.cache
def _harmonics_at_random_points(l_max: int = 10) -> torch.Tensor:
    """Integral-normalised e3nn harmonics of degrees ``<= l_max`` at 64 random directions."""
    points = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return o3.spherical_harmonics(list(range(l_max + 1)), points, True, "integral")


@functools.cache
def gaunt_coefficient(l1: int, l2: int, l3: int) -> float:
    """``c`` with ``int Y_l1 Y_l2 Y_l3 dOmega = c * wigner_3j(l1, l2, l3)`` (e3nn's real harmonics,
    integral-normalised), found without any quadrature.

    Since ``Y_l1 Y_l2 = sum_l3 Gaunt Y_l3`` and the 3j block is an isometry onto degree ``l3``,
    ``sum_m1m2 W[m1, m2, m3] Y_l1m1(r) Y_l2m2(r) = c / (2 l3 + 1) Y_l3m3(r)`` at every point ``r``.
    """
    y1, y2, y3 = (_harmonics_at_random_points()[:, irrep_slice(l)] for l in (l1, l2, l3))
    lhs = torch.einsum("ijk,pi,pj->pk", o3.wigner_3j(l1, l2, l3, dtype=torch.float64), y1, y2)
    k = float((lhs * y3).sum() / (y3 * y3).sum())
    assert (lhs - k * y3).abs().max() < 1e-12  # the contraction is proportional to Y_l3
    return k * (2 * l3 + 1)


@functools.cache
def gaunt_tensor(l1: int, l2: int, l3: int) -> torch.Tensor:
    """``int Y_l1 Y_l2 Y_l3 dOmega`` as a ``[2l1+1, 2l2+1, 2l3+1]`` block: e3nn's Clebsch-Gordan
    (Wigner 3j) block times :func:`gaunt_coefficient`."""
    return gaunt_coefficient(l1, l2, l3) * o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


def gaunt_multiply(p: torch.Tensor, x: torch.Tensor, l_out: int) -> torch.Tensor:
    """Coefficients (integral-normalised harmonics) of the product of two functions on the sphere,
    ``[..., (lp+1)^2] x [..., (lx+1)^2] -> [..., (l_out+1)^2]``, by Clebsch-Gordan coupling."""
    lp, lx = math.isqrt(p.shape[-1]) - 1, math.isqrt(x.shape[-1]) - 1
    out = p.new_zeros(*p.shape[:-1], (l_out + 1) ** 2)
    for l1 in range(lp + 1):
        for l2 in range(lx + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, l_out) + 1):
                cg = gaunt_tensor(l1, l2, l3).to(p.dtype)
                out[..., irrep_slice(l3)] += torch.einsum(
                    "...i,...j,ijk->...k", p[..., irrep_slice(l1)], x[..., irrep_slice(l2)], cg
                )
    return out


def reference_product(factors: list[torch.Tensor], l_out: int, l_grid: int) -> torch.Tensor:
    """What ``from_grid(to_grid(x_1) * ... * to_grid(x_nu))`` must give on a grid of degree
    ``l_grid``: its harmonics are ``sqrt(4 pi / D)`` times the integral-normalised ones, ``D =
    (l_grid + 1)^2``, since they have mean square one and ``to_grid`` divides by ``sqrt(D)``."""
    s = math.sqrt(4 * math.pi) / (l_grid + 1)
    l_in = math.isqrt(factors[0].shape[-1]) - 1
    q = factors[0] * s
    for k, x in enumerate(factors[1:], start=2):
        q = gaunt_multiply(q, x * s, k * l_in)
    return q[..., : (l_out + 1) ** 2] / s


@pytest.mark.parametrize(
    "l1, l2, l3", [(0, 0, 0), (1, 1, 0), (1, 1, 2), (1, 2, 3), (2, 2, 2), (3, 3, 4), (2, 3, 3)]
)
def test_gaunt_coefficient_matches_closed_form(l1, l2, l3):
    """|c| = sqrt((2l1+1)(2l2+1)(2l3+1) / 4pi) |(l1 l2 l3; 0 0 0)|; zero for odd l1 + l2 + l3."""
    c = gaunt_coefficient(l1, l2, l3)
    closed = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * math.pi)) * abs(
        float(sympy_wigner_3j(l1, l2, l3, 0, 0, 0))
    )
    assert abs(abs(c) - closed) < 1e-12
    assert (closed == 0.0) == ((l1 + l2 + l3) % 2 == 1)


@pytest.mark.parametrize("l_in, l_out", [(1, 1), (2, 0), (3, 3), (1, 2)])
def test_grid_product_equals_gaunt_clebsch_gordan_on_every_path(l_in, l_out):
    """The pointwise product on the module's grid, projected back, equals the CG product with
    Gaunt coefficients, path by path (l1, l2 <= l_in, l3 <= l_out); odd paths are absent."""
    with default_dtype(torch.float64):
        product = GauntProduct(1, 1, l_in, l_out, correlation=2)
    l_grid = max(l_in, l_out)
    gen = torch.Generator().manual_seed(l_in * 10 + l_out)
    for l1 in range(l_in + 1):
        for l2 in range(l_in + 1):
            x = torch.zeros(3, (l_in + 1) ** 2, dtype=torch.float64)
            y = torch.zeros_like(x)
            x[:, irrep_slice(l1)] = torch.randn(3, 2 * l1 + 1, generator=gen, dtype=torch.float64)
            y[:, irrep_slice(l2)] = torch.randn(3, 2 * l2 + 1, generator=gen, dtype=torch.float64)
            grid = product.from_grid(product.to_grid(x) * product.to_grid(y))
            ref = reference_product([x, y], l_out, l_grid)
            for l3 in range(l_out + 1):
                out, expected = grid[:, irrep_slice(l3)], ref[:, irrep_slice(l3)]
                assert (out - expected).abs().max() < 1e-10, (l1, l2, l3)
                allowed = abs(l1 - l2) <= l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0
                assert (expected.abs().max() > 1e-3) == allowed, (l1, l2, l3)


@pytest.mark.parametrize("l_in, l_out", [(1, 1), (2, 1), (3, 0), (3, 1)])
def test_triple_grid_product_equals_nested_gaunt(l_in, l_out):
    """The cubic product on the correlation-3 grid equals two nested Gaunt couplings."""
    with default_dtype(torch.float64):
        product = GauntProduct(1, 1, l_in, l_out, correlation=3)
    gen = torch.Generator().manual_seed(1)
    x, y, w = (
        torch.randn(4, (l_in + 1) ** 2, generator=gen, dtype=torch.float64) for _ in range(3)
    )
    grid = product.from_grid(product.to_grid(x) * product.to_grid(y) * product.to_grid(w))
    ref = reference_product([x, y, w], l_out, max(l_in, l_out))
    assert ref.abs().max() > 1e-2
    assert (grid - ref).abs().max() < 1e-10


def test_grid_below_product_grid_size_aliases():
    """The grid size of :func:`product_grid_size` is the smallest exact one: one fewer latitude or
    longitude changes the cubic product."""
    l_in, l_out = 2, 1
    n_beta, n_alpha = product_grid_size(l_in, l_out, 3)
    assert (n_beta, n_alpha) == (4, 8)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, (l_in + 1) ** 2, generator=gen, dtype=torch.float64)
    ref = reference_product([x, x, x], l_out, l_in)
    errors = []
    for size in [(n_beta, n_alpha), (n_beta - 1, n_alpha), (n_beta, n_alpha - 1)]:
        with default_dtype(torch.float64):
            grid = SphericalGrid(l_in, *size)
        out = grid.from_grid(grid.to_grid(x) ** 3)[:, : (l_out + 1) ** 2]
        errors.append(float((out - ref).abs().max()))
    assert errors[0] < 1e-10
    assert min(errors[1:]) > 1e-4


def test_product_module_equals_weighted_gaunt_reference():
    """GauntProduct.forward: per-species factor and output weights around the exact products."""
    num_species, channels, l_in, l_out = 3, 2, 2, 1
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        product = GauntProduct(num_species, channels, l_in, l_out, correlation=3)
    with torch.no_grad():
        product.factor_weights.normal_()
    species = torch.tensor([2, 0, 1, 2, 1])
    a = [torch.randn(5, channels, 2 * l + 1, dtype=torch.float64) for l in range(l_in + 1)]
    out = torch.cat(product(a, species), dim=-1)  # [N, C, (l_out+1)^2]

    x = torch.cat(a, dim=-1)
    degree_in = torch.cat([torch.full((2 * l + 1,), l) for l in range(l_in + 1)])
    degree_out = torch.cat([torch.full((2 * l + 1,), l) for l in range(l_out + 1)])
    expected = torch.zeros_like(out)
    with torch.no_grad():
        for n, z in enumerate(species.tolist()):
            factors = [x[n] * product.factor_weights[z, k][:, degree_in] for k in range(3)]
            for nu in range(1, 4):
                term = reference_product(factors[:nu], l_out, l_in)
                expected[n] += product.weights[z, nu - 1][:, degree_out] * term
    assert expected.abs().max() > 1e-2
    assert (out - expected).abs().max() < 1e-10


def test_product_is_equivariant_under_rotation_and_inversion():
    l_in, l_out = 3, 2
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        product = GauntProduct(2, 3, l_in, l_out, correlation=3)
    species = torch.tensor([0, 1, 1])
    rotation = -o3.rand_matrix(dtype=torch.float64)  # a rotation times the inversion
    with default_dtype(torch.float64):  # e3nn >= 0.5 builds D in the default dtype
        d_in = o3.Irreps.spherical_harmonics(l_in).D_from_matrix(rotation)
        d_out = o3.Irreps.spherical_harmonics(l_out).D_from_matrix(rotation)
    x = torch.randn(3, 3, (l_in + 1) ** 2, dtype=torch.float64)

    def apply(v: torch.Tensor) -> torch.Tensor:
        l_max = math.isqrt(v.shape[-1]) - 1
        return torch.cat(product([v[..., irrep_slice(l)] for l in range(l_max + 1)], species), -1)

    out = apply(x)
    assert out.abs().max() > 1e-2
    assert (apply(x @ d_in.T) - out @ d_out.T).abs().max() < 1e-10


def test_higher_correlation_changes_the_energy():
    """With the weights of the powers A^2, A^3 set to zero, the correlation-3 model equals the
    correlation-1 model with the same shared weights; with them it does not."""
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model3 = make_model("mace", correlation=3)
        model1 = make_model("mace", correlation=1)
    state = {
        k: (
            v[:, :1] if k.split(".")[-1] in ("weights", "factor_weights") and "products" in k else v
        )
        for k, v in model3.state_dict().items()
    }
    model1.load_state_dict(state)
    batch = atoms_to_batch([ethanol()], CUTOFF, dtype=torch.float64)
    args = (batch.z.new_tensor([{1: 0, 6: 1, 8: 2}[int(z)] for z in batch.z]),)
    args += (batch.pos[batch.edge_index[0]] - batch.pos[batch.edge_index[1]],)
    args += (batch.edge_index, batch.batch)
    with torch.no_grad():
        e3 = model3(*args)
        for product in model3.products:
            product.weights[:, 1:] = 0.0
        e3_linear = model3(*args)
        e1 = model1(*args)
    assert (e3_linear - e1).abs().max() < 1e-12
    assert (e3 - e1).abs().max() > 1e-3 * e1.abs().max()


def test_config_keys_are_constructor_arguments():
    config = yaml.safe_load(CONFIG.read_text())
    assert config.pop("_target_") == "mlip.nn.mace.MACE"
    parameters = inspect.signature(MACE).parameters
    assert set(config) <= set(parameters)
    assert "num_species" not in config and "avg_num_neighbors" not in config  # set from data
    config["r_max"] = 6.0  # interpolated from the top-level cutoff
    model = MACE(num_species=2, avg_num_neighbors=12.0, **config)
    assert float(model.avg_num_neighbors) == 12.0
    assert [p.grid_size for p in model.products] == [(5, 10), (5, 10)]  # 3 * 3 + 0 + 1 = 10
