"""Overrides that shrink the ``cpu-smoke`` preset to a run of a few seconds (train tests)."""

TINY = [
    "data.scenes_length=64",
    "batch_size=4",
    "augment.n_global=2",
    "augment.n_local=2",
    "augment.n_masked=2",
    "tensorboard=false",
    "progress=false",
]
