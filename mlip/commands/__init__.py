"""One module per `mlip` sub-command: each has `main(argv) -> exit status`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options every simulation command shares: which model file and where it runs."""
    p.add_argument("--model", help="model file (default: the bundled default model)")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the model's")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def report_errors(prog: str, run: Callable[[argparse.Namespace], int], args) -> int:
    """Run a command; a user error (bad file, unknown element, ...) becomes one line on stderr
    and exit status 1, never a traceback."""
    from mlip.sim.io import INPUT_ERRORS, one_line

    try:
        return run(args)
    except INPUT_ERRORS as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 1
