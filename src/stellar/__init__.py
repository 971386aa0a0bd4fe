"""STELLAR: sparse visual representations by spatial-semantic factorization."""

__version__ = "0.1.0"
