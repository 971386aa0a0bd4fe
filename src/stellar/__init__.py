"""STELLAR: sparse visual representations by spatial-semantic factorization.

The calls of the model card and of a research user: :func:`load_stellar` (a released name, a
weights file, a directory or a training run folder), :meth:`STELLAR.preprocess` /
:meth:`STELLAR.encode` / :meth:`STELLAR.reconstruct`, :func:`extract_features` (a folder of
images to features), :func:`train` (what ``stellar train`` runs) and the pretraining call of
:class:`StellarForPretraining` with :func:`total_loss`.
"""

from stellar.eval.encoder import extract_features
from stellar.eval.shards import load_features
from stellar.hub import create_stellar, load_model, load_stellar
from stellar.losses.objective import total_loss
from stellar.losses.pretraining import StellarForPretraining
from stellar.models.config import DecoderConfig, EncoderConfig, StellarConfig
from stellar.models.registry import list_models
from stellar.models.stellar import STELLAR
from stellar.train import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "STELLAR",
    "DecoderConfig",
    "EncoderConfig",
    "StellarConfig",
    "StellarForPretraining",
    "TrainResult",
    "create_stellar",
    "extract_features",
    "list_models",
    "load_features",
    "load_model",
    "load_stellar",
    "total_loss",
    "train",
]
