"""Numerical pieces of the STELLAR pretraining objective (arXiv 2602.01905).

The online clustering heads are model parameters: :mod:`stellar.models.clustering`.
"""

from stellar.losses.clustering import clustering_targets, cross_entropy_soft
from stellar.losses.koleo import koleo_loss
from stellar.losses.masking import num_kept, random_masking
from stellar.losses.matching import gather_matched, set_alignment_loss, sinkhorn_match
from stellar.losses.sinkhorn import sinkhorn_knopp

__all__ = [
    "clustering_targets",
    "cross_entropy_soft",
    "gather_matched",
    "koleo_loss",
    "num_kept",
    "random_masking",
    "set_alignment_loss",
    "sinkhorn_knopp",
    "sinkhorn_match",
]
