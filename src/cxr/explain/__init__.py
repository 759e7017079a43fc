"""Why the model said what it said: Grad-CAM heatmaps on the original image, overlays, and the
pointing game that checks them on phantoms."""

from cxr.explain.gradcam import (
    LAYERS,
    METHODS,
    Explainable,
    feature_grid,
    heatmap_for_preprocessed,
    heatmaps,
    overlay,
    save_overlay,
)
from cxr.explain.pointing import format_pointing_table, pointing_game

__all__ = [
    "LAYERS",
    "METHODS",
    "Explainable",
    "feature_grid",
    "format_pointing_table",
    "heatmap_for_preprocessed",
    "heatmaps",
    "overlay",
    "pointing_game",
    "save_overlay",
]
