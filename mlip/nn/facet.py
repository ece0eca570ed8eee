"""Facet: spline radial functions, channel-wise convolutions and spherical-grid MLP mixing."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlip.nn.conditioning import ChargeSpinEmbedding
from mlip.nn.config import constructor_config
from mlip.nn.layers import Convolution, EquivariantNorm, GridMixing
from mlip.nn.sphere import default_grid_size, exact_grid_size, spherical_harmonics


class Facet(nn.Module):
    """Facet energy model: per-atom energies from species and edge vectors.

    Every layer is a convolution, grid mixing and norm added to the features through residual
    gates; the last layer updates only the scalars, which are all the readout sees.

    Args:
        num_species: number of elements (species indices run over ``0 .. num_species - 1``).
        r_max: cutoff radius, Å.
        channels: channels per degree of the hidden features, e.g. ``[128, 64, 32]`` for
            ``128x0e + 64x1o + 32x2e``.
        l_sh: maximum degree of the edge spherical harmonics.
        num_layers: number of interaction layers.
        radial: ``"spline"`` (cubic B-splines, Facet) or ``"bessel_mlp"`` (ablation).
        num_radial: number of radial basis functions.
        grid_channels: channels ``U`` projected onto the spherical grid.
        grid_hidden: hidden width of the per-point MLP.
        grid_heads: the ``U`` channels are split into this many heads sharing one MLP.
        grid_size: ``(n_beta, n_alpha)`` of the Gauss-Legendre grid; default: for ``"poly2"`` the
            smallest grid on which mixing is exact (:func:`mlip.nn.sphere.exact_grid_size`, 4 x 7
            for ``l_max = 2``; the last layer, whose output is scalars only, 3 x 5), else
            :func:`mlip.nn.sphere.default_grid_size`.
        grid_activation: ``"silu"``, ``"gelu"``, ``"tanh"`` or ``"poly2"`` (``x + x^2 / 2``:
            exactly equivariant, and on its small exact grid the fastest).
        grid_species: one grid MLP per element instead of one shared by all atoms (all start
            equal), as MACE's product weights are per element.
        message_degree: maximum degree of the convolution's output, which only the grid mixing
            sees (default: that of ``channels``). Above the features' degree it has
            ``grid_channels`` channels, so that the grid functions resolve finer angles (like MACE's
            atomic basis up to ``l_sh``) while the node features stay small; at most ``l_sh``.
        avg_num_neighbors: mean neighbour count of the training data (set at fit time).
        norm_power: neighbour sums are divided by ``avg_num_neighbors ** norm_power``.
        vector_floor: each layer's norm divides the ``l > 0`` features by
            ``sqrt(sigma_v^2 + vector_floor * sigma_0^2)`` (their mean square and the scalars',
            :class:`~mlip.nn.layers.EquivariantNorm`), which keeps the energy smooth where the
            ``l > 0`` features vanish by symmetry (perfect crystals, symmetric molecules). 0 is
            the norm of model files of format <= 2, not smooth there.
        gamma_init: initial value of the residual gates (0 gives an identity start).
        readout_hidden: hidden width of the readout MLP on the final scalars.
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
        channels: list[int] | tuple[int, ...] = (128, 64, 32),
        l_sh: int = 2,
        num_layers: int = 3,
        radial: str = "spline",
        num_radial: int = 10,
        grid_channels: int = 32,
        grid_hidden: int = 16,
        grid_heads: int = 2,
        grid_size: list[int] | tuple[int, int] | None = None,
        grid_activation: str = "silu",
        grid_species: bool = False,
        message_degree: int | None = None,
        avg_num_neighbors: float = 1.0,
        norm_power: float = 0.5,
        vector_floor: float = 0.1,
        gamma_init: float = 0.0,
        readout_hidden: int = 16,
        charge_spin: bool = False,
        max_abs_charge: int = 10,
        max_spin: int = 11,
    ) -> None:
        super().__init__()
        self.config = constructor_config(locals())
        channels = list(channels)
        l_max = len(channels) - 1
        l_message = l_max if message_degree is None else message_degree
        if not l_max <= l_message <= max(l_sh, l_max):
            raise ValueError(
                f"message_degree={message_degree} must lie between the features' degree {l_max} "
                f"and l_sh={l_sh}"
            )
        # the convolution's output: the features' channels, then grid_channels for higher degrees
        conv_channels = channels + [grid_channels] * (l_message - l_max)
        polynomial = grid_activation == "poly2"
        self.l_sh = l_sh
        self.norm_power = norm_power
        self.register_buffer("avg_num_neighbors", torch.tensor(float(avg_num_neighbors)))
        self.embedding = nn.Embedding(num_species, channels[0])
        scalar_in = [channels[0]] + [0] * l_max
        self.convolutions = nn.ModuleList()
        self.mixings = nn.ModuleList()
        self.norms = nn.ModuleList()
        for layer in range(num_layers):
            # the readout sees only scalars, so the last layer updates only those
            out_channels = channels if layer < num_layers - 1 else channels[:1]
            l_out = len(out_channels) - 1
            if grid_size is not None:
                layer_grid = tuple(grid_size)
            elif polynomial:
                layer_grid = exact_grid_size(l_message, 2, l_out)
            else:
                layer_grid = default_grid_size(l_message)
            self.convolutions.append(
                Convolution(
                    scalar_in if layer == 0 else channels,
                    conv_channels,
                    l_sh,
                    r_max,
                    radial,
                    num_radial,
                )
            )
            self.mixings.append(
                GridMixing(
                    out_channels,
                    grid_channels,
                    grid_hidden,
                    grid_heads,
                    layer_grid,
                    grid_activation,
                    num_species if grid_species else 0,
                    conv_channels,
                )
            )
            self.norms.append(EquivariantNorm(out_channels, vector_floor=vector_floor))
        # residual gates per layer: scalars in every layer, l > 0 in all but the last
        self.gammas = nn.ParameterList(
            nn.Parameter(torch.full((num_layers - (l > 0), c, 1), float(gamma_init)))
            for l, c in enumerate(channels)
        )
        self.readout = nn.Sequential(
            nn.Linear(channels[0], readout_hidden), nn.SiLU(), nn.Linear(readout_hidden, 1)
        )
        self.channels = channels
        # created last, so that the other weights do not depend on charge_spin for a given seed
        self.charge_spin_embedding = (
            ChargeSpinEmbedding(channels[0], max_abs_charge, max_spin) if charge_spin else None
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
        x0 = x0.unsqueeze(-1)
        h = [x0] + [
            x0.new_zeros(x0.shape[0], c, 2 * l + 1) for l, c in enumerate(self.channels) if l
        ]
        for layer, (conv, mix, norm_layer) in enumerate(
            zip(self.convolutions, self.mixings, self.norms, strict=True)
        ):
            out = norm_layer(mix(conv(h, sh, r, edge_index, norm), species))
            # the last layer's output is scalars only, so h keeps just those (all the readout reads)
            h = [x + gamma[layer] * o for x, o, gamma in zip(h, out, self.gammas, strict=False)]
        return self.readout(h[0].squeeze(-1)).squeeze(-1)


__all__ = ["Facet"]
