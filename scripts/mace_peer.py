"""mace-torch models with MACE-MP-0's hyperparameters and random weights, for the benchmarks.

Imported by the ``bench_*.py`` scripts beside it (``python scripts/bench_speed.py`` puts this folder
on ``sys.path``). mace-torch is the optional ``bench`` extra; nothing is downloaded: the models are
built here with MACE-MP-0's sizes (speed does not depend on the weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

import mlip.nn  # noqa: F401  (before e3nn / mace: registers a torch safe global e3nn needs)
from mlip.nn.config import default_dtype

HIDDEN_IRREPS = {"small": "128x0e", "medium": "128x0e+128x1o"}
MP_TABLE = list(range(1, 84)) + list(range(89, 95))  # MACE-MP-0's 89 elements


def build_mace_mp(
    size: str,
    dtype: torch.dtype,
    avg_num_neighbors: float,
    table: Sequence[int] = MP_TABLE,
    r_max: float = 6.0,
) -> torch.nn.Module:
    """``mace.modules.ScaleShiftMACE`` with MACE-MP-0 ``size`` ("small": 128x0e, "medium":
    128x0e + 128x1o) hyperparameters: max_ell 3, correlation 3, 2 interactions, 8 Bessel, p = 5
    cutoff, radial MLP [64, 64, 64], readout MLP 16x0e, residual interaction blocks; E0s zero,
    scale 1, shift 0. Seeded (``torch.manual_seed(0)``); ``r_max`` in Å."""
    from e3nn import o3
    from mace import modules

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    torch.manual_seed(0)
    with default_dtype(dtype):
        model = modules.ScaleShiftMACE(
            r_max=r_max,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=3,
            interaction_cls=block,
            interaction_cls_first=block,
            num_interactions=2,
            num_elements=len(table),
            hidden_irreps=o3.Irreps(HIDDEN_IRREPS[size]),
            MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.zeros(len(table)),
            avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=list(table),
            correlation=3,
            gate=torch.nn.functional.silu,
            radial_MLP=[64, 64, 64],
            radial_type="bessel",
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )
    return model.to(dtype)
