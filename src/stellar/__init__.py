"""STELLAR: sparse visual representations by spatial-semantic factorization."""

from stellar.api import load_stellar
from stellar.hub import create_stellar, load_model
from stellar.losses.objective import total_loss
from stellar.models.config import DecoderConfig, EncoderConfig, StellarConfig
from stellar.models.registry import list_models
from stellar.models.stellar import STELLAR
from stellar.train.pretraining import StellarForPretraining

__version__ = "0.1.0"

__all__ = [
    "STELLAR",
    "DecoderConfig",
    "EncoderConfig",
    "StellarConfig",
    "StellarForPretraining",
    "create_stellar",
    "list_models",
    "load_model",
    "load_stellar",
    "total_loss",
]
