"""Segmentation figures: each image with its ground truth and the prediction drawn over it, one fixed colour per
class, and a legend of the classes shown."""

import numpy as np
from PIL import Image

BACKGROUND_NAMES = ("background", "other")  # classes left uncoloured in segmentation figures
IGNORED_COLOUR = (128, 128, 128)


def class_colours(names: list[str]) -> np.ndarray:
    """(len(names), 3) uint8: one fixed colour per class id, the same in every figure. Background classes
    (`BACKGROUND_NAMES`) are near-black; the others take matplotlib's tab10 (up to 10 of them), tab20 (up to 20), or
    else evenly spread hues, in id order."""
    import matplotlib

    coloured = [i for i, name in enumerate(names) if name.lower() not in BACKGROUND_NAMES]
    count = len(coloured)
    if count <= 20:
        table = np.asarray(matplotlib.colormaps["tab10" if count <= 10 else "tab20"].colors)[:count, :3]
    else:
        hues = (np.arange(count) * 0.618033988749895) % 1.0  # golden-ratio steps: neighbouring ids differ
        table = matplotlib.colors.hsv_to_rgb(np.stack([hues, np.full(count, 0.75), np.full(count, 0.95)], 1))
    colours = np.full((len(names), 3), 25, dtype=np.uint8)
    colours[coloured] = (table * 255).round().astype(np.uint8)
    return colours


def overlay(
    image: np.ndarray,
    classes: np.ndarray,
    colours: np.ndarray,
    uncoloured: set,
    ignore_index: int = 255,
    alpha: float = 0.7,
) -> np.ndarray:
    """(H, W, 3) uint8: the image in dimmed grey with each pixel's class colour blended in (`alpha`); classes in
    `uncoloured` (background) keep the grey image, ignored pixels are plain grey."""
    grey = np.repeat(image.astype(np.float64).mean(axis=-1, keepdims=True), 3, axis=-1) * 0.6
    classes = np.asarray(classes).astype(np.int64)
    coloured = (classes != ignore_index) & (classes < len(colours)) & ~np.isin(classes, list(uncoloured))
    out = grey.copy()
    out[coloured] = grey[coloured] * (1 - alpha) + colours[classes[coloured]] * alpha
    out[classes == ignore_index] = IGNORED_COLOUR
    return out.round().astype(np.uint8)


def classes_shown(labels, predictions, ignore_index: int = 255) -> list[int]:
    """The class ids found in any of the maps (the figure's legend), sorted; `ignore_index` left out."""
    return sorted(
        set(np.unique(np.concatenate([np.ravel(m) for m in (*labels, *predictions)])).tolist()) - {ignore_index}
    )


def segmentation_figure(
    images,
    labels,
    predictions,
    id2label: dict,
    ignore_index: int = 255,
    title: str | None = None,
    panel_inches: float = 2.0,
):
    """A PIL image: one row per example -- the image, its ground truth and the prediction, both drawn over the image
    with ONE colour per class (`class_colours`) -- and a legend of the classes shown. images: (H, W, 3) uint8
    each; labels, predictions: (H, W) class ids each, at the image's size."""
    import io

    from matplotlib.figure import Figure  # no pyplot: the user's backend and open figures are left alone
    from matplotlib.patches import Patch

    names = {int(k): str(v) for k, v in id2label.items()}
    ordered = [names.get(i, str(i)) for i in range(max(names) + 1)]
    colours = class_colours(ordered)
    uncoloured = {i for i, name in enumerate(ordered) if name.lower() in BACKGROUND_NAMES}
    rows = len(images)
    width, height = 3 * panel_inches + 1.6, rows * panel_inches + 0.5
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, 3, squeeze=False)
    for row, (image, truth, prediction) in enumerate(zip(images, labels, predictions)):
        panels = (
            image,
            overlay(image, truth, colours, uncoloured, ignore_index),
            overlay(image, prediction, colours, uncoloured, ignore_index),
        )
        for column, (panel, heading) in enumerate(zip(panels, ("image", "ground truth", "prediction"))):
            axes[row, column].imshow(panel, interpolation="nearest")
            axes[row, column].set_axis_off()
            if row == 0:
                axes[row, column].set_title(heading)
    handles = [
        Patch(facecolor=colours[c] / 255, edgecolor="black", label=ordered[c])
        for c in classes_shown(labels, predictions, ignore_index)
        if c < len(colours)
    ]
    if any((np.asarray(m) == ignore_index).any() for m in labels):
        handles.append(Patch(facecolor=np.array(IGNORED_COLOUR) / 255, edgecolor="black", label="ignored"))
    fig.legend(handles=handles, loc="center right", frameon=False, title="classes")
    top = 1.0
    if title:  # placed in inches from the top: at the default y (a share of the height) tall figures ran it into
        # the column headings, which tight_layout does not move out of its way
        fig.suptitle(title, y=1 - 0.08 / height, va="top")
        top = 1 - 0.12 / height
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / width, top))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
