"""Numerical pieces of the STELLAR pretraining objective (arXiv 2602.01905), one module per
loss; the online clustering heads are model parameters (:mod:`stellar.models.clustering`)."""
