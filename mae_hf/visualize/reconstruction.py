"""Reconstruction figures, as in the paper's figures and the official visualisation notebook: original | masked
input | reconstruction | reconstruction with the visible patches pasted back, titled with the step and mask ratio."""

import numpy as np
import torch
from PIL import Image

COLUMNS = ("original", "masked input", "reconstruction\n(removed patches)", "reconstruction\n+ visible patches")


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


def fixed_noise(batch: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    """The same masks every time: figures from successive evaluations are comparable."""
    return torch.rand(batch, num_patches, generator=torch.Generator().manual_seed(seed))
