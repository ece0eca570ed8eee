"""One module per `mlip` sub-command: each has `main(argv) -> exit status`."""

from __future__ import annotations

import argparse
import importlib.util
import sys


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options every simulation command shares: which model file and where it runs."""
    p.add_argument(
        "--model",
        help="model file, or a bundled model's name: si (the Si demo, the default) or universal",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the model's")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def torch_sim_found(prog: str, fallback: str) -> bool:
    """Whether torch-sim can be imported; if not, a note on stderr says what runs instead
    (``fallback``, e.g. "one run at a time") and how to install it."""
    if importlib.util.find_spec("torch_sim") is not None:
        return True
    print(f'{prog}: note: {fallback} (pip install "mlip[torchsim]")', file=sys.stderr)
    return False
