"""Atomically writing checkpoint files (reading them: :mod:`stellar.checkpoint.weights`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor, nn

from stellar.checkpoint.card import CARD_NAME, model_card
from stellar.checkpoint.official import carries, to_official
from stellar.outputs import atomic_write

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CONFIG_METADATA_KEY = "stellar_config"
RUN_CONFIG = "config.yaml"  # a training run's settings, beside its checkpoints/


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    state: dict[str, Tensor] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a STELLAR ``model`` as ``config.json``, ``model.safetensors`` and a model card.

    The weights use the official layout and carry the config in their metadata (the file alone
    is self-describing); ``README.md`` is a Hugging Face model card (written when the folder has
    none), so the folder can be uploaded as it is. ``state`` replaces ``model.state_dict()``
    (e.g. gathered FSDP shards); ``metadata`` is added to the weights file's.
    """
    directory = Path(directory)
    config = json.dumps(model.config.to_dict(), indent=2) + "\n"
    official = to_official(model.state_dict() if state is None else state)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in official.items()}
    metadata = {"format": "pt", CONFIG_METADATA_KEY: config, **(metadata or {})}
    atomic_write(
        directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata=metadata)
    )
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(config))
    if not (directory / CARD_NAME).exists():  # a card the user wrote stays, as on the hub
        card = model_card(model.config.to_dict(), carries(list(official), "decoder"))
        atomic_write(directory / CARD_NAME, lambda tmp: tmp.write_text(card))
    return directory
