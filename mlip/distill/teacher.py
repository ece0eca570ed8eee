"""The teacher: any ASE calculator, with the name and licence that the student's model file states.

``conf/distill/teacher/*.yaml`` build a :class:`Teacher` whose ``calculator`` node is any ASE
calculator's constructor (``_target_: ase.calculators.emt.EMT``); :func:`from_model_file` makes
one of an mlip model file. Third-party teachers (SevenNet, CHGNet) are imported only when their
config is chosen, never by mlip itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ase.calculators.calculator import Calculator

from mlip.export import sha256


@dataclass
class Teacher:
    """An ASE calculator that labels frames (energy eV, forces eV/Å, stress eV/Å³).

    Args:
        calculator: the ASE calculator (built by Hydra from its ``_target_`` node).
        name: what the teacher is, e.g. ``"SevenNet-0 (11Jul2024)"``; goes into the model file.
        licence: the licence of the teacher's weights/code, e.g. ``"GPL-3.0"``; goes into the
            model file (a student inherits its teacher's terms).
        citation: where the teacher is described (a DOI or URL), or None.
        settings: anything else worth recording (JSON-able), e.g. the model file's sha256.
    """

    calculator: Calculator
    name: str
    licence: str | None = None
    citation: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-able ``{"name", "licence", "citation", "calculator", **settings}``."""
        kind = type(self.calculator)
        return {
            "name": self.name,
            "licence": self.licence,
            "citation": self.citation,
            "calculator": f"{kind.__module__}.{kind.__qualname__}",
            **self.settings,
        }


def from_model_file(
    path: str | os.PathLike, device: str = "cpu", dtype: str | None = None
) -> Teacher:
    """An mlip model file (``"default"``: the bundled model) as the teacher, through
    :class:`~mlip.calculator.MLIPCalculator`; its licence is the one its metadata states
    (``metadata["licence"]``, or for a distilled model its own teacher's), else unknown."""
    from mlip.calculator import MLIPCalculator
    from mlip.models import model_file

    path = model_file(path)
    calculator = MLIPCalculator(path, device=device, dtype=dtype)
    metadata = calculator.potential.metadata or {}
    inherited = (metadata.get("distill") or {}).get("teacher") or {}
    return Teacher(
        calculator=calculator,
        name=f"mlip model file {path.name}",
        licence=metadata.get("licence") or inherited.get("licence"),
        settings={"path": str(path.resolve()), "sha256": sha256(path), "device": device},
    )


__all__ = ["Teacher", "from_model_file"]
