"""Reconstruction figures: original | masked | reconstruction | reconstruction with the visible patches pasted back.

    python -m mae_hf.visualize MODEL_DIR IMAGE [IMAGE ...] --output grid.png
"""

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image

COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")


@torch.no_grad()
def reconstruct(model, pixel_values: torch.Tensor, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The four panels, each (B, C, H, W) in the model's normalised pixel space. With norm_pix_loss the prediction
    is mapped back with each patch's own mean and variance (taken from the original)."""
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
    reconstruction = model.unpatchify(prediction, size)
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


def reconstruction_grid(
    model, pixel_values: torch.Tensor, mean, std, noise: torch.Tensor | None = None, min_side: int = 96
) -> Image.Image:
    """One row per image, one column per panel (see COLUMNS)."""
    return tile_grid([to_uint8(p, mean, std) for p in reconstruct(model, pixel_values, noise)], min_side)


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


def main(argv=None) -> None:
    from .data import eval_transform, to_model_mode
    from .modeling_mae import MAEForPreTraining

    parser = argparse.ArgumentParser(description="Reconstruction grid of a saved MAE pretraining model.")
    parser.add_argument("model_dir")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--output", default="reconstruction.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    parser.add_argument("--mask_ratio", type=float, default=None, help="default: the model's")
    args = parser.parse_args(argv)
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        parser.error(f"no such image file: {', '.join(missing)}")

    overrides = {} if args.mask_ratio is None else {"mask_ratio": args.mask_ratio}
    model = MAEForPreTraining.from_pretrained(args.model_dir, **overrides).eval()
    mean, std = load_normalisation(args.model_dir)
    transform = eval_transform(model.config.image_hw, mean, std)
    channels = model.config.num_channels
    pixel_values = torch.stack([transform(to_model_mode(Image.open(p), channels)) for p in args.images])
    noise = fixed_noise(len(args.images), model.config.num_patches, args.seed)
    reconstruction_grid(model, pixel_values, mean, std, noise).save(args.output)
    print(f"wrote {args.output} ({' | '.join(COLUMNS)})")


if __name__ == "__main__":
    main()


def palette(num_labels: int, seed: int = 0) -> np.ndarray:
    """(num_labels + 1, 3) uint8 colours; the last row (grey) is for ignored pixels."""
    colours = np.random.default_rng(seed).integers(40, 256, (num_labels, 3), dtype=np.uint8)
    return np.concatenate([colours, np.full((1, 3), 128, dtype=np.uint8)])


def colour_map(labels: torch.Tensor, colours: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(B, H, W) class ids -> (B, H, W, 3) uint8; ignored pixels grey."""
    labels = labels.cpu().numpy().astype(np.int64)
    labels = np.where((labels == ignore_index) | (labels >= len(colours) - 1), len(colours) - 1, labels)
    return colours[labels]


def segmentation_grid(
    pixel_values: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor, mean, std, num_labels: int,
    ignore_index: int = 255, alpha: float = 0.5, min_side: int = 128,
) -> Image.Image:
    """One row per image: the image, the ground truth over it, the prediction over it (like the seed's figures)."""
    images = to_uint8(pixel_values, mean, std)
    colours = palette(num_labels)
    overlays = [
        (images * (1 - alpha) + colour_map(maps, colours, ignore_index) * alpha).round().astype(np.uint8)
        for maps in (labels, predictions)
    ]
    return tile_grid([images, *overlays], min_side)
