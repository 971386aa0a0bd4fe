"""Pictures of STELLAR's concepts: maps, PCA, figures (``stellar viz``) and retrieval
(``stellar retrieve``)."""

from stellar.viz.maps import *  # noqa: F403  (the package's public names are maps' own)
