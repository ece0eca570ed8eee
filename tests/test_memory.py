"""Memory-bounded inference: the edge-wise work in chunks with recomputation.

The chunked path (:meth:`mlip.nn.layers.ChannelwiseMessages.messages` in eval mode, when the
messages of all edges exceed ``edge_chunk_bytes``) must give the one-pass path's energies, forces
and stress (and, with ``create_graph``, their gradients), be taken exactly above its threshold and
never in training, and keep far fewer tensors for the backward pass. Tests force it on small inputs by setting a small budget on the
model's message modules.
"""

from __future__ import annotations

import pytest
import torch

import mlip
import mlip.nn.layers as layers
from mlip.data import atoms_to_batch
from mlip.nn.layers import ChannelwiseMessages, edge_chunks

from .conftest import CUTOFF, SPECIES, default_dtype, ethanol, make_model, rattled_silicon

UNCHUNKED = 2**62  # a budget larger than any messages: the one-pass path


def set_budget(potential: mlip.Potential, budget: int) -> list[ChannelwiseMessages]:
    modules = [m for m in potential.modules() if isinstance(m, ChannelwiseMessages)]
    for m in modules:
        m.edge_chunk_bytes = budget
    return modules


def widest(potential: mlip.Potential) -> int:
    """The most message numbers per edge of the potential's layers."""
    return max(m.edge_floats for m in potential.modules() if isinstance(m, ChannelwiseMessages))


def make_potential(family: str, frozen: bool, **overrides) -> mlip.Potential:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        potential = mlip.Potential(
            make_model(family, **overrides), CUTOFF, SPECIES, e0=[-1.0, -2.0, -3.0, -4.0]
        )
    return potential.eval().requires_grad_(not frozen)


@pytest.fixture(scope="module")
def batch():
    """Two rattled, sheared Si supercells of 16 and 8 atoms and an ethanol molecule."""
    structures = [rattled_silicon(seed=1).repeat((2, 1, 1)), rattled_silicon(seed=2), ethanol()]
    return atoms_to_batch(structures, CUTOFF, dtype=torch.float64)


def counting(monkeypatch, name: str) -> list[int]:
    """Counts the calls of ``mlip.nn.layers.<name>`` (still calling it)."""
    calls = [0]
    original = getattr(layers, name)

    def wrapper(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(layers, name, wrapper)
    return calls


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "trainable"])
def test_chunked_path_gives_the_same_predictions(family, frozen, batch, monkeypatch):
    # frozen: the reference lone-atom energies are cached; trainable: one model call holds the
    # lone atoms too, as atoms without edges after the batch's atoms
    potential = make_potential(family, frozen)
    set_budget(potential, UNCHUNKED)
    ref = potential(batch, forces=True, stress=True)
    set_budget(potential, 40 * 8 * widest(potential))  # chunks of about 40 edges (float64)
    checkpoints = counting(monkeypatch, "checkpoint")
    out = potential(batch, forces=True, stress=True)
    assert checkpoints[0] >= batch.edge_index.shape[1] // 40  # the widest layer's chunks alone
    assert float(ref["forces"].abs().max()) > 1e-2
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(out[key], ref[key], rtol=0, atol=1e-10), key


def test_chunked_path_supports_double_backward(family, batch, monkeypatch):
    # eval mode with create_graph (e.g. a force loss on a model in eval mode, Hessian products):
    # the recomputed chunks must give the one-pass gradients of a force and stress loss
    potential = make_potential(family, frozen=False)
    params = [p for p in potential.parameters() if p.requires_grad]

    def loss_grads() -> list[torch.Tensor]:
        out = potential(batch, forces=True, stress=True, create_graph=True)
        loss = out["forces"].pow(2).sum() + out["stress"].pow(2).sum()
        return torch.autograd.grad(loss, params, allow_unused=True)

    set_budget(potential, UNCHUNKED)
    ref = loss_grads()
    set_budget(potential, 40 * 8 * widest(potential))
    checkpoints = counting(monkeypatch, "checkpoint")
    grads = loss_grads()
    assert checkpoints[0] > 0
    assert sum(g is not None and float(g.abs().max()) > 0 for g in ref) > len(params) // 2
    for g, g_ref in zip(grads, ref, strict=True):
        assert (g is None) == (g_ref is None)
        if g is not None:
            assert torch.allclose(g, g_ref, rtol=1e-9, atol=1e-10)


def test_chunked_energy_without_autograd(family, batch, monkeypatch):
    potential = make_potential(family, frozen=True)
    set_budget(potential, UNCHUNKED)
    with torch.no_grad():
        ref = potential(batch, forces=False)["energy"]
    set_budget(potential, 1)  # one atom per chunk
    chunks, checkpoints = counting(monkeypatch, "edge_chunks"), counting(monkeypatch, "checkpoint")
    with torch.no_grad():
        energy = potential(batch, forces=False)["energy"]
    assert chunks[0] > 0 and checkpoints[0] == 0  # chunks, but nothing to recompute
    assert torch.allclose(energy, ref, rtol=0, atol=1e-10)


def test_chunks_are_taken_above_the_threshold_only_and_never_in_training(
    family, batch, monkeypatch
):
    potential = make_potential(family, frozen=True)
    num_edges = batch.edge_index.shape[1]
    modules = [m for m in potential.modules() if isinstance(m, ChannelwiseMessages)]
    checkpoints = counting(monkeypatch, "checkpoint")

    # exactly at the threshold (all messages fit the budget): one pass, as before
    set_budget(potential, num_edges * widest(potential) * 8)
    potential(batch, forces=True, stress=True)
    assert checkpoints[0] == 0
    # one edge more than the widest layer's budget holds: that layer runs in chunks
    set_budget(potential, (num_edges - 1) * widest(potential) * 8)
    potential(batch, forces=True, stress=True)
    assert checkpoints[0] >= 2
    # the default budget is a class attribute: a small batch takes the one-pass path
    for m in modules:
        del m.edge_chunk_bytes
    assert modules[0].edge_chunk_bytes == ChannelwiseMessages.edge_chunk_bytes >= 2**20
    checkpoints[0] = 0
    potential(batch, forces=True, stress=True)
    assert checkpoints[0] == 0
    # training (double backward for force losses) keeps the one-pass path at any size
    set_budget(potential, 1)
    potential.train()
    potential(batch, forces=True, stress=True)
    assert checkpoints[0] == 0


def saved_bytes(potential: mlip.Potential, batch) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of one call."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        potential(batch, forces=True, stress=True)
    return sum(storages.values())


@pytest.mark.parametrize(
    "family, overrides, bound",
    [
        # messages wide against the node features (poly2 mixing on its small grid), as at the
        # authors' sizes: measured 0.09
        ("facet", dict(channels=[32, 16, 8], grid_channels=8, grid_activation="poly2"), 0.2),
        # the body-order product's grid tensors are node-wise and stay: measured 0.31
        ("mace", dict(channels=[16, 16]), 0.4),
    ],
)
def test_chunked_path_keeps_few_tensors_for_backward(family, overrides, bound, batch):
    potential = make_potential(family, frozen=True, **overrides)
    set_budget(potential, UNCHUNKED)
    one_pass = saved_bytes(potential, batch)
    set_budget(potential, 64 * 8 * widest(potential))  # chunks of about 64 edges
    chunked = saved_bytes(potential, batch)
    assert chunked < bound * one_pass, (chunked, one_pass)


def test_edge_chunks_cover_whole_atoms():
    torch.manual_seed(0)
    num_nodes = 50
    dst = torch.randint(0, 40, (700,))  # atoms 40 .. 49 have no edges
    dst[:60] = 7  # one atom with more edges than a chunk holds
    order, edge_sizes, node_sizes = edge_chunks(dst, num_nodes, max_edges=50)
    assert torch.equal(order.sort().values, torch.arange(700))
    assert sum(edge_sizes) == 700 and sum(node_sizes) == num_nodes
    assert all(n > 0 for n in node_sizes)
    sorted_dst = dst[order]
    assert bool((sorted_dst[1:] >= sorted_dst[:-1]).all())
    most = int(torch.bincount(dst).max())
    first, start = 0, 0
    for edges, nodes in zip(edge_sizes, node_sizes, strict=True):
        part = sorted_dst[start : start + edges]
        assert bool(((part >= first) & (part < first + nodes)).all())  # whole atoms
        assert edges < 50 + most
        first, start = first + nodes, start + edges
    assert len(edge_sizes) >= 10
