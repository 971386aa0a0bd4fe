"""Procedural "concept scenes" (see :mod:`stellar.data.scenes.render`)."""

from stellar.data.scenes.render import (  # noqa: F401
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    EXPORT_FOLDERS,
    FILLS,
    MIN_SIZE,
    MIN_VISIBLE,
    MIN_VISIBLE_PIXELS,
    SHAPE_AREA,
    SHAPE_EXTENT,
    SHAPES,
    SPLITS,
    ConceptScenes,
    export_scenes,
    render_scene,
    shape_sdf,
)
