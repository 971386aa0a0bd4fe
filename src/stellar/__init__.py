"""STELLAR: sparse visual representations by spatial-semantic factorization."""

from stellar.hub import create_stellar, load_model, load_stellar
from stellar.models.config import DecoderConfig, EncoderConfig, StellarConfig
from stellar.models.registry import list_models
from stellar.models.stellar import STELLAR

__version__ = "0.1.0"

__all__ = [
    "STELLAR",
    "DecoderConfig",
    "EncoderConfig",
    "StellarConfig",
    "create_stellar",
    "list_models",
    "load_model",
    "load_stellar",
]
