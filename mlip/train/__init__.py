"""Training: loss, metrics, EMA, the LightningModule, checkpoints and the run itself.

Import the pieces from their modules (``mlip.train.runner.train``); this package imports nothing
heavy, so ``mlip train --help`` stays quick.
"""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
"""Hydra config directory ``mlip/conf``: in the repository a link to the top-level ``conf/``, in an
installed package a copy."""
