"""Collators: examples -> batches. Classification and pretraining stack equal-sized images (and class ids);
segmentation pads images with 0 and class maps with 255 (ignored) at the bottom and right, as mmsegmentation's data
preprocessor does."""

import torch

from .labels import IGNORE_INDEX


def collate_pixel_values(examples: list[dict]) -> dict:
    """pixel_values stacked to (B, C, H, W); labels, when the examples have them, to (B,) (or (B, C) soft targets)."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([example["labels"] for example in examples])
    return batch


def pad_to(tensor: torch.Tensor, height: int, width: int, fill: float) -> torch.Tensor:
    """Pad (..., h, w) at the bottom and right up to (height, width) (mmseg's data preprocessor pads there)."""
    bottom, right = height - tensor.shape[-2], width - tensor.shape[-1]
    if bottom <= 0 and right <= 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, max(right, 0), 0, max(bottom, 0)), value=fill)


def collate_segmentation(examples: list[dict], with_sizes: bool = False) -> dict:
    """Stack pixel_values (B, C, H, W) and labels (B, H', W') int64; different sizes are padded at the bottom and
    right to the largest in the batch, images with 0 and maps with 255 (ignored). Images and maps are padded
    separately: in evaluation the maps keep their original size while the images are resized. `with_sizes` adds
    `image_sizes` and `label_sizes`, (B, 2) int64 (height, width) of each image and map before padding, which
    `segment_to_original_size` needs to drop the padding and resize the logits back."""
    batch = {"pixel_values": _pad_and_stack([e["pixel_values"] for e in examples], 0)}
    if "labels" in examples[0]:
        batch["labels"] = _pad_and_stack([torch.as_tensor(e["labels"]).long() for e in examples], IGNORE_INDEX)
    if with_sizes:
        batch["image_sizes"] = torch.tensor([tuple(e["pixel_values"].shape[-2:]) for e in examples])
        if "labels" in examples[0]:
            batch["label_sizes"] = torch.tensor([tuple(torch.as_tensor(e["labels"]).shape[-2:]) for e in examples])
    return batch


def collate_segmentation_with_sizes(examples: list[dict]) -> dict:
    """`collate_segmentation(examples, with_sizes=True)`: the evaluation collator."""
    return collate_segmentation(examples, with_sizes=True)


def _pad_and_stack(tensors: list[torch.Tensor], fill) -> torch.Tensor:
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    return torch.stack([pad_to(t, height, width, fill) for t in tensors])
