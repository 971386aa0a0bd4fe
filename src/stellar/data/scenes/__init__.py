"""Procedural "concept scenes": synthetic images whose "what" and "where" are known exactly
(the scores measured on them belong to ``stellar.demo``)."""

from stellar.data.scenes.dataset import ConceptScenes, export_scenes
from stellar.data.scenes.geometry import SHAPES
from stellar.data.scenes.render import COLOURS, render_scene

__all__ = ["COLOURS", "SHAPES", "ConceptScenes", "export_scenes", "render_scene"]
