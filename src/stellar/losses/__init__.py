"""The STELLAR pretraining objective (arXiv 2602.01905) and its numerical pieces; the online
clustering heads are model parameters (:mod:`stellar.models.networks`)."""
