"""``mlip train [hydra overrides]``: train a model as ``conf/train.yaml`` composes it.

Everything after ``train`` goes to Hydra: overrides such as ``trainer.max_epochs=50``, group choices
such as ``logger=wandb``, and Hydra's own flags (``--help``, ``--cfg job``, ``--config-dir``).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING

from mlip.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelFileError,
    NonFiniteLossError,
    RunDirectoryError,
    TrainingTerminated,
    one_line,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

INTERRUPTED = (
    "interrupted; rerun the same command to continue from checkpoints/last.ckpt, if there is one"
)


def main(argv: list[str] | None = None) -> int:
    """Run Hydra on ``argv`` (the arguments after ``mlip train``); returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt as err:  # Ctrl+C at any point, in fit or test a TrainingInterrupted
        print(f"mlip train: {str(err) or INTERRUPTED}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


def _main(argv: list[str] | None) -> int:
    # imported here, so that Ctrl+C while they load is the one line of main
    import hydra

    from mlip.train import CONF_DIR

    argv = list(sys.argv[1:] if argv is None else argv)
    program = sys.argv[0]
    # Lightning's DDP launcher starts the other processes by rerunning sys.argv (plus Hydra's run
    # directory), so while training sys.argv must be the full `mlip train ...` command line.
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    command = argv if spec is not None and spec.name == "mlip.commands.train" else ["train", *argv]
    saved = list(sys.argv)

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
    def run(cfg: DictConfig) -> None:
        # Lightning is imported only when training, not for --help or --cfg
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        from mlip.train.runner import train

        sys.argv = [program, *command]
        try:
            train(cfg)
        except (
            DataError,
            ModelFileError,
            FileNotFoundError,
            RunDirectoryError,
            CheckpointError,
            ConfigError,
            MisconfigurationException,  # e.g. resuming past max_epochs
        ) as err:
            print(f"mlip train: error: {one_line(err)}", file=sys.stderr)
            raise SystemExit(2) from None
        except NonFiniteLossError as err:
            print(f"mlip train: stopped: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        except TrainingTerminated as err:
            print(f"mlip train: {err}", file=sys.stderr)
            raise SystemExit(143) from None  # 128 + SIGTERM, as a shell reports it

    sys.argv = [program, *argv]
    warnings.formatwarning = _format_warning
    try:
        run()
    except SystemExit as done:  # Hydra exits after --help; failures above exit with a status
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """mlip's own warnings as one line; other packages' (Lightning's) as Python prints them."""
    if f"{os.sep}mlip{os.sep}" in filename:
        return f"mlip train: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning

if __name__ == "__main__":
    sys.exit(main())
