"""The ``mlip`` command: dispatches ``mlip <command> ...`` to ``mlip.commands.<command>.main``.

Each command module parses its own arguments, calls the library and reports; it is imported only
when used, so ``mlip relax`` never pays for Lightning and Hydra.
"""

from __future__ import annotations

import importlib
import sys

import mlip

COMMANDS = {
    "train": "train a model (Hydra overrides, e.g. `mlip train data=zuo_si trainer.max_epochs=5`)",
    "distill": "distil a teacher into a student: `mlip distill cu.cif teacher=emt`",
    "export": "write the model file of a training run: `mlip export RUN_DIR`",
    "relax": "relax structures: `mlip relax structure.cif [--fmax 0.05]`",
    "md": "molecular dynamics: `mlip md structure.xyz --ensemble nvt --temperature 300`",
    "eval": "error tables and parity plots: `mlip eval --model model.pt data.xyz`",
    "data": "dataset tools: `mlip data stats|check|convert|preprocess ...`",
    "info": "what a model file holds: `mlip info model.pt`",
}


def usage() -> str:
    lines = [f"mlip {mlip.__version__}: machine-learned interatomic potentials", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`mlip COMMAND --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"mlip {mlip.__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mlip: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"mlip.commands.{command}")
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:  # `mlip train` says more itself
        print(f"mlip {command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
