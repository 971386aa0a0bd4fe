"""How many of the package's files a user call passes through (docs/ARCHITECTURE.md targets).

    python benchmarks/code_paths.py step   # one training step of the cpu-smoke preset
    python benchmarks/code_paths.py load   # load_stellar of a checkpoint folder (strict load)
    python benchmarks/code_paths.py name   # load_stellar("stellar-b16") from an offline HF cache

Every Python function call made during the measured call is recorded (``sys.setprofile``) and
the files of ``src/stellar`` it ran code in are listed. ``step`` measures ``Trainer.train_step``
alone (the set-up is not a step); layers of the network (``layers/``) are listed apart, as the
model's building blocks rather than the step's logic.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import stellar

PACKAGE = Path(stellar.__file__).resolve().parent


def files_called(run: Callable[[], object]) -> list[str]:
    """The package's files whose code runs during ``run()``, in order of first call."""
    seen: dict[str, None] = {}

    def profile(frame, event, arg):
        if event == "call":
            path = Path(frame.f_code.co_filename)
            if path.is_relative_to(PACKAGE):
                seen.setdefault(str(path.relative_to(PACKAGE)), None)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return list(seen)


def measure_step() -> list[str]:
    from stellar.train.config import load_config
    from stellar.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(load_config("cpu-smoke", [f"out={out}"]))
        batch = next(iter(trainer.loader))
        trainer.train_step([batch])  # warm: the first call imports lazily
        return files_called(lambda: trainer.train_step([batch]))


def measure_load() -> list[str]:
    with tempfile.TemporaryDirectory() as out:
        stellar.create_stellar("stellar-tiny").save_pretrained(out)
        return files_called(lambda: stellar.load_stellar(out))


def measure_name() -> list[str]:
    """``load_stellar("stellar-b16")`` offline, from a Hugging Face cache laid out in a temporary
    ``HF_HOME`` (zero weights of the released shapes and a model table)."""
    import json
    import os

    import torch

    tmp = Path(tempfile.mkdtemp())
    os.environ.update(HF_HOME=str(tmp), HF_HUB_OFFLINE="1")
    from huggingface_hub import constants

    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(tmp / "hub"), True
    from safetensors.torch import save_file

    from stellar.checkpoint.official import to_official
    from stellar.models.registry import get_config

    with torch.device("meta"):
        shapes = to_official(stellar.STELLAR(get_config("stellar-b16")).state_dict())
    snapshot = tmp / "hub" / "models--microsoft--STELLAR" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    zeros = {k: torch.zeros(v.shape, dtype=torch.bfloat16) for k, v in shapes.items()}
    save_file(zeros, snapshot / "stellar-b16.safetensors")
    entry = {
        "weights": "stellar-b16.safetensors",
        "num_sparse_tokens": 16,
        "backbone": "facebook/vit-mae-base",
    }
    (snapshot / "config.json").write_text(json.dumps({"models": {"stellar-b16": entry}}))
    return files_called(lambda: stellar.load_stellar("stellar-b16"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["step", "load", "name"])
    measure = {"step": measure_step, "load": measure_load, "name": measure_name}
    files = measure[parser.parse_args().what]()
    logic = [f for f in files if not f.startswith("layers/")]
    print(f"{len(logic)} files (+ {len(files) - len(logic)} in layers/):")
    for f in files:
        print("  ", f)


if __name__ == "__main__":
    main()
