"""Adapters to other simulation packages, each an optional extra.

- :mod:`mlip.integrations.torchsim`: :class:`~mlip.integrations.torchsim.MLIPTorchSimModel`, a
  torch-sim ``ModelInterface`` (``pip install "mlip[torchsim]"``).

Nothing is imported here: ``import mlip.integrations`` does not need torch-sim, and importing
``mlip.integrations.torchsim`` without it raises ``ImportError``.
"""
