"""One module per `mlip` sub-command: each has `main(argv) -> exit status`."""

from __future__ import annotations

import argparse


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options every simulation command shares: which model file and where it runs."""
    p.add_argument("--model", help="model file (default: the bundled default model)")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the model's")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
