"""What a run trains on and with: the dataset, the model, and the optimizer's parameter groups."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset

from stellar.checkpoint.mae import init_encoder_from_mae
from stellar.errors import UsageError
from stellar.hub import create_stellar, load_stellar
from stellar.models.stellar import STELLAR
from stellar.train.config import TrainConfig


def build_dataset(cfg: TrainConfig) -> Dataset:
    """The training images; checked before any training work starts."""
    data = cfg.data
    if data.source == "scenes":
        from stellar.data.scenes import ConceptScenes

        return ConceptScenes(size=data.scenes_size, length=data.scenes_length, seed=data.seed)
    from stellar.data.folder import validate_image_folder

    if not data.root:  # a preset for image folders leaves it to the command line
        raise UsageError("data.source=folder needs data.root=/path/to/images")
    return validate_image_folder(data.root, canvas_size=data.canvas_size)


def build_model(cfg: TrainConfig) -> STELLAR:
    """A ``purpose="pretrain"`` model: a preset, continued from a checkpoint, or MAE-initialised."""
    vq = cfg.vq_model
    if cfg.init.checkpoint:
        model = load_stellar(cfg.init.checkpoint, purpose="pretrain", vq_model=vq)
    else:
        model = create_stellar(cfg.model, purpose="pretrain", vq_model=vq, **cfg.model_overrides)
    if cfg.init.encoder:
        init_encoder_from_mae(model, cfg.init.encoder)
    return model.requires_grad_(True).train()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, and the CLS/position/concept tokens."""
    no_decay_names = ("cls_token", "pos_embed", "sparse_tokens")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(no_decay_names) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
