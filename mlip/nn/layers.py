"""Equivariant building blocks on per-degree features.

A feature set is a list ``h`` with ``h[l]`` of shape ``[N, C_l, 2l + 1]`` (parity ``(-1)^l``), so
that channel mixing is a plain matrix product per degree.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mlip.nn.radial import make_radial
from mlip.nn.sphere import SphericalGrid, clebsch_gordan, irrep_slice

Features = list[Tensor]


class EquivariantLinear(nn.Module):
    """Channel mixing per degree, ``[N, C_in_l, 2l+1] -> [N, C_out_l, 2l+1]``; bias on scalars only.

    Degrees missing on either side (zero channels) are skipped; missing outputs are zeros.
    """

    def __init__(self, channels_in: list[int], channels_out: list[int], bias: bool = True) -> None:
        super().__init__()
        self.channels_in = list(channels_in)
        self.channels_out = list(channels_out)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(c_in, c_out) / math.sqrt(max(c_in, 1)))
            for c_in, c_out in zip(self.channels_in, self.channels_out, strict=False)
        )
        self.bias = nn.Parameter(torch.zeros(channels_out[0])) if bias else None

    def forward(self, h: Features) -> Features:
        out = []
        for l, c_out in enumerate(self.channels_out):
            if l < len(self.weights) and l < len(h) and self.channels_in[l] > 0:
                y = torch.einsum("ncm,cd->ndm", h[l], self.weights[l])
            else:
                y = h[0].new_zeros(h[0].shape[0], c_out, 2 * l + 1)
            if l == 0 and self.bias is not None:
                y = y + self.bias.unsqueeze(-1)
            out.append(y)
        return out


class ChannelwiseMessages(nn.Module):
    """Neighbour sums of channel-wise tensor products of neighbour features with ``Y(r_ij)``.

    For every path ``(l1 of h_j) x (l2 of Y) -> l3 <= l_out`` with ``l1 + l2 + l3`` even (parity
    kept), ``m_ij[l3, c] = R_path,c(r_ij) * CG(h_j[l1, c] (x) Y_l2)`` ("uvu"); the messages are summed
    over ``j`` and multiplied by ``norm``. The output has one channel per (input channel, path)
    for each ``l3`` (:attr:`channels_out`); :class:`Convolution` (Facet) and
    :class:`mlip.nn.mace.Interaction` (MACE-like) mix it with a linear map.

    Args:
        channels_in: channels per degree of ``h``.
        l_sh: maximum degree of the edge spherical harmonics.
        l_out: maximum degree of the messages.
        r_max: cutoff radius, Å.
        radial: ``"spline"`` (:class:`SplineRadial`) or ``"bessel_mlp"`` (:class:`BesselMLPRadial`).
        num_radial: number of radial basis functions.
        radial_hidden: hidden widths of the radial MLP (``"bessel_mlp"`` only).

    Implementation: the paths of one input degree ``l1`` form a group whose messages are one
    ``[E, C1, M]`` block (``M`` = the summed ``2 l3 + 1`` of its paths). Per edge, ``Y`` times the
    group's CG block gives ``t [2l1+1, M]`` and ``msg = h_j t``, scaled column-wise by the radial
    weight of each column's path. The radial weights are ``features(r) @ matrix`` (a linear last
    layer), evaluated straight into the layout each group needs. Two equivalent evaluations,
    chosen per group by size:

    * ``P (2l1+1) < M`` ("folded", e.g. scalar inputs): the radial weights multiply ``h_j`` first,
      ``xw [C1, P (2l1+1)]``, and the CG block is laid out block-diagonally over the paths, so the
      message is a single batched product ``xw @ t'`` and nothing of size ``[E, C1, M]`` is
      materialised besides the message itself;
    * otherwise the radial weights are evaluated directly in their expanded ``[E, C1 * M]``
      layout as ``features(r) @ matrix[:, expand]`` (one dense product, no gather).

    Memory: in inference (eval mode) large inputs are evaluated in chunks of edges whose messages
    take at most :attr:`edge_chunk_bytes`, recomputed in the backward pass (:meth:`messages`).
    """

    # eval mode: the most bytes that the messages of one pass over edges may take (the pass's
    # other per-edge tensors take about as much again); a class default, tests set it per instance.
    # On CPU, 32 MiB keeps every tensor of a pass below glibc's largest mmap threshold (32 MiB), so
    # they are reused from the heap instead of being mapped and page-faulted afresh: at 500 atoms
    # of Cu the chunked call is faster than the one-pass call (scripts/bench_scale.py)
    edge_chunk_bytes: int = 32 * 2**20

    def __init__(
        self,
        channels_in: list[int],
        l_sh: int,
        l_out: int,
        r_max: float,
        radial: str = "spline",
        num_radial: int = 10,
        radial_hidden: list[int] | tuple[int, ...] = (64, 64, 64),
    ) -> None:
        super().__init__()
        self.l_sh = l_sh
        dim_sh = (l_sh + 1) ** 2
        self.groups: list[tuple[int, list[tuple[int, int]]]] = []  # (l1, [(l2, l3), ...])
        self.group_layout: list[tuple[bool, int]] = []  # (folded, M) per group: see above
        cols_per_l3: list[int] = [0] * (l_out + 1)
        offset = 0
        self.edge_floats = 0  # numbers in the messages of one edge (all groups)
        for l1, c1 in enumerate(channels_in):
            if c1 == 0:
                continue
            paths = [
                (l2, l3)
                for l2 in range(l_sh + 1)
                for l3 in range(abs(l1 - l2), min(l1 + l2, l_out) + 1)
                if (l1 + l2 + l3) % 2 == 0
            ]
            # CG block of the group: [dim_sh, 2l1+1, sum_paths (2l3+1)], component-normalised
            blocks = []
            for l2, l3 in paths:
                cg = clebsch_gordan(l1, l2, l3) * math.sqrt(2 * l3 + 1)
                block = torch.zeros(dim_sh, 2 * l1 + 1, 2 * l3 + 1, dtype=torch.float64)
                block[irrep_slice(l2)] = cg.permute(1, 0, 2)
                blocks.append(block)
                cols_per_l3[l3] += c1
            cg_all = torch.cat(blocks, dim=-1)
            num_paths, width = len(paths), cg_all.shape[-1]
            path_of_col = torch.cat(
                [torch.full((2 * l3 + 1,), p) for p, (_, l3) in enumerate(paths)]
            )
            folded = num_paths * (2 * l1 + 1) < width
            if folded:
                # block-diagonal over paths: [dim_sh, P, 2l1+1, M], zero outside a path's columns
                mask = (path_of_col == torch.arange(num_paths).unsqueeze(1)).to(cg_all.dtype)
                cg_all = cg_all.unsqueeze(1) * mask.unsqueeze(1)
                radial_cols = torch.arange(offset, offset + c1 * num_paths)
            else:
                # radial weight column (channel c, path p) repeated for each column of path p
                radial_cols = (
                    offset + torch.arange(c1).unsqueeze(1) * num_paths + path_of_col
                ).reshape(-1)
            self.register_buffer(
                f"cg_{l1}",
                cg_all.reshape(dim_sh, -1).to(torch.get_default_dtype()),
                persistent=False,
            )
            self.register_buffer(f"radial_cols_{l1}", radial_cols, persistent=False)
            self.groups.append((l1, paths))
            self.group_layout.append((folded, width))
            self.edge_floats += c1 * width
            offset += c1 * num_paths
        self.channels_in = list(channels_in)
        self.channels_out = cols_per_l3
        self.num_weights = offset
        self.radial = make_radial(radial, r_max, self.num_weights, num_radial, radial_hidden)

    def messages(
        self, h: Features, sh: Tensor, r: Tensor, edge_index: Tensor, norm: Tensor
    ) -> Features:
        """``h`` node features, ``sh [E, (l_sh+1)^2]``, ``r [E]`` Å, ``edge_index [2, E]`` (j, i),
        ``norm`` the factor applied to the neighbour sums -> ``[N, channels_out[l], 2l+1]``.

        In training mode this is one pass over all edges. Otherwise (inference), when the messages
        of all edges would take more than :attr:`edge_chunk_bytes` (:attr:`edge_floats` per edge),
        the edges are sorted by their atom ``i`` and cut at atom boundaries into chunks whose
        messages fit that budget. Each chunk's neighbour sums are those of its atoms, so the chunks'
        outputs are concatenated, not added; with autograd on, each chunk runs under
        :func:`torch.utils.checkpoint.checkpoint`, which keeps only its inputs and recomputes its
        per-edge tensors in the backward pass, so an energy + forces + stress call holds the
        per-edge tensors of one chunk at a time. The result is the same up to rounding.
        """
        num_nodes, num_edges = h[0].shape[0], sh.shape[0]
        itemsize = sh.element_size()
        max_edges = max(1, self.edge_chunk_bytes // (max(self.edge_floats, 1) * itemsize))
        if self.training or num_edges <= max_edges:
            return self._split_degrees(
                self._group_sums(h, sh, r, edge_index[0], edge_index[1], num_nodes, norm)
            )
        order, edge_sizes, node_sizes = edge_chunks(edge_index[1], num_nodes, max_edges)
        pieces = zip(
            sh[order].split(edge_sizes),
            r[order].split(edge_sizes),
            edge_index[0][order].split(edge_sizes),
            edge_index[1][order].split(edge_sizes),
            node_sizes,
            strict=True,
        )
        sums: list[list[Tensor]] = [[] for _ in self.groups]
        first = 0
        for sh_k, r_k, src_k, dst_k, nodes_k in pieces:
            args = (h, sh_k, r_k, src_k, dst_k - first, nodes_k, norm)
            if torch.is_grad_enabled():
                chunk = checkpoint(
                    self._group_sums, *args, use_reentrant=False, preserve_rng_state=False
                )
            else:
                chunk = self._group_sums(*args)
            for group, agg in zip(sums, chunk, strict=True):
                group.append(agg)
            first += nodes_k
        return self._split_degrees([torch.cat(group, dim=0) for group in sums])

    def _group_sums(
        self,
        h: Features,
        sh: Tensor,
        r: Tensor,
        src: Tensor,
        dst: Tensor,
        num_nodes: int,
        norm: Tensor,
    ) -> list[Tensor]:
        """The normalised neighbour sums ``[num_nodes, C1, M]`` of every group over the edges
        ``src -> dst``: ``sh [E, (l_sh+1)^2]``, ``r [E]`` Å, ``src [E]`` indexes ``h``, ``dst [E]``
        in ``0 .. num_nodes - 1``."""
        num_edges = sh.shape[0]
        features = self.radial.features(r)  # [E, F]; radial weights = features @ matrix
        matrix = self.radial.matrix
        sums = []
        for (l1, paths), (folded, width) in zip(self.groups, self.group_layout, strict=True):
            c1, k = self.channels_in[l1], 2 * l1 + 1
            x = h[l1].index_select(0, src)  # [E, C1, 2l1+1]
            t = sh @ getattr(self, f"cg_{l1}")
            w = features @ matrix[:, getattr(self, f"radial_cols_{l1}")]
            if folded:
                num_paths = len(paths)
                xw = w.view(num_edges, c1, num_paths, 1) * x.unsqueeze(2)
                msg = torch.bmm(
                    xw.view(num_edges, c1, num_paths * k),
                    t.view(num_edges, num_paths * k, width),
                )
            else:
                msg = torch.bmm(x, t.view(num_edges, k, width)) * w.view(num_edges, c1, width)
            sums.append(msg.new_zeros(num_nodes, c1, width).index_add_(0, dst, msg) * norm)
        return sums

    def _split_degrees(self, sums: list[Tensor]) -> Features:
        """Group sums ``[N, C1, M]`` -> messages ``[N, channels_out[l3], 2l3+1]`` per degree."""
        gathered: list[list[Tensor]] = [[] for _ in self.channels_out]
        for (_, paths), agg in zip(self.groups, sums, strict=True):
            col = 0
            for _, l3 in paths:
                gathered[l3].append(agg[:, :, col : col + 2 * l3 + 1])
                col += 2 * l3 + 1
        return [torch.cat(parts, dim=1) for parts in gathered]


def edge_chunks(dst: Tensor, num_nodes: int, max_edges: int) -> tuple[Tensor, list[int], list[int]]:
    """Edges cut into chunks of whole destination atoms, about ``max_edges`` each.

    ``dst [E]`` the destination atom of every edge. Returns the stable order that sorts the edges
    by ``dst``, the edge count of every chunk (in that order) and its atom count: chunk ``k`` holds
    all edges of the atoms ``n_k .. n_k + atoms_k - 1`` (atoms without edges included), so the
    counts add up to ``E`` and ``num_nodes``. The ``ceil(E / max_edges)`` chunks are cut at the
    atoms nearest to equal edge counts, so a chunk exceeds ``max_edges`` by less than the most
    edges of one atom.
    """
    num_edges = dst.shape[0]
    order = torch.argsort(dst, stable=True)
    # edges_before[n]: the edges of the atoms before n, for n = 0 .. num_nodes
    edges_before = torch.zeros(num_nodes + 1, dtype=torch.long, device=dst.device)
    edges_before[1:] = torch.bincount(dst, minlength=num_nodes).cumsum(0)
    num_chunks = -(-num_edges // max_edges)
    targets = torch.arange(1, num_chunks, device=dst.device) * num_edges // num_chunks
    cuts = torch.searchsorted(edges_before, targets)
    bounds = [0, *sorted(set(cuts.tolist()) - {0, num_nodes}), num_nodes]
    edge_bounds = edges_before[bounds].tolist()
    edge_sizes = [b - a for a, b in zip(edge_bounds[:-1], edge_bounds[1:], strict=True)]
    node_sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return order, edge_sizes, node_sizes


class Convolution(ChannelwiseMessages):
    """Facet's message passing: :class:`ChannelwiseMessages` up to the degrees of
    ``channels_out``, mixed by a linear map into ``channels_out`` and added to a linear
    self-connection of ``h_i`` (arguments as :class:`ChannelwiseMessages`)."""

    def __init__(
        self,
        channels_in: list[int],
        channels_out: list[int],
        l_sh: int,
        r_max: float,
        radial: str = "spline",
        num_radial: int = 10,
    ) -> None:
        super().__init__(channels_in, l_sh, len(channels_out) - 1, r_max, radial, num_radial)
        self.linear = EquivariantLinear(self.channels_out, channels_out, bias=False)
        self.self_connection = EquivariantLinear(channels_in, channels_out)

    def forward(
        self, h: Features, sh: Tensor, r: Tensor, edge_index: Tensor, norm: Tensor
    ) -> Features:
        """``h`` node features, ``sh [E, (l_sh+1)^2]``, ``r [E]`` Å, ``edge_index [2, E]`` (j, i),
        ``norm`` the factor applied to the neighbour sums."""
        out = self.linear(self.messages(h, sh, r, edge_index, norm))
        skip = self.self_connection(h)
        return [o + s for o, s in zip(out, skip, strict=True)]


class GridMixing(nn.Module):
    """Spherical-grid mixing: the same MLP at every Gauss-Legendre grid point, across channels.

    ``h -> linear to U channels of every degree -> grid -> MLP (heads share it) -> back ->``
    concatenate the input scalars -> linear to ``channels``. Equivariant up to quadrature aliasing
    of the non-polynomial activation, which the grid size controls. With ``num_species``, every
    atom's points go through its own element's MLP (weights per species, like MACE's product
    weights), all initialised equal; ``forward`` then needs ``species``. With ``channels_in``
    reaching higher degrees than ``channels`` (e.g. messages of degree 3 for features up to 2),
    those degrees enter the grid functions but are not projected back.
    """

    def __init__(
        self,
        channels: list[int],
        grid_channels: int,
        hidden: int,
        heads: int,
        grid_size: tuple[int, int],
        activation: str = "silu",
        num_species: int = 0,
        channels_in: list[int] | None = None,
    ) -> None:
        super().__init__()
        if grid_channels % heads:
            raise ValueError(f"grid_channels={grid_channels} is not divisible by heads={heads}")
        channels_in = list(channels if channels_in is None else channels_in)
        l_max, l_in = len(channels) - 1, len(channels_in) - 1
        if l_in < l_max:
            raise ValueError(
                f"channels_in {channels_in} has lower degrees than channels {channels}"
            )
        self.heads = heads
        self.l_max = l_max
        self.linear_in = EquivariantLinear(channels_in, [grid_channels] * (l_in + 1))
        self.grid = SphericalGrid(l_in, *grid_size, l_out=l_max)
        width = grid_channels // heads
        self.activation = ACTIVATIONS[activation]()
        first, second = nn.Linear(width, hidden), nn.Linear(hidden, width)
        if num_species:
            # one MLP per species, all starting from the same weights
            self.mlp = None
            self.species_mlp = nn.ParameterList(
                nn.Parameter(p.detach().expand(num_species, *p.shape).clone())
                for p in (first.weight, first.bias, second.weight, second.bias)
            )
        else:
            self.mlp = nn.Sequential(first, self.activation, second)
            self.species_mlp = None
        self.linear_out = EquivariantLinear(
            [grid_channels + channels_in[0]] + [grid_channels] * l_max, channels
        )

    def forward(self, h: Features, species: Tensor | None = None) -> Features:
        """``h[l] [N, channels_in[l], 2l+1]``, ``species [N]`` (needed with ``num_species``) ->
        ``[N, channels[l], 2l+1]``."""
        x = self.linear_in(h)
        n, u = x[0].shape[:2]
        points = self.grid.num_points
        g = self.grid.to_grid(torch.cat(x, dim=-1))  # [N, U, P]
        # the MLP acts on each head's channel vector at every point; with channels on the rows
        # ([N * heads, U / heads, P]) its layers are plain left products and no copy is needed
        g = g.view(n * self.heads, u // self.heads, points)
        if self.species_mlp is None:
            first, _, second = self.mlp
            g = self.activation(torch.matmul(first.weight, g) + first.bias.unsqueeze(-1))
            g = torch.matmul(second.weight, g) + second.bias.unsqueeze(-1)
        else:
            # every (atom, head) row takes its species' MLP: weights [N * heads, out, in]
            index = species.repeat_interleave(self.heads)
            w1, b1, w2, b2 = (p[index] for p in self.species_mlp)
            g = self.activation(torch.baddbmm(b1.unsqueeze(-1), w1, g))
            g = torch.baddbmm(b2.unsqueeze(-1), w2, g)
        y = self.grid.from_grid(g.view(n, u, points))  # [N, U, (l_max+1)^2]
        out = [y[:, :, irrep_slice(l)] for l in range(self.l_max + 1)]
        out[0] = torch.cat([out[0], h[0]], dim=1)
        return self.linear_out(out)


class Poly2(nn.Module):
    """``x + x^2 / 2``: a polynomial activation for which grid mixing is exactly equivariant."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.5 * x * x


ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "poly2": Poly2}


class EquivariantNorm(nn.Module):
    """Layer norm for irreps that stays smooth where the ``l > 0`` features vanish.

    The scalars are centred over channels and divided by their RMS ``sigma_0`` (over channels);
    all ``l > 0`` features are divided by ``sqrt(sigma_v^2 + vector_floor * sigma_0^2)``, with
    ``sigma_v^2`` their mean square over channels and components. At perfect crystals and
    symmetric molecules the ``l > 0`` features vanish by symmetry while the scalars do not, so
    there the layer is linear in them with gain ``1 / (sqrt(vector_floor) sigma_0)``. With
    ``vector_floor = 0`` (model files of format <= 2) it is ``x / sqrt(|x|^2 + eps)`` at such
    points instead, a step of width ``sqrt(eps)`` that gives force constants of thousands of
    eV/Å². The output does not change when all inputs are scaled by one factor (up to ``eps``).
    Learned scale
    per channel, bias on scalars.
    """

    def __init__(self, channels: list[int], eps: float = 1e-6, vector_floor: float = 0.1) -> None:
        super().__init__()
        if not vector_floor >= 0:
            raise ValueError(f"vector_floor={vector_floor} must be >= 0")
        self.eps = eps
        self.vector_floor = vector_floor
        self.scales = nn.ParameterList(nn.Parameter(torch.ones(c, 1)) for c in channels)
        self.bias = nn.Parameter(torch.zeros(channels[0], 1))

    def forward(self, h: Features) -> Features:
        s = h[0] - h[0].mean(dim=1, keepdim=True)
        mean_sq_scalars = s.pow(2).mean(dim=(1, 2))  # [N]
        s = s * torch.rsqrt(mean_sq_scalars + self.eps)[:, None, None]
        out = [s * self.scales[0] + self.bias]
        if len(h) > 1:
            sq = sum(x.pow(2).sum(dim=(1, 2)) for x in h[1:])
            count = sum(x.shape[1] * x.shape[2] for x in h[1:])
            mean_sq = sq / count + self.vector_floor * mean_sq_scalars
            inv = torch.rsqrt(mean_sq + self.eps)[:, None, None]
            out += [x * inv * scale for x, scale in zip(h[1:], self.scales[1:], strict=True)]
        return out
