"""Figures of models, as PIL images (matplotlib without pyplot: no display needed, the user's figures left alone):
MAE reconstructions (`reconstruction`) and segmentation overlays (`segmentation`). The command line that draws a
saved model's reconstructions, `python -m mae_hf.visualize`, is `cli`."""

from .reconstruction import (
    COLUMNS,
    figure_image,
    fixed_noise,
    reconstruct,
    reconstruction_grid,
    reconstruction_notes,
    reconstruction_title,
    titled_grid,
    to_uint8,
)
from .segmentation import class_colours, classes_shown, overlay, segmentation_figure

__all__ = [
    "COLUMNS",
    "class_colours",
    "classes_shown",
    "figure_image",
    "fixed_noise",
    "overlay",
    "reconstruct",
    "reconstruction_grid",
    "reconstruction_notes",
    "reconstruction_title",
    "segmentation_figure",
    "titled_grid",
    "to_uint8",
]
