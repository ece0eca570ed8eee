"""``mlip distill [STRUCTURE ...] [overrides]``: distil a teacher into a student, as
``conf/distill.yaml`` composes it.

Arguments with ``=`` are Hydra overrides (``teacher=model teacher.path=big.pt``,
``md.temperatures_K=[300,900]``, ``"student.overrides=['trainer.max_epochs=50']"``);
the others are structure files (``structures=[...]``, read by ``sampler=structures``).
``--cfg job`` prints the composed config and exits.
"""

from __future__ import annotations

import sys

from mlip.errors import (
    INPUT_ERRORS,
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    RunDirectoryError,
    TrainingTerminated,
    one_line,
)

PROG = "mlip distill"
USAGE = f"""usage: {PROG} [STRUCTURE ...] [KEY=VALUE ...] [--cfg job]

Teacher -> structures -> labels -> student, each step configured in conf/distill.yaml:
  teacher=emt|model|sevennet0|chgnet   the ASE calculator to distil (teacher=model teacher.path=M.pt)
  sampler=structures|prototypes        around the STRUCTURE files, or across the periodic table
  md.temperatures_K=[300,900] md.steps=200 md.interval=10   teacher MD snapshots
  student.model=facet_small "student.overrides=['trainer.max_epochs=100','cutoff=4.5']"
                                       the student's `mlip train` run (student.finetune_from=M.pt)
  run_name=NAME (run_dir=runs/NAME)   seed=0   test_fraction=0.1   until=labels (stop after labelling)
Examples:
  {PROG} cu.cif                          # EMT teacher (ASE), a >= 64-atom Cu supercell
  {PROG} si.cif teacher=sevennet0 md.temperatures_K=[300,1200] run_name=si_7net
  {PROG} sampler=prototypes sampler.elements=[Cu,Ni] teacher=chgnet
Rerunning the same command continues its run directory (structures, labels, training).
Writes <run_dir>/model.pt, whose metadata names the teacher, its licence, the sampler and the
student's errors against the teacher on held-out frames."""


def main(argv: list[str] | None = None) -> int:
    """Compose the config from ``argv`` (the arguments after ``mlip distill``) and run it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


def _main(argv: list[str]) -> int:
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from mlip.distill.labels import LabelError
    from mlip.distill.pipeline import compose, distill

    show = False
    if "--cfg" in argv:
        at = argv.index("--cfg")
        if argv[at + 1 : at + 2] != ["job"]:
            print(f"{PROG}: error: --cfg takes `job`", file=sys.stderr)
            return 2
        show, argv = True, argv[:at] + argv[at + 2 :]
    unknown = [a for a in argv if a.startswith("-")]
    if unknown:
        print(f"{PROG}: error: unknown option {unknown[0]} (see {PROG} --help)", file=sys.stderr)
        return 2
    files = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if files:
        listed = ",".join("'" + f.replace("\\", "\\\\").replace("'", "\\'") + "'" for f in files)
        overrides.insert(0, f"structures=[{listed}]")
    try:
        cfg = compose(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    if show:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    try:
        distill(cfg)
    except (ConfigError, RunDirectoryError, CheckpointError, LabelError, *INPUT_ERRORS) as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as err:  # a node that does not build:
        print(f"{PROG}: error: {one_line(err.__cause__ or err)}", file=sys.stderr)  # its reason
        return 2
    except NonFiniteLossError as err:
        print(f"{PROG}: stopped: {err}", file=sys.stderr)
        return 1
    except TrainingTerminated as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 143  # 128 + SIGTERM, as a shell reports it
    return 0


if __name__ == "__main__":
    sys.exit(main())
