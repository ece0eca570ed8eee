"""The ``mlip`` command: thin sub-commands that parse arguments, call the library and report."""

from __future__ import annotations

import argparse
import sys

import mlip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlip", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mlip {mlip.__version__}")
    parser.add_subparsers(dest="command", metavar="command")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
