"""Procedural "concept scenes": synthetic images whose "what" and "where" are known exactly.

The package: ``geometry`` (shapes as signed distance functions), ``render`` (one scene),
``dataset`` (``ConceptScenes`` and ``export_scenes``). The scores measured on these scenes and
the ``stellar scenes`` export command belong to the demo application (``stellar.demo``).
"""

from stellar.data.scenes.dataset import EXPORT_FOLDERS, ConceptScenes, export_scenes
from stellar.data.scenes.geometry import SHAPE_AREA, SHAPE_EXTENT, SHAPES, shape_sdf
from stellar.data.scenes.render import (
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    FILLS,
    MIN_SIZE,
    MIN_VISIBLE,
    MIN_VISIBLE_PIXELS,
    SPLITS,
    render_scene,
)

__all__ = [
    "BACKGROUNDS",
    "COLOUR_RGB",
    "COLOURS",
    "EXPORT_FOLDERS",
    "FILLS",
    "MIN_SIZE",
    "MIN_VISIBLE",
    "MIN_VISIBLE_PIXELS",
    "SHAPES",
    "SHAPE_AREA",
    "SHAPE_EXTENT",
    "SPLITS",
    "ConceptScenes",
    "export_scenes",
    "render_scene",
    "shape_sdf",
]
