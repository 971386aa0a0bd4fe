"""Pictures of STELLAR's concepts: maps, PCA, figures (``stellar viz``) and retrieval
(``stellar retrieve``). Drawn with PIL and torch only."""

from stellar.viz.maps import (
    argmax_segmentation,
    compose_panel,
    concept_grid,
    concept_overlay,
    heatmap,
    palette,
    pca_rgb,
    to_pil,
)

__all__ = [
    "argmax_segmentation",
    "compose_panel",
    "concept_grid",
    "concept_overlay",
    "heatmap",
    "palette",
    "pca_rgb",
    "to_pil",
]
