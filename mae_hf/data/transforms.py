"""torchvision v2 transforms for MAE pretraining and evaluation, applied lazily (in dataloader workers)."""

import torch
from torchvision.transforms import v2

from .images import to_model_mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_tensor(mean, std) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def pretrain_transform(image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, min_scale: float = 0.2) -> v2.Compose:
    """The official MAE augmentation: RandomResizedCrop(scale=(min_scale, 1), bicubic) + horizontal flip."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(),
            *_to_tensor(mean, std),
        ]
    )


def eval_transform(image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Resize the shorter side to the image size, then centre-crop."""
    return v2.Compose(
        [
            v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC),
            v2.CenterCrop(image_size),
            *_to_tensor(mean, std),
        ]
    )


class ImageTransform:
    """A `datasets` batch transform: PIL images in `column` -> `pixel_values` tensors (other columns dropped)."""

    def __init__(self, transform, column: str, num_channels: int = 3):
        self.transform, self.column, self.num_channels = transform, column, num_channels

    def __call__(self, batch: dict) -> dict:
        return {"pixel_values": [self.transform(to_model_mode(im, self.num_channels)) for im in batch[self.column]]}


def collate_pixel_values(examples: list[dict]) -> dict:
    return {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
