"""One module per `mlip` sub-command: each has `main(argv) -> exit status`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def report_errors(prog: str, run: Callable[[argparse.Namespace], int], args) -> int:
    """Run a command; a user error (bad file, unknown element, ...) becomes one line on stderr
    and exit status 1, never a traceback."""
    from mlip.sim.io import INPUT_ERRORS, one_line

    try:
        return run(args)
    except INPUT_ERRORS as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 1
