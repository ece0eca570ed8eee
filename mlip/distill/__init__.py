"""Distillation: a teacher (any ASE calculator, or an mlip model file) labels structures that
samplers make around the user's own or across the periodic table; a student is trained on the
labels with the ordinary training run and tested against the teacher.

The flow, one module per step::

    teacher.py     Teacher: an ASE calculator with the name and licence the model file states
    perturb.py     rattles, strains, vacancies, supercells (shared by the samplers and replay)
    samplers.py    StructureSampler: frames around given structures
    prototypes.py  PrototypeSampler: elemental and binary/ternary prototypes across the table
    md.py          TeacherMD: snapshots of short teacher-driven Langevin MD from any sampler's frames
    labels.py      teacher labels into ASE-LMDB, resumable, failures named
    student.py     the student's training run, its errors against the teacher, MD timing
    pipeline.py    the run directory and the steps in order (what `mlip distill` runs)

Import the pieces from their modules; this package imports nothing heavy.
"""
