"""MACE-like model whose body-order product is a Gaunt product on a spherical grid.

The layers follow MACE (Batatia et al., NeurIPS 2022; ACEsuit/mace ``RealAgnosticResidualInteraction``
and ``EquivariantProductBasisBlock``): an interaction builds the atomic basis ``A_i`` from neighbour
features and edge spherical harmonics, a product raises it to body order ``correlation + 1`` with
element-dependent weights, and a linear map plus an element-dependent self-connection updates the
node features. Where MACE contracts ``A_i`` with Clebsch-Gordan coefficients (symmetric
contraction), :class:`GauntProduct` multiplies the functions ``A_i(s) = sum_lm A_i,lm Y_lm(s)`` pointwise
on a Gauss-Legendre grid, on which the projection back is exact (no aliasing).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mlip.nn.conditioning import ChargeSpinEmbedding
from mlip.nn.config import constructor_config
from mlip.nn.layers import ChannelwiseMessages, EquivariantLinear, Features
from mlip.nn.sphere import SphericalGrid, exact_grid_size, irrep_slice, spherical_harmonics


def product_grid_size(l_in: int, l_out: int, correlation: int) -> tuple[int, int]:
    """Smallest Gauss-Legendre grid ``(n_beta, n_alpha)`` on which the product is exact: a product
    of ``correlation`` functions of degree ``<= l_in`` projected onto degrees ``<= l_out``
    (:func:`mlip.nn.sphere.exact_grid_size`)."""
    return exact_grid_size(l_in, correlation, l_out)


class GauntProduct(nn.Module):
    """Body-order product of the atomic basis, computed pointwise on a spherical grid.

    Per atom ``i`` of species ``z`` and channel ``c``, with ``A_c(s) = sum_lm A_c,lm Y_lm(s)``:

    ``f_k(s) = sum_lm a[z, k, c, l] A_c,lm Y_lm(s)``                (factor ``k``, per-degree weights)
    ``B_c,lm = sum_nu w[z, nu, c, l] P_lm(f_1 f_2 ... f_nu)``       (``nu = 1 .. correlation``)

    where ``P_lm`` projects onto degree ``l <= l_out`` by Gauss-Legendre quadrature, exact on the
    grid of :func:`product_grid_size`. The factor weights start at one (so the products start as
    ``A, A^2, A^3``) and together with ``w`` they are MACE's element-dependent product weights.

    This is the Gaunt tensor product, a subset of MACE's Clebsch-Gordan symmetric contraction: a
    pointwise product of functions on the sphere couples degrees ``l1 (x) l2 -> l3`` only with
    ``l1 + l2 + l3`` even (coefficient ``int Y_l1 Y_l2 Y_l3``, proportional to the CG block), so
    every step of a product is a parity-even coupling, and the weight of a coupling path is a
    product of per-degree factor weights and an output weight, where MACE learns one weight per
    species, channel and path (86 against our 18 per species and channel for ``l_in = 3``,
    ``l_out = 1``, correlation 3). Inputs and outputs have parity ``(-1)^l``.

    Args:
        num_species: number of elements.
        channels: channels ``C`` of ``A`` (the same for every degree; the product is channel-wise).
        l_in: maximum degree of ``A``.
        l_out: maximum degree of the output.
        correlation: highest power of ``A`` (body order ``correlation + 1``).
    """

    def __init__(
        self, num_species: int, channels: int, l_in: int, l_out: int, correlation: int
    ) -> None:
        super().__init__()
        self.l_in, self.l_out, self.correlation = l_in, l_out, correlation
        self.grid_size = product_grid_size(l_in, l_out, correlation)
        # one grid for both directions, so that projecting back is the identity on shared degrees
        grid = SphericalGrid(max(l_in, l_out), *self.grid_size)
        dim_in, dim_out = (l_in + 1) ** 2, (l_out + 1) ** 2
        self.register_buffer("to_matrix", grid.to_matrix[:dim_in].clone(), persistent=False)
        self.register_buffer(
            "from_matrix", grid.from_matrix[:, :dim_out].contiguous(), persistent=False
        )
        self.register_buffer("degree_in", _degree_of_column(l_in), persistent=False)
        self.register_buffer("degree_out", _degree_of_column(l_out), persistent=False)
        self.factor_weights = nn.Parameter(torch.ones(num_species, correlation, channels, l_in + 1))
        self.weights = nn.Parameter(
            torch.randn(num_species, correlation, channels, l_out + 1) / math.sqrt(correlation)
        )

    def to_grid(self, x: Tensor) -> Tensor:
        """``[..., (l_in+1)^2] -> [..., P]``: ``sum_lm x_lm Y_lm(s_p) / sqrt(D)``, ``D`` the grid's
        ``(max(l_in, l_out) + 1)^2`` and ``Y`` of mean square 1 over the sphere."""
        return x @ self.to_matrix

    def from_grid(self, g: Tensor) -> Tensor:
        """``[..., P] -> [..., (l_out+1)^2]``: ``sqrt(D) * mean over the sphere of g Y_lm``."""
        return g @ self.from_matrix

    def forward(self, a: Features, species: Tensor) -> Features:
        """``a[l] [N, C, 2l+1]`` for ``l <= l_in``, ``species [N]`` -> ``[N, C, 2l+1]`` for ``l <= l_out``."""
        x = torch.cat(a, dim=-1)  # [N, C, D_in]
        factors = self.factor_weights[species][..., self.degree_in]  # [N, nu, C, D_in]
        g = self.to_grid(x.unsqueeze(1) * factors)  # [N, nu, C, P]
        powers = [g[:, 0]]
        for k in range(1, self.correlation):
            powers.append(powers[-1] * g[:, k])
        y = self.from_grid(torch.stack(powers, dim=1))  # [N, nu, C, D_out]
        out = (y * self.weights[species][..., self.degree_out]).sum(dim=1)
        return [out[..., irrep_slice(l)] for l in range(self.l_out + 1)]


def _degree_of_column(l_max: int) -> Tensor:
    """The degree of each column of a ``[..., (l_max+1)^2]`` block."""
    return torch.cat([torch.full((2 * l + 1,), l) for l in range(l_max + 1)])


class ElementLinear(nn.Module):
    """Channel mixing per degree with one weight matrix per species (MACE's element-dependent
    self-connection, ``FullyConnectedTensorProduct(h, one_hot(species))``); no bias.

    ``h[l] [N, C_in_l, 2l+1], species [N] -> [N, C_out_l, 2l+1]``; degrees missing on either side
    are skipped (missing outputs are zeros).
    """

    def __init__(self, num_species: int, channels_in: list[int], channels_out: list[int]) -> None:
        super().__init__()
        self.channels_in = list(channels_in)
        self.channels_out = list(channels_out)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(num_species, c_in, c_out) / math.sqrt(max(c_in, 1)))
            for c_in, c_out in zip(self.channels_in, self.channels_out, strict=False)
        )

    def forward(self, h: Features, species: Tensor) -> Features:
        out = []
        for l, c_out in enumerate(self.channels_out):
            if l < len(self.weights) and l < len(h) and self.channels_in[l] > 0:
                out.append(torch.einsum("ncm,ncd->ndm", h[l], self.weights[l][species]))
            else:
                out.append(h[0].new_zeros(h[0].shape[0], c_out, 2 * l + 1))
        return out


class Interaction(ChannelwiseMessages):
    """MACE interaction: the atomic basis ``A_i`` from the neighbours' features.

    ``h -> linear up -> m_ij[l3, c] = R_path,c(r_ij) CG(h_j[l1, c] (x) Y_l2(r_ij))`` for every path
    ``l1 (x) l2 -> l3 <= l_sh`` with ``l1 + l2 + l3`` even (channel-wise, "uvu",
    :class:`~mlip.nn.layers.ChannelwiseMessages`), summed over ``j``, mixed by a linear map into
    ``channels`` channels of every degree ``0 .. l_sh``, times ``norm``.

    Args:
        channels_in: channels per degree of ``h``.
        channels: channels of ``A`` (every degree).
        l_sh: maximum degree of the edge spherical harmonics and of ``A``.
        r_max: cutoff radius, Å.
        radial: ``"bessel_mlp"`` (MACE) or ``"spline"`` (Facet).
        num_radial: number of radial basis functions.
        radial_mlp: hidden widths of the radial MLP (``"bessel_mlp"`` only).
    """

    def __init__(
        self,
        channels_in: list[int],
        channels: int,
        l_sh: int,
        r_max: float,
        radial: str = "bessel_mlp",
        num_radial: int = 8,
        radial_mlp: list[int] | tuple[int, ...] = (64, 64, 64),
    ) -> None:
        super().__init__(channels_in, l_sh, l_sh, r_max, radial, num_radial, radial_mlp)
        self.linear_up = EquivariantLinear(channels_in, channels_in, bias=False)
        self.linear = EquivariantLinear(self.channels_out, [channels] * (l_sh + 1), bias=False)

    def forward(
        self, h: Features, sh: Tensor, r: Tensor, edge_index: Tensor, norm: Tensor
    ) -> Features:
        """``h`` node features, ``sh [E, (l_sh+1)^2]``, ``r [E]`` Å, ``edge_index [2, E]`` (j, i),
        ``norm`` the factor applied to the neighbour sums -> ``A[l] [N, channels, 2l+1]``."""
        return self.linear(self.messages(self.linear_up(h), sh, r, edge_index, norm))


class MACE(nn.Module):
    """MACE-like energy model: per-atom energies from species and edge vectors.

    Each layer: :class:`Interaction` (atomic basis ``A_i``, ``channels[0]`` channels of degrees
    ``0 .. l_sh``), :class:`GauntProduct` (body order up to ``correlation + 1``, element-dependent
    weights), a linear map and an element-dependent self-connection of the layer's input. The last
    layer keeps scalars only. The node energy is the sum of a linear readout of the scalars after
    every layer but the last and a small MLP (SiLU) after the last.

    Args:
        num_species: number of elements (species indices run over ``0 .. num_species - 1``).
        r_max: cutoff radius, Å.
        channels: channels per degree of the hidden features: ``[128]`` is ``128x0e`` (MACE-MP-0
            small), ``[128, 128]`` is ``128x0e + 128x1o`` (medium).
        l_sh: maximum degree of the edge spherical harmonics and of ``A``.
        num_layers: number of interaction layers.
        correlation: highest power of ``A`` in the product.
        radial: ``"bessel_mlp"`` (MACE) or ``"spline"`` (Facet).
        num_radial: number of radial basis functions.
        radial_mlp: hidden widths of the radial MLP.
        avg_num_neighbors: mean neighbour count of the training data (set at fit time).
        norm_power: neighbour sums are divided by ``avg_num_neighbors ** norm_power`` (MACE: 1).
        readout_hidden: hidden width of the last readout MLP.
        charge_spin: condition on the total charge and spin multiplicity of each structure: a
            learned :class:`~mlip.nn.conditioning.ChargeSpinEmbedding` is added to the species
            embedding (the ``channels[0]`` initial scalars). Off (default): no parameters, and
            ``charge`` / ``spin`` given to ``forward`` are ignored.
        max_abs_charge: total charges ``-max_abs_charge .. max_abs_charge`` (e) are embedded.
        max_spin: multiplicities ``1 .. max_spin`` are embedded.
    """

    def __init__(
        self,
        num_species: int,
        r_max: float = 6.0,
        channels: list[int] | tuple[int, ...] = (128,),
        l_sh: int = 3,
        num_layers: int = 2,
        correlation: int = 3,
        radial: str = "bessel_mlp",
        num_radial: int = 8,
        radial_mlp: list[int] | tuple[int, ...] = (64, 64, 64),
        avg_num_neighbors: float = 1.0,
        norm_power: float = 1.0,
        readout_hidden: int = 16,
        charge_spin: bool = False,
        max_abs_charge: int = 10,
        max_spin: int = 11,
    ) -> None:
        super().__init__()
        self.config = constructor_config(locals())
        channels = list(channels)
        num_features = channels[0]
        self.l_sh = l_sh
        self.norm_power = norm_power
        self.register_buffer("avg_num_neighbors", torch.tensor(float(avg_num_neighbors)))
        self.embedding = nn.Embedding(num_species, num_features)
        self.interactions = nn.ModuleList()
        self.products = nn.ModuleList()
        self.linears = nn.ModuleList()
        self.self_connections = nn.ModuleList()
        self.readouts = nn.ModuleList()
        channels_in = [num_features]
        for layer in range(num_layers):
            last = layer == num_layers - 1
            channels_out = [num_features] if last else channels
            self.interactions.append(
                Interaction(
                    channels_in, num_features, l_sh, r_max, radial, num_radial, list(radial_mlp)
                )
            )
            l_out = len(channels_out) - 1
            self.products.append(GauntProduct(num_species, num_features, l_sh, l_out, correlation))
            self.linears.append(
                EquivariantLinear([num_features] * (l_out + 1), channels_out, bias=False)
            )
            self.self_connections.append(ElementLinear(num_species, channels_in, channels_out))
            if last:
                readout = nn.Sequential(
                    nn.Linear(num_features, readout_hidden, bias=False),
                    nn.SiLU(),
                    nn.Linear(readout_hidden, 1, bias=False),
                )
            else:
                readout = nn.Linear(num_features, 1, bias=False)
            self.readouts.append(readout)
            channels_in = channels_out
        # created last, so that the other weights do not depend on charge_spin for a given seed
        self.charge_spin_embedding = (
            ChargeSpinEmbedding(num_features, max_abs_charge, max_spin) if charge_spin else None
        )

    def forward(
        self,
        species: Tensor,
        edge_vec: Tensor,
        edge_index: Tensor,
        batch: Tensor,
        charge: Tensor | None = None,
        spin: Tensor | None = None,
    ) -> Tensor:
        """Per-atom energies ``[N]`` (before scale, shift and E0).

        ``species [N]`` long indices into the potential's element list, ``edge_vec [E, 3]`` Å
        (``r_ij = pos[j] - pos[i]`` plus image shift), ``edge_index [2, E]`` (row 0 = j, row 1 = i),
        ``batch [N]`` structure index, ``charge [B]`` total charge (e) and ``spin [B]``
        multiplicity ``2S + 1`` per structure (used only with ``charge_spin``; None: 0 and 1).
        """
        r = edge_vec.norm(dim=-1)
        sh = spherical_harmonics(self.l_sh, edge_vec)
        norm = self.avg_num_neighbors ** (-self.norm_power)
        x0 = self.embedding(species)
        if self.charge_spin_embedding is not None:
            x0 = x0 + self.charge_spin_embedding(charge, spin, batch)
        h = [x0.unsqueeze(-1)]
        energy = h[0].new_zeros(h[0].shape[0])
        for interaction, product, linear, self_connection, readout in zip(
            self.interactions,
            self.products,
            self.linears,
            self.self_connections,
            self.readouts,
            strict=True,
        ):
            a = interaction(h, sh, r, edge_index, norm)
            out = linear(product(a, species))
            skip = self_connection(h, species)
            h = [o + s for o, s in zip(out, skip, strict=True)]
            energy = energy + readout(h[0].squeeze(-1)).squeeze(-1)
        return energy


__all__ = ["MACE", "GauntProduct", "ElementLinear", "Interaction", "product_grid_size"]
