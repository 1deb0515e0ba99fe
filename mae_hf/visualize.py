"""Reconstruction figures, as in the paper's figures and the official visualisation notebook: original | masked
input | reconstruction | reconstruction with the visible patches pasted back, titled with the step and mask ratio.

    python -m mae_hf.visualize MODEL_DIR IMAGE [IMAGE ...]       # writes MODEL_DIR/reconstruction_images.png
"""

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image

COLUMNS = ("original", "masked input", "reconstruction\n(removed patches)", "reconstruction\n+ visible patches")
CLI_FIGURE = "reconstruction_images.png"  # next to the model; the training's own reconstruction.png is left alone


@torch.no_grad()
def reconstruct(model, pixel_values: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The four panels, each (B, C, H, W) in the model's normalised pixel space (0 = the dataset's mean colour).
    The reconstruction holds the predictions of the removed patches only: the loss never reaches the visible ones,
    whose raw outputs are noise (0 there, like the removed patches of the masked input). With norm_pix_loss the
    prediction is mapped back with each patch's own mean and variance, taken from the original (as the official
    visualisation does)."""
    size = tuple(pixel_values.shape[-2:])
    interpolate = size != model.config.image_hw
    out = model(pixel_values, noise=noise, interpolate_pos_encoding=interpolate)
    target = model.patchify(pixel_values)  # (B, L, p*p*C)
    prediction = out.logits.float()
    if model.config.norm_pix_loss:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        prediction = prediction * (var + 1.0e-6) ** 0.5 + mean
    removed = out.mask.unsqueeze(-1)  # (B, L, 1): 1 = removed
    masked = model.unpatchify(target * (1 - removed), size)
    reconstruction = model.unpatchify(prediction * removed, size)
    pasted = model.unpatchify(target * (1 - removed) + prediction * removed, size)
    return [pixel_values, masked, reconstruction, pasted]


def to_uint8(images: torch.Tensor, mean, std) -> np.ndarray:
    """(B, C, H, W) normalised -> (B, H, W, 3) uint8."""
    mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    images = (images.float().cpu() * std + mean).clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def reconstruction_title(config, step: int | None = None) -> str:
    """'MAE reconstructions at step 1,440: mask ratio 0.75, 48 of 64 patches removed'."""
    at = "" if step is None else f" at step {step:,}"
    return (
        f"MAE reconstructions{at}: mask ratio {config.mask_ratio:g}, {config.num_masked_patches} of "
        f"{config.num_patches} patches removed"
    )


def reconstruction_notes(config) -> list[str]:
    """What the figure cannot show by itself: the grey patches, and the norm_pix_loss de-normalisation."""
    notes = [
        (
            "Grey: not shown (removed patches in the masked input; visible patches in the reconstruction, "
            "which the loss does not cover)."
        )
    ]
    if config.norm_pix_loss:
        notes.append(
            "norm_pix_loss: the model predicts per-patch normalised pixels; each predicted patch is shown "
            "with the mean and variance of the original patch."
        )
    return notes


def reconstruction_grid(
    model, pixel_values: torch.Tensor, mean, std, noise: torch.Tensor | None = None, step: int | None = None
) -> Image.Image:
    """One row per image, one titled column per panel (see COLUMNS and `reconstruct`)."""
    panels = [to_uint8(p, mean, std) for p in reconstruct(model, pixel_values, noise)]
    return titled_grid(panels, COLUMNS, reconstruction_title(model.config, step), reconstruction_notes(model.config))


def titled_grid(panels: list[np.ndarray], columns, title: str, notes=(), cell: float = 1.15) -> Image.Image:
    """Panels of (B, H, W, 3) uint8 as titled columns, one row per image, drawn by matplotlib (no display needed):
    `title` on top, `notes` (one line each) under the grid; `cell` is the side of an image in inches."""
    from matplotlib.figure import Figure

    rows, top, bottom = len(panels[0]), 0.8, 0.25 + 0.32 * len(notes)
    height = rows * cell + top + bottom
    figure = Figure(figsize=(len(panels) * cell + 0.2, height), dpi=100)
    axes = figure.subplots(rows, len(panels), squeeze=False)
    figure.subplots_adjust(
        left=0.02, right=0.98, top=1 - top / height, bottom=bottom / height, wspace=0.04, hspace=0.04
    )
    for column, panel in enumerate(panels):
        axes[0, column].set_title(columns[column], fontsize=8)
        for row in range(rows):
            axes[row, column].imshow(panel[row], interpolation="nearest")
            axes[row, column].set_axis_off()
    figure.suptitle(title, fontsize=8.5, wrap=True, y=1 - 0.08 / height, va="top")
    for i, note in enumerate(notes):
        figure.text(0.02, (bottom - 0.12 - 0.32 * i) / height, note, fontsize=6.5, wrap=True, va="top")
    return figure_image(figure)


def figure_image(figure) -> Image.Image:
    """A matplotlib Figure rendered (Agg, no display) as an RGB PIL image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def tile_grid(panels: list[np.ndarray], min_side: int) -> Image.Image:
    """Panels of (B, H, W, 3) uint8 as columns, one row per image, 2 px apart; small images are enlarged
    (nearest) to at least `min_side`."""
    batch, height, width, _ = panels[0].shape
    scale = max(1, -(-min_side // max(height, width)))
    pad = 2
    cell_h, cell_w = height * scale, width * scale
    grid = Image.new("RGB", (len(panels) * (cell_w + pad) + pad, batch * (cell_h + pad) + pad), (255, 255, 255))
    for column, panel in enumerate(panels):
        for row in range(batch):
            tile = Image.fromarray(panel[row]).resize((cell_w, cell_h), Image.NEAREST)
            grid.paste(tile, (pad + column * (cell_w + pad), pad + row * (cell_h + pad)))
    return grid


def fixed_noise(batch: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    """The same masks every time: figures from successive evaluations are comparable."""
    return torch.rand(batch, num_patches, generator=torch.Generator().manual_seed(seed))


def load_normalisation(model_dir: str):
    path = os.path.join(model_dir, "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        return saved.get("image_mean"), saved.get("image_std")
    from .data import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD


def trained_steps(model_dir: str) -> int | None:
    """The step a saved model was trained to (its trainer_state.json), if known."""
    path = os.path.join(model_dir, "trainer_state.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("global_step")


def main(argv=None) -> str:
    from .data import eval_transform, to_model_mode
    from .data.images import upright
    from .modeling_mae import MAEForPreTraining
    from .preflight import check_model_folder, check_writable_file

    parser = argparse.ArgumentParser(description="Reconstruction figure of a saved MAE pretraining model.")
    parser.add_argument("model_dir", help="a saved MAEForPreTraining folder (or a Hub id, with --output)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--output", default=None, help=f"the figure (default: MODEL_DIR/{CLI_FIGURE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masks (default: %(default)s)")
    parser.add_argument("--mask_ratio", type=float, default=None, help="default: the model's")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.model_dir) and args.output is None:  # a Hub id has no folder to write next to
        parser.error(f"no such model folder: {args.model_dir} (for a model on the Hub, give --output)")
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        parser.error(f"no such image file: {', '.join(missing)}")
    output = args.output or os.path.join(args.model_dir, CLI_FIGURE)
    # a figure of random weights says nothing
    check_model_folder(args.model_dir, flag="MODEL_DIR", model_class=MAEForPreTraining)
    check_writable_file(output)

    overrides = {} if args.mask_ratio is None else {"mask_ratio": args.mask_ratio}
    model = MAEForPreTraining.from_pretrained(args.model_dir, **overrides).eval()
    mean, std = load_normalisation(args.model_dir)
    transform = eval_transform(model.config.image_hw, mean, std)
    channels = model.config.num_channels
    # upright as `datasets` decodes training images: a photo's EXIF orientation applies here too
    pixel_values = torch.stack([transform(to_model_mode(upright(Image.open(p)), channels)) for p in args.images])
    noise = fixed_noise(len(args.images), model.config.num_patches, args.seed)
    grid = reconstruction_grid(model, pixel_values, mean, std, noise, step=trained_steps(args.model_dir))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    grid.save(output)
    print(f"wrote {output}")
    return output


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


if __name__ == "__main__":
    main()
