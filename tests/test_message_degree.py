"""Facet's ``message_degree``: convolution outputs of a higher degree than the node features,
seen only by the grid mixing (exact grid, symmetries, forces, the model file, bad settings)."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

import mlip
from mlip.nn.layers import GridMixing
from mlip.nn.sphere import SphericalGrid, exact_grid_size

from .conftest import CUTOFF, SPECIES, default_dtype, ethanol, make_model
from .test_physics import assert_symmetric_with_exact_forces, energy


def _random_features(channels: list[int], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        2 * torch.randn(6, c, 2 * l + 1, generator=generator, dtype=torch.float64)
        for l, c in enumerate(channels)
    ]


def _rotate(h: list[torch.Tensor], rotation: torch.Tensor) -> list[torch.Tensor]:
    with default_dtype(torch.float64):  # e3nn >= 0.5 builds D in the default dtype
        d = [o3.Irrep(l, (-1) ** l).D_from_matrix(rotation) for l in range(len(h))]
    return [torch.einsum("ij,ncj->nci", d[l], x) for l, x in enumerate(h)]


def _error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b, strict=True))


def test_grid_projects_back_onto_lower_degrees():
    with default_dtype(torch.float64):
        grid = SphericalGrid(3, *exact_grid_size(3, 1, 2), l_out=2)
    x = torch.randn(5, 16, dtype=torch.float64)
    assert grid.from_matrix.shape[1] == 9
    assert torch.allclose(grid.from_grid(grid.to_grid(x)), x[:, :9], atol=1e-12)


def test_degree3_inputs_mix_exactly_on_their_grid_and_alias_on_a_smaller_one():
    """Inputs up to degree 3, outputs up to 2: poly2 needs the 5 x 9 grid of exact_grid_size."""
    channels, channels_in = [8, 4, 4], [8, 4, 4, 4]
    assert exact_grid_size(3, 2, 2) == (5, 9)
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        exact = GridMixing(channels, 4, 8, 2, (5, 9), "poly2", channels_in=channels_in)
        small = GridMixing(channels, 4, 8, 2, (5, 8), "poly2", channels_in=channels_in)
    weights = {k: v for k, v in exact.state_dict().items() if not k.startswith("grid.")}
    small.load_state_dict(weights, strict=False)  # the same weights on one longitude fewer
    h = _random_features(channels_in, seed=1)
    for rotation in (o3.rand_matrix(dtype=torch.float64), -o3.rand_matrix(dtype=torch.float64)):
        assert _error(exact(_rotate(h, rotation)), _rotate(exact(h), rotation)) < 1e-12
        assert _error(small(_rotate(h, rotation)), _rotate(small(h), rotation)) > 1e-6
    # the degree-3 input reaches the output (through the products on the grid)
    changed = [*h[:3], h[3] + 1.0]
    assert _error(exact(changed), exact(h)) > 1e-3
    assert [x.shape[1:] for x in exact(h)] == [(8, 1), (4, 3), (4, 5)]


def _potential(message_degree: int | None, seed: int = 0) -> mlip.Potential:
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        model = make_model("facet", l_sh=3, grid_activation="poly2", message_degree=message_degree)
        return mlip.Potential(model, CUTOFF, SPECIES, e0=[-1.0, -2.0, -3.0, -4.0])


def test_facet_with_degree3_messages_symmetries_forces_and_model_file(tmp_path):
    potential = _potential(3, seed=2)
    assert potential.model.mixings[0].grid.num_points == 45  # 5 x 9
    atoms = ethanol(seed=3)
    e = assert_symmetric_with_exact_forces(potential, atoms, atom=2, axis=0)

    # a different model from the default (degree-2 messages), kept by the model file
    assert abs(energy(_potential(None, seed=2), atoms) - e) > 1e-6
    loaded = mlip.load_model(mlip.save_model(potential, tmp_path / "m.pt"))
    assert loaded.model.config["message_degree"] == 3
    assert abs(energy(loaded, atoms) - e) < 1e-12


@pytest.mark.parametrize("message_degree, l_sh", [(4, 3), (1, 3)])
def test_message_degree_outside_its_range_is_refused(message_degree, l_sh):
    with pytest.raises(ValueError, match="message_degree"):
        make_model("facet", l_sh=l_sh, message_degree=message_degree)
